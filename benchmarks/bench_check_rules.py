"""Which `generate --check` rule keeps the false nodules out, as an independent judge sees them, and at what cost.

    python benchmarks/bench_check_rules.py --work WORK [--model WORK/decoder_w1s2/model] \
        [--rules "checker;checker,false=0.3;panel;panel,false=0.3;panel,false=0.3,tries=8"] [--judge judge]
        [--name NAME]

WORK is bench_nodule_sources.py's: a 256 px latent path (data/), the checker (checker/, seed 0), a second checker
(checker2/, seed 2), a third of another class (checker3/, MONAI's SegResNet, seed 3) and the judge (judge/, seed 1;
``--judge judge_segresnet``: a SegResNet of seed 1), which is in no rule (build_phantom256_work.sh builds them all),
so no rule grades its own choice. Each rule draws two samples for every real test mask with the model and keeps
what passes (`generate --check`, failures left out):

- ``checker``: the checker alone, as `generate --check WORK/checker`;
- ``panel``: checker and checker2, an image must pass both (`--check A,B`);
- ``panel3``: those two and checker3 (seed 3, MONAI's SegResNet: another class), an image must pass all three;
- ``false=P``: a spot outside every asked-for nodule fails the image from probability P (`--check-false-operating-
  point P`; found nodules still count from 0.5);
- ``tries=N``: attempts per case (default 4);
- ``select=best``: every attempt drawn, the passing one with the faintest false spot written (`--check-select`).

Per rule the judge scores the written images (false nodules per image, asked-for nodules found, CPM, lung and
heart Dice, realism against the real training images) and check.json gives the cost: the share of cases given
up and the images drawn per written image. Rows for the real test images and the unchecked model come first.
Writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_nodule_sources import generate, load_set, open_judge, print_table, score
from results_file import write_results

DEFAULT_RULES = "checker;checker,false=0.3;panel;panel,false=0.3;panel,false=0.3,tries=8"


def rule_args(rule: str, work: Path) -> tuple[list[str], str]:
    """generate's options for one rule (``checker`` or ``panel``, then ``false=P`` / ``tries=N``), and its folder."""
    head, *mods = [p.strip() for p in rule.split(",")]
    folders = {"checker": [work / "checker"], "panel": [work / "checker", work / "checker2"],
               "panel3": [work / "checker", work / "checker2", work / "checker3"]}
    if head not in folders:
        raise SystemExit(f"rule {rule!r}: starts with checker, panel or panel3")
    args = ["--check", ",".join(str(f) for f in folders[head])]
    tag = head
    for m in mods:
        key, _, value = m.partition("=")
        if key == "false":
            args += ["--check-false-operating-point", value]
        elif key == "tries":
            args += ["--check-tries", value]
        elif key == "select":
            args += ["--check-select", value]
        else:
            raise SystemExit(f"rule {rule!r}: unknown part {m!r} (false=P, tries=N or select=S)")
        tag += f"_{key}{value}"
    return args, tag


def label(rule: str) -> str:
    head, *mods = [p.strip() for p in rule.split(",")]
    text = {"checker": "checker (seed 0)", "panel": "panel of 2 checkers (seeds 0, 2)",
            "panel3": "panel of 3 checkers (seeds 0, 2; SegResNet seed 3)"}[head]
    for m in mods:
        key, _, value = m.partition("=")
        text += {"false": f", false spots from p {value}", "tries": f", {value} tries",
                 "select": f", {value} passing attempt written"}[key]
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--model", default=None, help="default: WORK/decoder_w1s2/model")
    p.add_argument("--rules", default=DEFAULT_RULES, help="rules separated by ';'")
    p.add_argument("--judge", default="judge", help="the judge's checker folder in WORK (judge: seed 1, the "
                                                    "checkers' class; judge_segresnet: another class)")
    p.add_argument("--size", type=int, default=256, help="the model's image size (the checkers' and judge's)")
    p.add_argument("--name", default="check_rules_phantom")
    a = p.parse_args()
    work = Path(a.work)
    model = Path(a.model) if a.model else work / "decoder_w1s2" / "model"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    times: dict = {}
    judge, fnet, xtr, xte, yte = open_judge(work, 400, times, a.judge, a.size)
    if not (work / "checker2" / "checker.json").is_file():
        sys.exit(f"{work / 'checker2'}: no checker here; build the folder with "
                 f"bash benchmarks/build_phantom256_work.sh {work}")
    rows = {"real test images": score(judge, xte, yte, fnet.embed, xtr, xte)}
    sets = {"no check": (work / "gen_rules_none", [])}
    for rule in filter(None, (r.strip() for r in a.rules.split(";"))):
        args, tag = rule_args(rule, work)
        sets[label(rule)] = (work / f"gen_rules_{tag}", args)
    for name, (out, args) in sets.items():
        t0 = time.time()
        try:
            generate(work, model, out, *args)
        except subprocess.CalledProcessError:  # exit 2: no case passed; its check.json says so, and the rule too
            if not (out / "check.json").is_file():
                raise
        times[name] = round(time.time() - t0, 1)
        if (out / "manifest.json").is_file():
            x, y = load_set(out, a.size)
            rows[name] = score(judge, x, y, fnet.embed, xtr, xte)
        else:
            rows[name] = {"images": 0}
        if (out / "check.json").is_file():
            c = json.loads((out / "check.json").read_text())
            rows[name]["check"] = {k: c[k] for k in ("cases", "written", "given_up", "attempts", "max_attempts",
                                                     "rejected_share", "rule", "written_images")}
            rows[name]["check"]["images_drawn_per_written"] = c["attempts"] / max(c["written"], 1)
        print(name, {k: rows[name].get(k) for k in ("false_nodules_per_image", "sensitivity", "cpm", "precision")},
              flush=True)
    res = {"work": str(work), "model": str(model),
           "judge": {"folder": a.judge, "what": "segmenter of maskray train checker on the real training split, in no "
                     "rule", "segmenter": json.loads((work / a.judge / "checker.json").read_text()).get("segmenter")},
           "checkers": {n: json.loads((work / n / "checker.json").read_text())["segmenter"]
                        for n in ("checker", "checker2", "checker3") if (work / n / "checker.json").is_file()},
           "size": a.size,
           "samples_per_mask": 2, "threads": torch.get_num_threads(), "wall_s": times, "sets": rows,
           "command": "python benchmarks/bench_check_rules.py " + " ".join(sys.argv[1:])}
    write_results(a.name, res)
    print_table({k: r for k, r in rows.items() if r["images"]}, 60)


if __name__ == "__main__":
    main()
