"""Extra conditions measured: attribute obedience, edge agreement, and what each extra condition costs.

    python benchmarks/bench_conditions.py [--work bench_out/conditions] [--threads 1] [--part phantom|cxr|all]
        [--cxr ../shared/data/cxr-lungs]

``--part`` runs one half (the two halves may run at once, one per CPU slot); each writes its own key of the
results file, which is merged under a lock.

Phantom (64 px, made here): stage 1 with the attributes sex and age; stage 2 three ways with the same steps: mask
alone, mask + edges trained jointly (one run, two ControlNets, each condition dropped independently), and edges alone
(joined with the mask-alone ControlNet by ``maskray train join``'s library call: "trained separately"), and mask +
edges jointly once more for as much CPU time as the two separate runs took together (equal compute). Then
- attribute accuracy: a logistic-regression classifier per attribute, trained on the real training images
  (evaluation/attributes.py), on the real test images and on images generated for the test masks asked for each
  value (``--attributes age=20-40`` ...), from the base alone (no mask; attribute guidance 1 and ``--attr-g``) and
  from base + mask ControlNet (split by whether the request agrees with the attribute of the mask's own case:
  the phantom's lung and heart masks carry sex and part of age);
- edge F1 (Canny, 1 px tolerance) of images generated for the test masks with the real test image's edges, and of
  mask-only images (the level without edges), texture variation between 2 samples, PSNR to the real image;
- cost: CPU seconds per training step and per generated image of each model.
cxr-lungs (when ``--cxr`` exists; never copied into the project): attributes from the file names
(``_1`` tuberculosis / ``_0`` normal, ``MCUCXR_`` / ``CHNCXR_`` site), the same measurements with mask + edges
trained jointly, and the training cost of a mask-only ControlNet for comparison. No case id or file name enters
the results.
Writes benchmarks/results/conditions.json. CPU time is this process's (``time.process_time``), threads as given.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from maskray.data.attributes import read_case_attributes
from maskray.data.dataset import Dataset
from maskray.data.phantom import PhantomConfig, make_phantom
from maskray.diffusion.attributes import encode
from maskray.diffusion.card import ModelCard
from maskray.diffusion.conditioning import Conditions
from maskray.diffusion.edges import EdgeConfig, edge_map
from maskray.diffusion.sampling import make_scheduler, sample
from maskray.diffusion.join import join_models
from maskray.diffusion.store import load_model
from maskray.evaluation.attributes import chance_level, features, fit_classifier
from maskray.evaluation.edges import edge_f1
from maskray.evaluation.pairs import load_images
from maskray.measures.image import psnr
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.config import TrainConfig
from maskray.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
COST: dict[str, dict] = {}


def timed(name: str, fn, **info):
    """Run ``fn``; record its CPU and wall seconds under ``name``."""
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    COST[name] = {"cpu_s": round(time.process_time() - c, 2), "wall_s": round(time.perf_counter() - w, 2), **info}
    print(f"{name}: {COST[name]}", flush=True)
    return out


def train_stage(name, a, data, out, stage, steps, batch, **kw):
    if a.reuse and (Path(out) / "model" / "maskray.json").is_file():  # trained by an earlier, interrupted run
        COST[name] = {"reused": str(out), "steps": steps, "batch_size": batch}
        return
    cfg = TrainConfig(data=str(data), out=str(out), image_size=a.size, steps=steps, batch_size=batch,
                      validate_every=steps, validation_cases=2, checkpoint_every=steps, overwrite=True,
                      seed=a.seed, **kw)
    timed(name, lambda: train(cfg, stage, progress=False), steps=steps, batch_size=batch)
    COST[name]["cpu_s_per_step"] = round(COST[name]["cpu_s"] / steps, 4)
    COST[name]["cpu_s_per_image"] = round(COST[name]["cpu_s"] / steps / batch, 5)


def gen(name, a, out, **kw):
    cfg = GenerateConfig(out=str(out), split="test", steps=a.sample_steps, batch_size=a.gen_batch, seed=a.seed,
                         overwrite=True, **kw)
    res = timed(name, lambda: generate(cfg, progress=False))
    n = len(Dataset(res).cases)
    COST[name].update(images=n, cpu_s_per_image=round(COST[name]["cpu_s"] / n, 4), sampler_steps=a.sample_steps)
    return res


def accuracy(clf, x: torch.Tensor, y: list[str]) -> float:
    return float(np.mean(clf.predict(features(x)) == np.asarray(y)))


def scored(clf, name, by_value: dict, truth: dict) -> dict:
    """Accuracy of one generator's images per requested value; with the source case of each image (stage 2), also
    split by whether the request agrees with that case's own recorded value."""
    per = {v: accuracy(clf, x, [v] * len(x)) for v, (x, _) in by_value.items()}
    out = {"mean": float(np.mean(list(per.values()))), "by_value": per,
           "n_per_value": len(next(iter(by_value.values()))[0])}
    if next(iter(by_value.values()))[1] is not None:
        hits = {True: [], False: []}
        for v, (x, src) in by_value.items():
            pred = clf.predict(features(x))
            for p, c in zip(pred, src):
                hits[truth[c][name] == v].append(p == v)
        out["asked_own_case_value"] = float(np.mean(hits[True])) if hits[True] else None
        out["asked_another_value"] = float(np.mean(hits[False])) if hits[False] else None
    return out


