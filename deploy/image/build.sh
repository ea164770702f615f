#!/usr/bin/env bash
# Builds kfwguard's container image and writes it as an OCI archive:
#
#   bash deploy/image/build.sh OUT.tar        (as root)
#
# Then: skopeo copy oci-archive:OUT.tar docker://REGISTRY/kfwguard:TAG
# (or `podman load -i OUT.tar`, `ctr -n k8s.io images import OUT.tar`).
#
# Nothing is pulled from a container registry and the build downloads
# nothing: this script prepares everything beforehand, on the host, from the
# package registries the host already uses:
#   1. two Debian root filesystems made by mmdebstrap from the host's apt
#      sources (same suite as the host, so the same Python): a builder (g++,
#      libre2-dev, libsystemd-dev, python3-dev) and a slim runtime (python3,
#      libnftables1, libre2, libsystemd0, ca-certificates; no apt, no docs);
#   2. a folder with every Python dependency (wheels, or sdists the builder
#      compiles), fetched by pip for Debian's python3;
#   3. the repository's files.
# buildah then builds deploy/image/Containerfile FROM scratch with them, with
# the vfs storage driver and chroot isolation (no daemon, no overlayfs, works
# inside a container), in a private storage folder removed afterwards.
#
# Environment:
#   KFWGUARD_IMAGE_NAME   image name:tag inside the archive (default kfwguard:VERSION)
#   KFWGUARD_IMAGE_SUITE  Debian/Ubuntu suite (default: the host's VERSION_CODENAME)
#   KFWGUARD_IMAGE_CACHE  .deb cache kept between builds (default /var/cache/kfwguard-image)
#   KFWGUARD_IMAGE_MIRROR apt sources for mmdebstrap (default: the host's, else its default)
set -euo pipefail

if (($# != 1)); then
    echo "usage: bash deploy/image/build.sh OUT.tar" >&2
    exit 2
fi
OUT=$(realpath -m "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

if ((EUID != 0)); then
    echo "build.sh: run as root (mmdebstrap and buildah need it)" >&2
    exit 2
fi
need=()
for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null \
    || need+=(python3-venv)
if ((${#need[@]})); then
    echo "build.sh: missing ${need[*]}: apt-get install -y ${need[*]}" >&2
    exit 2
fi

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")
NAME=${KFWGUARD_IMAGE_NAME:-kfwguard:$VERSION}
SUITE=${KFWGUARD_IMAGE_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
CACHE=${KFWGUARD_IMAGE_CACHE:-/var/cache/kfwguard-image}
if [ -z "$SUITE" ]; then
    echo "build.sh: cannot tell the host's suite; set KFWGUARD_IMAGE_SUITE" >&2
    exit 2
fi
MIRROR=()
if [ -n "${KFWGUARD_IMAGE_MIRROR:-}" ]; then
    MIRROR=("$KFWGUARD_IMAGE_MIRROR")
else
    # The host's own sources (a local mirror or proxy keeps working).
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
        [ -s "$f" ] && grep -q "^[^#]*\(deb \|Types:\)" "$f" && MIRROR+=("$f")
    done
fi

WORK=$(mktemp -d /var/tmp/kfwguard-image.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
CTX=$WORK/context
mkdir -p "$CTX/src" "$CTX/wheels" "$CACHE"
log() { echo "build.sh: $*" >&2; }

# -- 1. the repository's files (tracked and new, not ignored) -----------------
log "copying the repository"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
        | (cd "$REPO" && xargs -0 stat --printf='%n\0' 2>/dev/null) \
        | tar -C "$REPO" --null -T - -cf - | tar -C "$CTX/src" -xf -
else
    tar -C "$REPO" --exclude=./.venv --exclude='*.so' --exclude=./build -cf - . \
        | tar -C "$CTX/src" -xf -
fi

# -- 2. Python dependencies, for Debian's python3 -----------------------------
log "fetching Python dependencies"
/usr/bin/python3 -m venv "$WORK/pyenv"
mapfile -t DEPS < <(/usr/bin/python3 - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = p["optional-dependencies"]
for d in p["dependencies"] + extras["journald"] + extras["cluster"]:
    print(d)
PY
)
"$WORK/pyenv/bin/pip" download -q --disable-pip-version-check -d "$CTX/wheels" \
    "setuptools>=68" wheel "${DEPS[@]}"

# -- 3. root filesystems ------------------------------------------------------
debstrap() {  # OUT.tar PACKAGES [EXTRA OPTIONS...]
    local out=$1 packages=$2
    shift 2
    local hooks=()
    # A merged /usr made by mmdebstrap itself, not by the usrmerge package
    # (which would pull in perl: ~50 MB).
    [ -d /usr/share/mmdebstrap/hooks/maybe-merged-usr ] \
        && hooks=(--hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr)
    mmdebstrap --quiet --variant=essential --include="$packages" "${hooks[@]}" \
        --aptopt='APT::Install-Recommends "false"' \
        --skip=essential/unlink,download/empty \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in $CACHE /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives $CACHE" \
        "$@" "$SUITE" "$out" "${MIRROR[@]}"
}
log "making the builder root filesystem ($SUITE)"
debstrap "$CTX/rootfs-builder.tar" \
    python3,python3-venv,python3-dev,g++,libre2-dev,libsystemd-dev,pkg-config
# The runtime gets the libre2 the builder compiled against (libre2-9, -10, …).
LIBRE2=$(tar -xOf "$CTX/rootfs-builder.tar" ./var/lib/dpkg/status \
    | sed -n 's/^Package: \(libre2-[0-9][0-9]*\)$/\1/p' | head -1)
[ -n "$LIBRE2" ] || { log "no libre2 runtime package in the builder"; exit 1; }
log "making the runtime root filesystem (python3, libnftables1, $LIBRE2, libsystemd0)"
debstrap "$CTX/rootfs-runtime.tar" \
    "python3,libnftables1,$LIBRE2,libsystemd0,ca-certificates" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*'

# -- 4. the image -------------------------------------------------------------
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
log "building $NAME"
"${BUILDAH[@]}" build --isolation chroot --network host --layers=false \
    -f "$HERE/Containerfile" -t "$NAME" "$CTX"
rm -f "$OUT"
"${BUILDAH[@]}" push "$NAME" "oci-archive:$OUT:$NAME"
log "wrote $OUT ($NAME, $(du -h "$OUT" | cut -f1))"
