"""Extra conditions measured: attribute obedience, edge agreement, and what each extra condition costs.

    python benchmarks/bench_conditions.py [--work bench_out/conditions] [--threads 1] [--skip-cxr]

Phantom (64 px, made here): stage 1 with the attributes sex and age; stage 2 three ways with the same steps: mask
alone, mask + edges trained jointly (one run, two ControlNets, each condition dropped independently), and edges alone
(combined with the mask-alone ControlNet at sampling: "trained separately"). Then
- attribute accuracy: a logistic-regression classifier per attribute, trained on the real training images
  (evaluation/attributes.py), on the real test images and on images generated for the test masks asked for each
  value (``--attributes age=20-40`` ...), from the base alone (no mask) and from base + mask ControlNet;
- edge F1 (Canny, 1 px tolerance) of images generated for the test masks with the real test image's edges, and of
  mask-only images (the level without edges), texture variation between 2 samples, PSNR to the real image;
- cost: CPU seconds per training step and per generated image of each model.
cxr-lungs (when ../shared/data/cxr-lungs exists; never copied into the project): attributes from the file names
(``_1`` tuberculosis / ``_0`` normal, ``MCUCXR_`` / ``CHNCXR_`` site), the same measurements with mask + edges.
Writes benchmarks/results/conditions.json. CPU time is this process's (``time.process_time``), threads as given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from maskray.data.attributes import read_case_attributes
from maskray.data.layout import Dataset
from maskray.data.phantom import PhantomConfig, make_phantom
from maskray.diffusion.attributes import encode
from maskray.diffusion.card import ModelCard
from maskray.diffusion.conditioning import Conditions
from maskray.diffusion.edges import EdgeConfig, edge_map
from maskray.diffusion.networks import ControlNetSet
from maskray.diffusion.sampling import make_scheduler, sample
from maskray.diffusion.store import load_model, save_model
from maskray.evaluation.attributes import fit_classifier, features
from maskray.evaluation.edges import edge_f1
from maskray.evaluation.pairs import load_images
from maskray.measures.image import psnr
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.config import TrainConfig
from maskray.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr-lungs"
COST: dict[str, dict] = {}


def timed(name: str, fn, **info):
    """Run ``fn``; record its CPU and wall seconds under ``name``."""
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    COST[name] = {"cpu_s": round(time.process_time() - c, 2), "wall_s": round(time.perf_counter() - w, 2), **info}
    print(f"{name}: {COST[name]}", flush=True)
    return out


def train_stage(name, a, data, out, stage, steps, **kw):
    if a.reuse and (Path(out) / "model" / "maskray.json").is_file():  # trained by an earlier, interrupted run
        COST[name] = {"reused": str(out), "steps": steps, "batch_size": a.batch}
        return
    cfg = TrainConfig(data=str(data), out=str(out), image_size=a.size, steps=steps, batch_size=a.batch,
                      validate_every=steps, validation_cases=2, checkpoint_every=steps, overwrite=True,
                      seed=a.seed, **kw)
    timed(name, lambda: train(cfg, stage, progress=False), steps=steps, batch_size=a.batch)
    COST[name]["cpu_s_per_step"] = round(COST[name]["cpu_s"] / steps, 4)


def gen(name, a, out, **kw):
    cfg = GenerateConfig(out=str(out), split="test", steps=a.sample_steps, batch_size=a.gen_batch, seed=a.seed,
                         overwrite=True, **kw)
    res = timed(name, lambda: generate(cfg, progress=False))
    n = len(Dataset(res).cases)
    COST[name].update(images=n, cpu_s_per_image=round(COST[name]["cpu_s"] / n, 4), sampler_steps=a.sample_steps)
    return res


def accuracy(clf, x: torch.Tensor, y: list[str]) -> float:
    return float(np.mean(clf.predict(features(x)) == np.asarray(y)))


def attribute_block(real: Dataset, train_ids, test_ids, size, generated: dict[str, dict[str, torch.Tensor]], seed):
    """Per attribute: chance, real test accuracy, and accuracy on each generator's images per requested value."""
    rec = read_case_attributes(real.root)
    xtr, xte = load_images(real, train_ids, (size, size)), load_images(real, test_ids, (size, size))
    out = {}
    for name in sorted({n for g in generated.values() for n in g}):
        ytr = [rec[c][name] for c in train_ids]
        clf = fit_classifier(xtr, ytr, seed)
        vals, counts = np.unique(ytr, return_counts=True)
        res = {"chance": float(counts.max() / len(ytr)), "real_test": accuracy(clf, xte, [rec[c][name] for c in test_ids]),
               "n_real_test": len(test_ids)}
        for gname, by_value in generated.items():
            per = {v: accuracy(clf, x, [v] * len(x)) for v, x in by_value.get(name, {}).items()}
            if per:
                res[gname] = {"mean": float(np.mean(list(per.values()))), "by_value": per,
                              "n_per_value": len(next(iter(by_value[name].values())))}
        out[name] = res
    return out