def attribute_block(real: Dataset, train_ids, test_ids, size, generated: dict, seed):
    """Per attribute: chance, real test accuracy, and accuracy on each generator's images per requested value.
    ``generated``: generator -> attribute -> value -> (images, source case of each or None)."""
    rec = read_case_attributes(real.root)
    xtr, xte = load_images(real, train_ids, (size, size)), load_images(real, test_ids, (size, size))
    out = {}
    for name in sorted({n for g in generated.values() for n in g}):
        ytr = [rec[c][name] for c in train_ids]
        clf = fit_classifier(xtr, ytr, seed)
        vals, counts = np.unique(ytr, return_counts=True)
        asked = [v for g in generated.values() for v, (x, _) in g.get(name, {}).items() for _ in range(len(x))]
        res = {"chance": chance_level(ytr, asked)[0],  # a generator that ignores the requests scores this
               "chance_majority": float(counts.max() / len(ytr)),  # the real test images' chance
               "real_test": accuracy(clf, xte, [rec[c][name] for c in test_ids]),
               "n_real_test": len(test_ids), "values_in_training": {str(v): int(k) for v, k in zip(vals, counts)}}
        for gname, by_attr in generated.items():
            if by_attr.get(name):
                res[gname] = scored(clf, name, by_attr[name], rec)
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


def base_samples(a, base: Path, requests: dict[str, list[str]], n: int, g: float, tag: str) -> dict:
    """Images from the base alone (no mask) for each requested attribute value, attribute guidance ``g``."""
    model, card = load_model(base)
    sched = make_scheduler("dpm++", card.scheduler_config)
    out: dict = {}
    for name, values in requests.items():
        for v in values:
            gens = [torch.Generator().manual_seed(a.seed * 100003 + i) for i in range(n)]
            cond = Conditions({}, encode([{name: v}] * n, card.vocabulary))
            x = timed(f"{tag}sample_base_g{g:g}_{name}={v}", lambda: sample(
                model, sched, (n, 1, a.size, a.size), gens, cond=cond, num_steps=a.sample_steps, attribute_guidance=g))
            COST[f"{tag}sample_base_g{g:g}_{name}={v}"]["cpu_s_per_image"] = round(
                COST[f"{tag}sample_base_g{g:g}_{name}={v}"]["cpu_s"] / n, 4)
            out.setdefault(name, {})[v] = (x, None)
    return out


def asked(a, name, model, masks, work, requests, **kw) -> dict:
    """Images from a stage-2 model for the test masks, asked for each attribute value, with their source cases."""
    out: dict = {}
    for attr, values in requests.items():
        for v in values:
            syn = gen(f"{name}_{attr}={v}", a, work / f"{name}-{attr}-{v}", model=str(model), masks=str(masks),
                      attributes=f"{attr}={v}", attribute_guidance=a.attr_g, **kw)
            ds = Dataset(syn)
            ids = sorted(ds.cases)
            man = json.loads((syn / "manifest.json").read_text())["cases"]
            out.setdefault(attr, {})[v] = (load_images(ds, ids, (a.size, a.size)), [man[c]["source_case"] for c in ids])
    return out


