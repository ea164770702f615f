"""The container image built by `bash deploy/image/build.sh OUT.tar` (buildah, no
Docker engine, no registry): its root filesystem, unpacked from the OCI archive,
runs `kfwguard check-config` and `kfwguard run` on the embedded default, with
the C++ scanner, inside a network namespace; and it stays small.

Building takes minutes (two Debian root filesystems, one compile), so the image
is built once per session; set KFWGUARD_IMAGE_ARCHIVE to test an archive built
before."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.integration.daemon_harness import wait_until
from tests.netns import Lab

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "image" / "build.sh"

# The runtime image: Debian's essential set, python3 and the three libraries,
# the venv with its dependencies. Measured on bookworm at ~155 MiB unpacked,
# ~50 MiB as a gzipped layer; the bounds leave room for a newer suite, not for
# a compiler, perl (pulled in by usrmerge) or docs.
MAX_UNPACKED = 250 * 1024 * 1024
MAX_ARCHIVE = 100 * 1024 * 1024

pytestmark = [pytest.mark.root, pytest.mark.timeout(1800)]


@dataclass
class Image:
    archive: Path
    rootfs: Path
    config: dict[str, Any]
    layers: int

    @property
    def path_env(self) -> str:
        env = dict(e.split("=", 1) for e in self.config["config"].get("Env", []))
        return env["PATH"]


def blob(oci: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":", 1)
    return oci / "blobs" / algo / hexdigest


def unpack_layer(layer: Path, rootfs: Path) -> None:
    """Apply one OCI layer: whiteouts (.wh.NAME, .wh..wh..opq) first, then the files."""
    with tarfile.open(layer, "r:*") as tf:
        for m in tf.getmembers():
            d, _, name = m.name.rpartition("/")
            if name == ".wh..wh..opq":
                target = rootfs / d
                if target.is_dir():
                    for child in target.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            elif name.startswith(".wh."):
                target = rootfs / d / name[4:]
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
    subprocess.run(["tar", "--numeric-owner", "--exclude=.wh.*", "-xpf", str(layer),
                    "-C", str(rootfs)], check=True, timeout=600)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    need(os.geteuid() == 0, "building the image needs root")
    work = tmp_path_factory.mktemp("image")
    given = os.environ.get("KFWGUARD_IMAGE_ARCHIVE")
    if given:
        archive = Path(given)
    else:
        for tool in ("buildah", "mmdebstrap"):
            need(shutil.which(tool) is not None, f"needs {tool} (apt-get install {tool})")
        archive = work / "kfwguard.tar"
        r = subprocess.run(["bash", str(BUILD), str(archive)], capture_output=True, text=True,
                           timeout=1700)
        assert 0 == r.returncode, r.stdout[-3000:] + r.stderr[-5000:]
    oci = work / "oci"
    oci.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(oci)], check=True, timeout=300)
    index = json.loads((oci / "index.json").read_text())
    [desc] = index["manifests"]
    manifest = json.loads(blob(oci, desc["digest"]).read_text())
    config = json.loads(blob(oci, manifest["config"]["digest"]).read_text())
    rootfs = work / "rootfs"
    rootfs.mkdir()
    for layer in manifest["layers"]:
        unpack_layer(blob(oci, layer["digest"]), rootfs)
    yield Image(archive, rootfs, config, len(manifest["layers"]))
    shutil.rmtree(work, ignore_errors=True)


def in_image(image: Image, *argv: str, hide: str | None = None) -> list[str]:
    """argv run from the image's root filesystem with the image's PATH, in a private
    mount namespace with /proc, /dev, /sys, /run and /tmp mounted, as a container
    runtime would (``hide``: a file of the image covered by an empty one, for this
    run only). sh execs chroot execs env execs argv: one process throughout."""
    r = str(image.rootfs)
    cover = f"mount --bind /dev/null {r}/{hide.lstrip('/')} && " if hide else ""
    script = (f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && "
              f"mount -t sysfs sysfs {r}/sys && mount -t tmpfs tmpfs {r}/run && "
              f"mount -t tmpfs tmpfs {r}/tmp && {cover}"
              f'exec chroot {r} /usr/bin/env -i "PATH=$KFW_PATH" "$@"')
    return ["env", f"KFW_PATH={image.path_env}", "unshare", "--mount", "--propagation",
            "private", "--", "sh", "-c", script, "sh", *argv]


class TestImage:
    def test_kfwguard_on_path_and_default_command(self, image: Image) -> None:
        """The image's PATH finds `kfwguard` (the venv's entry point) and its
        default command is `kfwguard run`."""
        assert ["kfwguard", "run"] == image.config["config"]["Cmd"]
        found = [d for d in image.path_env.split(":")
                 if (image.rootfs / d.lstrip("/") / "kfwguard").exists()]
        assert ["/opt/kfwguard/venv/bin"] == found

    def test_size(self, image: Image) -> None:
        """The runtime image stays slim: no compiler, no headers, no apt, no docs."""
        size = 0
        for root, _dirs, files in os.walk(image.rootfs):
            for f in files:
                p = os.path.join(root, f)
                if not os.path.islink(p):
                    size += os.lstat(p).st_size
        assert size < MAX_UNPACKED, f"{size / 2**20:.0f} MiB unpacked"
        assert image.archive.stat().st_size < MAX_ARCHIVE
        for absent in ("usr/bin/g++", "usr/bin/gcc", "usr/include/re2", "usr/bin/apt-get",
                       "usr/share/man/man1", "usr/share/perl"):
            assert not (image.rootfs / absent).exists(), absent
        for lib in ("libnftables.so.1", "libsystemd.so.0"):
            assert list(image.rootfs.glob(f"usr/lib/*/{lib}")), lib

    def test_check_config_and_native_scanner(self, image: Image) -> None:
        """`kfwguard check-config` passes on the embedded default from the image, its
        filters scan with the C++ scanner compiled in the builder stage, and cluster
        mode's gRPC path (the cluster extra) imports."""
        r = subprocess.run(in_image(image, "kfwguard", "check-config"), capture_output=True,
                           text=True, timeout=120)
        assert 0 == r.returncode, r.stdout + r.stderr
        code = ("from kfwguard.matching import load_filter\n"
                "import systemd.journal\n"
                "import kfwguard.cluster.etcdgrpc, aetcd, grpc\n"
                "print(load_filter('sshd').block_engine)")
        r = subprocess.run(in_image(image, "python3", "-c", code), capture_output=True,
                           text=True, timeout=120)
        assert (0, "native") == (r.returncode, r.stdout.strip()), r.stderr

    def test_run_embedded_default(self, image: Image, lab: Lab, tmp_path: Path) -> None:
        """`kfwguard run` from the image's root filesystem starts on the embedded
        default, creates its ban table in the (namespace's) kernel and stops cleanly
        on SIGTERM."""
        host = lab.host("image")
        logfile = tmp_path / "daemon.log"
        with logfile.open("wb") as log:
            proc = host.popen(in_image(image, "kfwguard", "run"), stdout=log, stderr=log)
        try:
            assert wait_until(lambda: '"started"' in logfile.read_text(errors="replace")
                              or proc.poll() is not None, timeout=60), logfile.read_text()
            assert proc.poll() is None, logfile.read_text()
            assert 0 == host.run("nft", "list", "set", "inet", "kfwguard", "ban_v4",
                                 check=False).returncode, logfile.read_text()
            started = [json.loads(line) for line in logfile.read_text().splitlines()
                       if '"started"' in line]
            assert ["<embedded default>"] == [e["config"] for e in started], started
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        assert 0 == rc, logfile.read_text()
        assert "Traceback" not in logfile.read_text()

    def test_missing_libnftables_is_one_line(self, image: Image, lab: Lab,
                                             tmp_path: Path) -> None:
        """An image without a loadable libnftables (the old docs' recipe) stops
        `kfwguard run` with one clear error line, not a traceback."""
        [lib] = image.rootfs.glob("usr/lib/*/libnftables.so.1")
        host = lab.host("image")
        r = host.run(*in_image(image, "kfwguard", "run",
                               hide=str(lib.relative_to(image.rootfs))),
                     check=False, timeout=120)
        assert 1 == r.returncode
        lines = (r.stdout + r.stderr).splitlines()
        assert 1 == len(lines), lines
        event = json.loads(lines[0])
        assert ("cannot_start", "libnftables is missing: install the nftables package "
                "(apt-get install nftables)") == (event["event"], event["error"])