def structure_block(real: Dataset, syn: Path, cfg: EdgeConfig, size: int) -> dict:
    """Edge F1 to the real image of each case, PSNR to it, texture std between samples of one case."""
    ds = Dataset(syn)
    man = json.loads((syn / "manifest.json").read_text())["cases"]
    ids = sorted(ds.cases)
    xs = load_images(ds, ids, (size, size))
    src = [man[c]["source_case"] for c in ids]
    xr = torch.cat([load_images(real, [s], (size, size)) for s in src])
    er, eg = edge_map(xr, cfg).bool()[:, 0].numpy(), edge_map(xs, cfg).bool()[:, 0].numpy()
    f1 = [edge_f1(g, r) for g, r in zip(eg, er)]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(src):
        groups.setdefault(s, []).append(i)
    other = [edge_f1(eg[i], er[groups[src[(i + len(groups[src[i]])) % len(src)]][0]]) for i in range(len(ids))]
    std = [((xs[g] + 1) / 2).std(dim=0).mean().item() for g in groups.values() if len(g) > 1]
    return {"edge_f1": float(np.mean(f1)), "edge_f1_to_another_case": float(np.mean(other)),
            "psnr_to_real_db": float(psnr(xs, xr).mean()), "texture_std_between_samples": float(np.mean(std)),
            "n_images": len(ids)}


def base_samples(a, base: Path, requests: dict[str, list[str]], n: int) -> dict[str, dict[str, torch.Tensor]]:
    """Images from the base alone (no mask) for each requested attribute value, attribute guidance ``a.attr_g``."""
    model, card = load_model(base)
    sched = make_scheduler("dpm++", card.scheduler_config)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, values in requests.items():
        for v in values:
            gens = [torch.Generator().manual_seed(a.seed * 100003 + i) for i in range(n)]
            cond = Conditions({}, encode([{name: v}] * n, card.vocabulary))
            out.setdefault(name, {})[v] = timed(
                f"sample_base_{name}={v}", lambda: sample(model, sched, (n, 1, a.size, a.size), gens, cond=cond,
                                                          num_steps=a.sample_steps, attribute_guidance=a.attr_g))
    return out


