"""An installed package (a wheel or the sdist, not the source tree) finds its
shipped files and its C++ scanner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]


class TestInstalledPackage:
    def test_wheel_carries_filters_actions_and_default(self, tmp_path: Path) -> None:
        """`pip install .` yields a package whose shipped filters, actions, default
        config and compiled block scanner load from site-packages, with no source
        tree around."""
        wheels = tmp_path / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                        str(wheels), str(REPO)],
                       check=True, capture_output=True, timeout=300)
        target = tmp_path / "site"
        wheel = next(wheels.glob("kfwguard-*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), str(wheel)],
                       check=True, capture_output=True, timeout=300)
        code = (
            "import kfwguard, json\n"
            "from importlib import resources\n"
            "from kfwguard.matching import load_filter, shipped_filter_names\n"
            "from kfwguard.config import parse_config, default_config_text\n"
            "cfg = parse_config(default_config_text())\n"
            "print(json.dumps({'file': kfwguard.__file__,"
            " 'filters': sorted(shipped_filter_names()),"
            " 'loaded': [load_filter(j.filter).name for j in cfg.jails],"
            " 'engine': load_filter('sshd').block_engine,"
            " 'actions': sorted(p.name for p in resources.files('kfwguard.actions').iterdir()"
            " if p.name.endswith('.yaml'))}))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(target)}
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=60)
        import json

        info = json.loads(out.stdout)
        assert info["file"].startswith(str(target))
        assert {"sshd", "kubelet", "kube-apiserver-audit", "etcd"} <= set(info["filters"])
        assert ["sshd", "kubelet", "kube-apiserver-audit", "etcd"] == info["loaded"]
        assert info["actions"]
        # The wheel carries the C++ block scanner where it could be built.
        need(info["engine"] == "native", "the wheel has no C++ scanner (g++, libre2-dev)")


class TestSdist:
    @pytest.mark.timeout(1200)
    def test_sdist_installs_with_the_cpp_scanner(self, tmp_path: Path) -> None:
        """`python -m build --sdist` gives an sdist that pip, in a fresh virtualenv and
        by the Ansible role's direct reference (`kfwguard[journald] @ file://…`),
        builds with the C++ scanner where g++ and libre2-dev exist; the installed
        package runs `kfwguard check-config` on its embedded default."""
        need(shutil.which("g++") is not None and Path("/usr/include/re2/re2.h").exists(),
             "needs g++ and libre2-dev")
        dist = tmp_path / "dist"
        r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist),
                            str(REPO)], capture_output=True, text=True, timeout=600)
        assert 0 == r.returncode, r.stdout[-2000:] + r.stderr[-2000:]
        [sdist] = dist.glob("kfwguard-*.tar.gz")
        with tarfile.open(sdist) as tf:
            names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        for needed in ("kfwguard/matching/_native.cpp", "setup.py", "filters/sshd.yaml",
                       "filters/samples/sshd.log", "actions/slack.yaml", "kfwguard/default.yaml"):
            assert needed in names, needed
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                            "--disable-pip-version-check",
                            f"kfwguard[journald] @ file://{sdist}"],
                           capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert 0 == r.returncode, r.stdout[-2000:] + r.stderr[-2000:]
        code = ("import kfwguard.matching._native as n, kfwguard, systemd.journal\n"
                "from kfwguard.matching import load_filter\n"
                "print(n.__file__, kfwguard.__file__, load_filter('sshd').block_engine)")
        r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
        assert 0 == r.returncode, r.stderr
        native, package, engine = r.stdout.split()
        assert native.startswith(str(venv)) and package.startswith(str(venv))
        assert "native" == engine
        r = subprocess.run([str(venv / "bin" / "kfwguard"), "check-config"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env={**os.environ, "KFWGUARD_CONFIG": ""})
        assert 0 == r.returncode, r.stdout + r.stderr
