"""How far a command's config travels: the files of maskray it visits, and how often it comes back to one it left.

    python benchmarks/bench_trace.py [--name trace]

Runs `maskray train base`, `maskray train controlnet` and `maskray generate` on a tiny phantom (32 px, 3 steps)
under ``sys.setprofile``. Every call into a function of ``src/maskray`` whose arguments hold the command's config
(an instance of its config class) or the value of one of its settings (`--lr 0.000123` for train, `--guidance-scale
1.7` for generate: as the float or the text given), directly, in a list, tuple or dict, or as an attribute of an
argument, is one visit to that function's file. Consecutive visits to one file are one stay; a stay in a file that an earlier stay already
left is a *return*. Few files and few returns mean the config is read in few places: a setting is easy to follow.
Issue 26's targets: at most 5 returns for generate and 15 for train. Writes results/NAME.json with, per command,
the files, the number of returns and the stays in order.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from results_file import write_results

SRC = str(Path(__file__).resolve().parents[1] / "src" / "maskray") + "/"


def _is(value, cls: type, setting: float) -> bool:
    """``value`` is the config, or the setting's value (as a float or as the text it was given as)."""
    if isinstance(value, cls):
        return True
    if isinstance(value, float) and not isinstance(value, bool):
        return value == setting
    return isinstance(value, str) and value == f"{setting:g}"


def _holds(value, cls: type, setting: float) -> bool:
    if _is(value, cls, setting):
        return True
    if isinstance(value, (list, tuple)) and len(value) < 32:
        return any(_is(v, cls, setting) for v in value)
    if isinstance(value, dict) and len(value) < 32:
        return any(_is(v, cls, setting) for v in value.values())
    attrs = getattr(value, "__dict__", None)
    return isinstance(attrs, dict) and not isinstance(value, type) and any(_is(v, cls, setting) for v in attrs.values())


def trace(argv: list[str], cls: type, option: str, setting: float) -> dict:
    """Run ``maskray ARGV --OPTION SETTING`` and follow instances of ``cls`` and the setting's value through the
    calls of maskray's own files."""
    from maskray.cli import main

    stays: list[str] = []

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(SRC):
            return
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(_holds(frame.f_locals.get(n), cls, setting) for n in names):
            f = code.co_filename[len(SRC):]
            if not stays or stays[-1] != f:
                stays.append(f)

    sys.setprofile(profile)
    try:
        rc = main([*argv, f"--{option}", f"{setting:g}"])
    finally:
        sys.setprofile(None)
    if rc:
        raise SystemExit(f"maskray {' '.join(argv)}: exit {rc}")
    return {"config": cls.__name__, "setting": f"--{option} {setting:g}", "files": sorted(set(stays)), "returns": len(stays) - len(set(stays)),
            "stays": stays}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="trace")
    a = p.parse_args()
    from maskray.cli import main as cli
    from maskray.pipelines.generate import GenerateConfig
    from maskray.training.config import TrainConfig

    tiny = ["--image-size", "32", "--batch-size", "4", "--block-out-channels", "8,16", "--norm-num-groups", "4",
            "--validation-cases", "2", "--validation-sampler-steps", "2", "--precision", "no", "--steps", "3"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if cli(["phantom", "--out", str(t / "data"), "--n", "12", "--image-size", "32", "--seed", "0"]):
            raise SystemExit("maskray phantom failed")
        res = {"train base": trace(["train", "base", "--data", str(t / "data"), "--out", str(t / "base"), *tiny],
                                   TrainConfig, "lr", 0.000123),
               "train controlnet": trace(["train", "controlnet", "--data", str(t / "data"), "--base", str(t / "base"),
                                          "--out", str(t / "cn"), *tiny], TrainConfig, "lr", 0.000123),
               "generate": trace(["generate", "--model", str(t / "cn"), "--masks", str(t / "data"), "--out",
                                  str(t / "gen"), "--steps", "2", "--split", "test"], GenerateConfig, "guidance-scale", 1.7)}
    res["command"] = "python benchmarks/bench_trace.py " + " ".join(sys.argv[1:])
    write_results(a.name, res)
    for k, r in res.items():
        if isinstance(r, dict):
            print(f"{k} ({r['setting']}): {len(r['files'])} files, {r['returns']} returns; " + " > ".join(r["stays"]))


if __name__ == "__main__":
    main()
