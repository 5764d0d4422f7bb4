"""Installing maskray beside a torch the user already has leaves that torch alone (a GPU user's CUDA build)."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _torch_requirement() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == "torch")


def test_torch_is_a_range_that_holds_the_installed_one():
    req = _torch_requirement()
    assert not any(s.operator in ("==", "===") for s in req.specifier), "a pin replaces the user's torch"
    assert req.specifier.contains(torch.__version__.split("+")[0])


def test_pip_would_install_no_torch_into_this_environment(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                    "-e", f"{ROOT}[test]"], check=True, capture_output=True, timeout=300)
    names = [i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]]
    assert "maskray" in names and "torch" not in names, names