def asked(a, name, model, masks, work, requests, **kw) -> dict[str, dict[str, torch.Tensor]]:
    """Images from a stage-2 model for the test masks, asked for each attribute value."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for attr, values in requests.items():
        for v in values:
            syn = gen(f"{name}_{attr}={v}", a, work / f"{name}-{attr}-{v}", model=str(model), masks=str(masks),
                      attributes=f"{attr}={v}", attribute_guidance=a.attr_g, **kw)
            ds = Dataset(syn)
            out.setdefault(attr, {})[v] = load_images(ds, sorted(ds.cases), (a.size, a.size))
    return out


def separate_model(joint: Path, mask_run: Path, edge_run: Path, out: Path) -> Path:
    """A model folder joining the separately trained mask and edges ControlNets (same base) at sampling."""
    jm, card = load_model(joint)
    mm, _ = load_model(mask_run)
    em, _ = load_model(edge_run)
    nets = ControlNetSet({"mask": mm.controlnet, "edges": em.controlnet.nets["edges"]})
    return save_model(out, jm.unet, dataclasses.replace(card, training={"note": "mask and edges trained apart"}),
                      controlnet=nets)


def phantom(a, work: Path) -> dict:
    data = timed("phantom", lambda: make_phantom(PhantomConfig(out=work / "ph", n=a.n, image_size=a.size, seed=a.seed,
                                                               workers=1, overwrite=True), progress=False))
    base, s = work / "base", a.cn_steps
    train_stage("train_base_with_attributes", a, data, base, "base", a.base_steps, attributes=("sex", "age"))
    for name, conds in (("mask", ("mask",)), ("mask_edges_joint", ("mask", "edges")), ("edges", ("edges",))):
        train_stage(f"train_controlnet_{name}", a, data, work / f"cn-{name}", "controlnet", s, base=str(base),
                    conditions=conds)
    sep = separate_model(work / "cn-mask_edges_joint", work / "cn-mask", work / "cn-edges", work / "cn-separate")
    real = Dataset(data)
    tr, te = real.case_ids("train"), real.case_ids("test")[: a.n_test]
    requests = {"sex": ["F", "M"], "age": ["20-40", "60-80"]}
    kw = dict(cases=tuple(te))
    generated = {"base_only": base_samples(a, base, requests, len(te)),
                 "base_plus_mask": asked(a, "gen_mask", work / "cn-mask", data, work, requests, **kw)}
    edges_cfg = EdgeConfig.from_card(ModelCard.load(work / "cn-mask_edges_joint" / "model").conditions["edges"])
    structure = {}
    for name, model, extra in (("mask_only", work / "cn-mask", {}),
                               ("mask_edges_joint", work / "cn-mask_edges_joint", {"edges_from": str(data)}),
                               ("mask_edges_separate", sep, {"edges_from": str(data)})):
        syn = gen(f"gen_structure_{name}", a, work / f"g-{name}", model=str(model), masks=str(data),
                  samples_per_mask=2, **kw, **extra)
        structure[name] = structure_block(real, syn, edges_cfg, a.size)
    gen("gen_mask_edges_joint_edges_guidance2", a, work / "g-edges-guided", model=str(work / "cn-mask_edges_joint"),
        masks=str(data), edges_from=str(data), guidance_scale="edges=2", **kw)
    return {"cases": a.n, "test_cases_used": len(te), "attributes": attribute_block(real, tr, te, a.size, generated,
                                                                                    a.seed),
            "structure": structure, "edge_detector": edges_cfg.to_card()}


def cxr(a, work: Path) -> dict:
    """The real set: attributes from file names, stage 1 with them, stage 2 on mask + edges jointly."""
    from maskray.data.importers import ImportConfig, import_folder

    rows = ["file,finding,site"] + [f"{p.name},{'tuberculosis' if p.stem.endswith('_1') else 'normal'},"
                                    f"{p.name.split('_')[0]}" for p in sorted((CXR / "images").glob("*.png"))]
    (work / "cxr_attributes.csv").write_text("\n".join(rows) + "\n")
    data = work / "cxr"
    timed("cxr_import", lambda: import_folder(ImportConfig(
        out=data, images=CXR / "images", masks=CXR / "masks", threshold=127, label_name="lung", image_size=a.size,
        val_fraction=0.1, test_fraction=0.1, seed=0, overwrite=True, workers=1,
        attributes_csv=work / "cxr_attributes.csv", attribute_columns=("finding", "site")), progress=False))
    train_stage("cxr_train_base_with_attributes", a, data, work / "cxr-base", "base", a.cxr_base_steps,
                attributes=("finding", "site"))
    train_stage("cxr_train_controlnet_mask_edges_joint", a, data, work / "cxr-cn", "controlnet", a.cxr_cn_steps,
                base=str(work / "cxr-base"), conditions=("mask", "edges"))
    real = Dataset(data)
    tr, te = real.case_ids("train"), real.case_ids("test")[: a.n_test]
    requests = {"finding": ["normal", "tuberculosis"], "site": ["CHNCXR", "MCUCXR"]}
    generated = {"base_plus_mask": asked(a, "cxr_gen_mask", work / "cxr-cn", data, work, requests,
                                         cases=tuple(te), conditioning_scale="mask=1,edges=0")}
    cfg = EdgeConfig.from_card(ModelCard.load(work / "cxr-cn" / "model").conditions["edges"])
    structure = {}
    for name, extra in (("mask_only", {"conditioning_scale": "mask=1,edges=0"}), ("mask_edges", {"edges_from": str(data)})):
        syn = gen(f"cxr_gen_structure_{name}", a, work / f"cxr-g-{name}", model=str(work / "cxr-cn"),
                  masks=str(data), samples_per_mask=2, cases=tuple(te), **extra)
        structure[name] = structure_block(real, syn, cfg, a.size)
    return {"cases": len(real.cases), "test_cases_used": len(te),
            "attributes": attribute_block(real, tr, te, a.size, generated, a.seed), "structure": structure}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="bench_out/conditions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--n-test", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--base-steps", type=int, default=150)
    p.add_argument("--cn-steps", type=int, default=80)
    p.add_argument("--cxr-base-steps", type=int, default=100)
    p.add_argument("--cxr-cn-steps", type=int, default=60)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--attr-g", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-cxr", action="store_true")
    p.add_argument("--reuse", action="store_true", help="keep --work and skip training where a model exists")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    if work.exists() and not a.reuse:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    load0, c0 = os.getloadavg(), time.process_time()
    res = {"command": " ".join(sys.argv), "threads": a.threads, "cpu_count": os.cpu_count(),
           "settings": vars(a), "loadavg_at_start": load0,
           "note": "machine shared with other agents' jobs; CPU seconds are this process's own"}
    out = ROOT / "benchmarks" / "results" / "conditions.json"

    def save():  # after each part, so an interrupted run keeps what it measured
        res["cost"], res["cpu_s_total"], res["loadavg_at_end"] = COST, round(time.process_time() - c0, 1), \
            os.getloadavg()
        out.write_text(json.dumps(res, indent=2))

    res["phantom"] = phantom(a, work)
    res["cxr_lungs"] = "not run yet"
    save()
    if CXR.is_dir() and not a.skip_cxr:
        res["cxr_lungs"] = cxr(a, work)
    else:
        res["cxr_lungs"] = "skipped (../shared/data/cxr-lungs not found or --skip-cxr)"
    save()
    print(json.dumps({k: res[k] for k in ("phantom", "cxr_lungs")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
