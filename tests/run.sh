#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine (root),
# then runs every check exactly as CI does: ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# g++ and libre2-dev build the C++ block scanner (kfwguard.matching._native);
# without them it is skipped, and under CI=true its tests then fail.
# buildah, mmdebstrap and python3-venv build the container image
# (deploy/image/build.sh, tests/integration/test_image.py).
APT_PACKAGES=(nftables libsystemd-dev pkg-config g++ libre2-dev iproute2 iputils-ping
              procps systemd prometheus-alertmanager prometheus util-linux rsyslog
              buildah mmdebstrap python3-venv dnsmasq-base etcd-server etcd-client openssl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV="${KFWGUARD_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[journald,cluster,test]'

"$VENV/bin/ruff" check kfwguard tests bench
"$VENV/bin/mypy"
# Unit tests need no root (tests/unit/conftest.py). On a whole-suite run as
# root they run first as root WITHOUT capabilities (no namespaces, no nft, no
# netlink changes: the kernel refuses), which fails a unit test that reaches for
# root; then everything else runs with root's full rights.
only_options=1
for a in "$@"; do [[ $a == -* ]] || only_options=0; done
if [ "$(id -u)" = 0 ] && ((only_options)); then
    setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- \
        "$VENV/bin/pytest" -p no:cacheprovider "$@" tests/unit
    exec "$VENV/bin/pytest" -p no:cacheprovider --ignore=tests/unit "$@"
fi
"$VENV/bin/pytest" -p no:cacheprovider "$@"