def phantom(a, work: Path) -> dict:
    data = timed("phantom", lambda: make_phantom(PhantomConfig(out=work / "ph", n=a.n, image_size=a.size, seed=a.seed,
                                                               workers=1, overwrite=True), progress=False))
    base, s = work / "base", a.cn_steps
    train_stage("train_base_with_attributes", a, data, base, "base", a.base_steps, a.batch, attributes=("sex", "age"))
    for name, conds in (("mask", ("mask",)), ("mask_edges_joint", ("mask", "edges")), ("edges", ("edges",))):
        train_stage(f"train_controlnet_{name}", a, data, work / f"cn-{name}", "controlnet", s, a.cn_batch,
                    base=str(base), conditions=conds)
    # joint again, for the CPU time the two separate ControlNets took together: equal compute, not equal steps
    joint_per_step = COST["train_controlnet_mask_edges_joint"].get("cpu_s_per_step")
    separate_cpu = sum(COST[f"train_controlnet_{n}"].get("cpu_s", 0.0) for n in ("mask", "edges"))
    equal_cpu = work / "cn-mask_edges_joint_equal_cpu"
    if joint_per_step and separate_cpu:  # absent when those runs were reused: their CPU time is not known here
        train_stage("train_controlnet_mask_edges_joint_equal_cpu", a, data, equal_cpu, "controlnet",
                    round(separate_cpu / joint_per_step), a.cn_batch, base=str(base), conditions=("mask", "edges"))
    shutil.rmtree(work / "cn-separate", ignore_errors=True)
    sep = timed("join_mask_and_edges", lambda: join_models({"mask": work / "cn-mask", "edges": work / "cn-edges"},
                                                           work / "cn-separate"))
    real = Dataset(data)
    tr, te = real.case_ids("train"), real.case_ids("test")[: a.n_test]
    requests = {"sex": ["F", "M"], "age": ["20-40", "60-80"]}
    kw = dict(cases=tuple(te))
    generated = {"base_only_guidance_1": base_samples(a, base, requests, len(te), 1.0, ""),
                 f"base_only_guidance_{a.attr_g:g}": base_samples(a, base, requests, len(te), a.attr_g, ""),
                 "base_plus_mask": asked(a, "gen_mask", work / "cn-mask", data, work, requests, **kw)}
    edges_cfg = EdgeConfig.from_card(ModelCard.load(work / "cn-mask_edges_joint" / "model").conditions["edges"])
    structure = {}
    for name, model, extra in (("mask_only", work / "cn-mask", {}),
                               ("mask_edges_joint", work / "cn-mask_edges_joint", {"edges_from": str(data)}),
                               ("mask_edges_separate", sep, {"edges_from": str(data)}),
                               ("mask_edges_joint_equal_cpu", equal_cpu, {"edges_from": str(data)})):
        if not (model / "model" / "maskray.json").is_file():
            continue
        syn = gen(f"gen_structure_{name}", a, work / f"g-{name}", model=str(model), masks=str(data),
                  samples_per_mask=2, **kw, **extra)
        structure[name] = structure_block(real, syn, edges_cfg, a.size)
    gen("gen_mask_edges_joint_edges_guidance2", a, work / "g-edges-guided", model=str(work / "cn-mask_edges_joint"),
        masks=str(data), edges_from=str(data), guidance_scale="edges=2", **kw)
    return {"cases": a.n, "test_cases_used": len(te), "attributes": attribute_block(real, tr, te, a.size, generated,
                                                                                    a.seed),
            "structure": structure, "edge_detector": edges_cfg.to_card()}


def cxr_attribute_csv(src: Path, out: Path) -> Path:
    """finding and site of every image, from its file name; written to the work folder, never to the results."""
    rows = ["file,finding,site"] + [f"{p.name},{'tuberculosis' if p.stem.endswith('_1') else 'normal'},"
                                    f"{p.name.split('_')[0]}" for p in sorted((src / "images").glob("*.png"))]
    out.write_text("\n".join(rows) + "\n")
    return out


