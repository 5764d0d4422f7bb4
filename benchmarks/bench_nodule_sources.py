"""Where the false nodules of generated images come from, and what each remedy does: one independent judge scores
every image set against its masks.

    python benchmarks/bench_nodule_sources.py --work bench_out/lat256 [--ablation region=RUN ...] [--name NAME]

WORK holds a 256 px latent path (data/, ae/, base/, cn/) and a checker (checker/, `maskray train checker`). The
judge is a second segmenter of the same class trained on the same real training split with another seed
(WORK/judge), so that the checker of `generate --check` never grades its own choice. Sets, each for the real
test masks (two samples per mask):

- the real test images themselves (the floor) and the autoencoder's reconstructions of them (the codec's share);
- the base alone (ControlNet residuals scaled by 0: no mask is followed; its nodule-like spots per image against
  the real images' nodules per image say what the base draws on its own);
- the ControlNet at mask guidance 1, 1.5 (the card's) and 2;
- the ControlNet at 1.5 with `--check WORK/checker` (resampling up to 4 tries, failures left out);
- every `--ablation NAME=RUN` (another stage-2 run of the same base) at 1.5, without the check.

Per set: the judge's lung and heart Dice, the asked-for nodules it finds at p >= 0.5, false nodules per image,
CPM, the share of images passing the check rule, and realism (FID / precision / recall in the space of a feature
network trained once on the real training images; power-spectrum distance). Writes results/NAME.json.
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

from results_file import write_results

SPM = 2  # samples per test mask


def maskray(*argv: str) -> float:
    """Run one maskray command; its wall seconds."""
    t = time.time()
    print("---", "maskray", " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "maskray", *argv], check=True)
    return round(time.time() - t, 1)


def generate(work: Path, model: Path, out: Path, *extra: str) -> float | None:
    if (out / "manifest.json").is_file():
        return None
    return maskray("generate", "--model", str(model), "--masks", str(work / "data"), "--split", "test",
                   "--samples-per-mask", str(SPM), "--out", str(out), "--overwrite", *extra)


def reconstructions(work: Path, codec_folder: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real test images through an autoencoder (WORK/ae's unless ``codec_folder``), and their masks."""
    from maskray.data.dataset import Dataset
    from maskray.diffusion.autoencoder import LatentCodec
    from maskray.training.checker import load_pairs

    ds = Dataset(work / "data")
    x, y = load_pairs(ds, ds.case_ids("test", labelled=True), 256)
    codec = LatentCodec.load(codec_folder or work / "ae" / "autoencoder")
    codec.vae.eval()
    with torch.no_grad():
        rec = torch.cat([codec.decode(codec.encode(x[i:i + 8])) for i in range(0, len(x), 8)])
    return rec, y


