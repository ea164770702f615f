"""An installed package (a wheel, not the source tree) finds its shipped files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