def cxr(a, work: Path) -> dict:
    """The real set: attributes from file names, stage 1 with them, stage 2 on mask + edges jointly."""
    from maskray.data.importers import ImportConfig, import_folder

    src, data = Path(a.cxr), work / "cxr"
    csv = cxr_attribute_csv(src, work / "cxr_attributes.csv")
    if not (a.reuse and (data / "dataset.json").is_file()):
        timed("cxr_import", lambda: import_folder(ImportConfig(
            out=data, images=src / "images", masks=src / "masks", threshold=127, label_name="lung",
            image_size=a.size, val_fraction=0.1, test_fraction=0.1, seed=0, overwrite=True, workers=1,
            attributes_csv=csv, attribute_columns=("finding", "site")), progress=False))
    b = a.cxr_batch
    train_stage("cxr_train_base_with_attributes", a, data, work / "cxr-base", "base", a.cxr_base_steps, b,
                attributes=("finding", "site"))
    train_stage("cxr_train_controlnet_mask_edges_joint", a, data, work / "cxr-cn", "controlnet", a.cxr_cn_steps, b,
                base=str(work / "cxr-base"), conditions=("mask", "edges"))
    train_stage("cxr_train_controlnet_mask_only_cost", a, data, work / "cxr-cn-mask", "controlnet",
                a.cxr_cost_steps, b, base=str(work / "cxr-base"), conditions=("mask",))
    real = Dataset(data)
    tr, te = real.case_ids("train"), real.case_ids("test")[: a.n_test]
    requests = {"finding": ["normal", "tuberculosis"], "site": ["CHNCXR", "MCUCXR"]}
    generated = {f"base_only_guidance_{a.attr_g:g}": base_samples(a, work / "cxr-base", requests, len(te), a.attr_g,
                                                                  "cxr_"),
                 "base_plus_mask": asked(a, "cxr_gen_mask", work / "cxr-cn", data, work, requests,
                                         cases=tuple(te), conditioning_scale="mask=1,edges=0")}
    cfg = EdgeConfig.from_card(ModelCard.load(work / "cxr-cn" / "model").conditions["edges"])
    structure = {}
    for name, extra in (("mask_only", {"conditioning_scale": "mask=1,edges=0"}), ("mask_edges", {"edges_from": str(data)})):
        syn = gen(f"cxr_gen_structure_{name}", a, work / f"cxr-g-{name}", model=str(work / "cxr-cn"),
                  masks=str(data), samples_per_mask=2, cases=tuple(te), **extra)
        structure[name] = structure_block(real, syn, cfg, a.size)
    return {"cases": len(real.cases), "train_cases": len(tr), "test_cases_used": len(te),
            "attributes": attribute_block(real, tr, te, a.size, generated, a.seed), "structure": structure}


def merge_results(path: Path, part: dict) -> None:
    """Write ``part``'s keys into the results file, keeping the other half's (both halves may run at once)."""
    with open(path, "a") as lock:  # the results file is its own lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text() or "{}")
        old = old if old.get("format") == "parts" else {"format": "parts"}
        old.update(part)
        path.write_text(json.dumps(old, indent=2))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="bench_out/conditions")
    p.add_argument("--part", choices=("phantom", "cxr", "all"), default="all")
    p.add_argument("--cxr", default=str(ROOT.parent / "shared" / "data" / "cxr-lungs"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--batch", type=int, default=32, help="stage 1 batch (phantom)")
    p.add_argument("--cn-batch", type=int, default=16, help="stage 2 batch (phantom)")
    p.add_argument("--gen-batch", type=int, default=20)
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--cn-steps", type=int, default=400)
    p.add_argument("--cxr-batch", type=int, default=16)
    p.add_argument("--cxr-base-steps", type=int, default=400)
    p.add_argument("--cxr-cn-steps", type=int, default=300)
    p.add_argument("--cxr-cost-steps", type=int, default=60, help="mask-only ControlNet steps, for its cost only")
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--attr-g", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="keep --work and skip training where a model exists")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = ROOT / "benchmarks" / "results" / "conditions.json"
    parts = ("phantom", "cxr") if a.part == "all" else (a.part,)
    for part in parts:
        work = Path(a.work) / part
        if work.exists() and not a.reuse:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        COST.clear()
        load0, c0 = os.getloadavg(), time.process_time()
        res = {"command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               "threads": a.threads, "cpu_count": os.cpu_count(), "settings": vars(a), "loadavg_at_start": load0,
               "note": "machine shared with other jobs; CPU seconds are this process's own"}
        if part == "phantom":
            res["results"] = phantom(a, work)
        elif Path(a.cxr).is_dir():
            res["results"] = cxr(a, work)
        else:
            res["results"] = f"skipped: no cxr-lungs folder at {a.cxr}"
        res.update(cost=COST, cpu_s_total=round(time.process_time() - c0, 1), loadavg_at_end=os.getloadavg())
        merge_results(out, {part if part == "phantom" else "cxr_lungs": res})
        print(json.dumps(res["results"], indent=1)[:4000])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