def load_set(folder: Path, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from maskray.data.dataset import Dataset
    from maskray.training.checker import load_pairs

    ds = Dataset(folder)
    return load_pairs(ds, ds.case_ids(), size)


def score(judge, x: torch.Tensor, y: torch.Tensor, embed, xtr, xte) -> dict:
    from maskray.evaluation.realism import realism
    from maskray.measures.detection import detection
    from maskray.measures.mask_check import summarize_checks

    recs = judge.check(x, y)
    s = summarize_checks(recs)
    dice = {n: sum(r["dice"][n] for r in recs) / len(recs) for n in recs[0]["dice"]}
    nod = {}
    if judge.rule.lesion in judge.labels:  # a data set with nodules (cxr-lungs has lung masks only)
        lesion = judge.labels[judge.rule.lesion]
        det = detection(judge.segmenter.probabilities(x)[:, judge.segmenter.values.index(lesion)], y, lesion)
        nod = {"nodules": s["lesions"], "found": s["found"], "sensitivity": s["sensitivity"],
               "false_nodules_per_image": s["false_lesions_per_image"], "cpm": det["cpm"],
               "nodule_spots_per_image": (s["found"] + s["false_lesions_per_image"] * len(recs)) / len(recs)}
    real = realism(xtr, xte, x, embed, "feature net of the real training images")
    f = real["features"]["synthetic"]
    return {"images": len(recs), "dice": dice, **nod, "pass_rate": s["pass_rate"],
            "fid": f["fid"], "precision": f["precision"], "recall": f["recall"],
            "spectrum_distance": real["power_spectrum"]["synthetic"],
            "floor": {"fid": real["features"]["floor_real_test"]["fid"],
                      "precision": real["features"]["floor_real_test"]["precision"],
                      "recall": real["features"]["floor_real_test"]["recall"],
                      "spectrum_distance": real["power_spectrum"]["floor_real_test"]}}


def open_judge(work: Path, judge_steps: int, times: dict, name: str = "judge", size: int = 256) -> tuple:
    """``(judge, feature net, real train images, real test images, test masks)`` of WORK; the judge (WORK/judge, a
    checker of seed 1) and the feature net are trained once and kept in WORK. Another ``name`` is a checker folder
    in WORK that must exist (benchmarks/build_phantom256_work.sh builds judge_segresnet)."""
    from maskray.data.dataset import Dataset
    from maskray.measures.features import FeatureNet, train_feature_net
    from maskray.measures.mask_check import Checker
    from maskray.training.checker import load_pairs

    if name != "judge" and not (work / name / "checker.json").is_file():
        sys.exit(f"{work / name}: no judge (checker folder) here")
    if not (work / "judge" / "checker.json").is_file():
        times["judge"] = maskray("train", "checker", "--data", str(work / "data"), "--out", str(work / "judge"),
                                 "--image-size", str(size), "--steps", str(judge_steps), "--seed", "1", "--overwrite")
    judge = Checker.load(work / name)
    ds = Dataset(work / "data")
    xtr, _ = load_pairs(ds, ds.case_ids("train", labelled=True), size)
    xte, yte = load_pairs(ds, ds.case_ids("test", labelled=True), size)
    if (work / "feature_net" / "feature_net.json").is_file():
        fnet = FeatureNet.load(work / "feature_net")
    else:
        fnet = train_feature_net(xtr, steps=400, seed=0)
        fnet.save(work / "feature_net")
    return judge, fnet, xtr, xte, yte


def print_table(rows: dict, width: int = 40) -> None:
    print(f"{'set':<{width}} {'FP/img':>7} {'sens':>6} {'CPM':>6} {'pass':>6} {'lung':>6} {'FID':>6} {'prec':>6}")
    for k, r in rows.items():
        r = {"false_nodules_per_image": float("nan"), "sensitivity": float("nan"), "cpm": float("nan"), **r}
        print(f"{k:<{width}} {r['false_nodules_per_image']:7.2f} {r['sensitivity']:6.2f} {r['cpm']:6.2f} "
              f"{r['pass_rate']:6.2f} {r['dice'].get('lung', float('nan')):6.3f} {r['fid']:6.3f} {r['precision']:6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=RUN")
    p.add_argument("--name", default="nodule_sources_phantom")
    p.add_argument("--judge-steps", type=int, default=400)
    a = p.parse_args()
    work = Path(a.work)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    times = {}
    judge, fnet, xtr, xte, yte = open_judge(work, a.judge_steps, times)
    cn = work / "cn"
    sets = {"generated, guidance 1": (work / "gen_g1", cn, ["--guidance-scale", "1"]),
            "generated, guidance 1.5 (card)": (work / "gen_g15", cn, []),
            "generated, guidance 2": (work / "gen_g2", cn, ["--guidance-scale", "2"]),
            "base alone (conditioning scale 0)": (work / "gen_base", cn, ["--conditioning-scale", "0",
                                                                          "--guidance-scale", "1"]),
            "generated, guidance 1.5, --check": (work / "gen_check", cn, ["--check", str(work / "checker")])}
    for spec in a.ablation:
        name, run = spec.split("=", 1)
        sets[f"ablation {name}, guidance 1.5"] = (work / f"gen_{name}", Path(run), [])
    rows = {"real test images": score(judge, xte, yte, fnet.embed, xtr, xte)}
    rec, yrec = reconstructions(work)
    rows["autoencoder reconstructions"] = score(judge, rec, yrec, fnet.embed, xtr, xte)
    for label, (out, model, extra) in sets.items():
        t = generate(work, model, out, *extra)
        if t is not None:
            times[label] = t
        x, y = load_set(out)
        rows[label] = score(judge, x, y, fnet.embed, xtr, xte)
        if (out / "check.json").is_file():
            rows[label]["check"] = json.loads((out / "check.json").read_text())
        print(label, {k: rows[label].get(k) for k in ("false_nodules_per_image", "sensitivity", "cpm", "pass_rate")},
              rows[label]["dice"], flush=True)
    res = {"work": str(work), "judge": "segmenter of maskray train checker, seed 1, trained on the real training "
                                        "split (the check's own checker is seed 0)",
           "samples_per_mask": SPM, "threads": torch.get_num_threads(), "generate_wall_s": times, "sets": rows,
           "command": "python benchmarks/bench_nodule_sources.py " + " ".join(sys.argv[1:])}
    write_results(a.name, res)
    print_table(rows)

if __name__ == "__main__":
    main()
