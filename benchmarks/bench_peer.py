"""maskray against the usual two-stage ControlNet built from MONAI's generative classes, side by side.

    python benchmarks/bench_peer.py --data DATASET --base-minutes 3 --controlnet-minutes 3 [--threads 1]

The peer follows MONAI's 2D ControlNet tutorial: ``DiffusionModelUNet`` with attention at the two lower levels
and one residual block per level, trained as a DDPM epsilon model (MSE, Adam at 2.5e-5, 1000 steps, linear
schedule), then frozen under a ``ControlNet`` copied from it and trained the same way through
``ControlNetDiffusionInferer``; it samples with ``DDIMScheduler`` at 50 steps. Channels (48, 96, 96) give it
about the parameter count of maskray's default network (2.6 M + 1.1 M against 2.2 M + 0.8 M). The mask enters
both ControlNets as the same one-hot stack. maskray trains with its own defaults and samples with its default
sampler.

Both systems get the same budget per stage, in CPU seconds of the benchmark's process (with one thread, the wall
clock of an idle machine; on a machine shared with other jobs the wall clock measures the neighbours, the CPU time
does not): the peer trains until its CPU time is up; maskray's step count is set from its CPU cost per step (a 6-step
run minus a 2-step run, so set-up and saving are left out; its LR schedule is then planned for the steps it will
take), and the CPU and wall time it really took are recorded. At the end, each samples one image per held-out mask and is
scored as bench_steps.py scores (paired PSNR/SSIM, segmenter Dice, nodules, texture distance, seconds per image) and
for realism in the embedding of a self-supervised feature network trained on the real training split (FID, KID,
precision/recall, beside the real-test-vs-real-train floor: ``maskray.evaluation.realism``). maskray is sampled with
its default sampler and with each of ``--maskray-samplers`` (fewer steps), so that the speed-up can be read at equal
adherence. ``--keep DIR`` keeps maskray's two runs (for ``bench_steps.py``). Writes ``benchmarks/results/peer.json``:
no case ids or file names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench_steps import draw, load_split, references, score  # same directory
from maskray.data.dataset import Dataset
from maskray.diffusion.conditioning import one_hot
from maskray.diffusion.networks import count_parameters
from maskray.diffusion.store import load_model
from maskray.evaluation.realism import realism
from maskray.hardware import matmul_peak_gflops
from maskray.measures.features import train_feature_net
from maskray.diffusion.model import DEFAULT_SAMPLER
from maskray.pipelines.generate import case_seed
from maskray.provenance import versions
from maskray.training.trainer import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
PEER_CHANNELS = (48, 96, 96)


def peer_networks(k: int):
    from monai.networks.nets import ControlNet, DiffusionModelUNet

    common = dict(spatial_dims=2, in_channels=1, channels=PEER_CHANNELS, attention_levels=(False, True, True),
                  num_res_blocks=1, num_head_channels=PEER_CHANNELS[-1], norm_num_groups=16)
    unet = DiffusionModelUNet(out_channels=1, **common)
    cn = ControlNet(conditioning_embedding_in_channels=k, conditioning_embedding_num_channels=(16,), **common)
    return unet, cn


def train_for(seconds: float, step_fn, desc: str) -> dict:
    """Call ``step_fn(i)`` until this process has used ``seconds`` of CPU time; returns steps, CPU and wall seconds."""
    t0, c0, i = time.time(), time.process_time(), 0
    bar = tqdm(desc=desc, unit="step")
    while time.process_time() - c0 < seconds:
        loss = step_fn(i)
        i += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return {"steps": i, "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0}


def run_peer(xtr, ytr, values, budget: tuple[float, float], batch: int, lr: float, seed: int) -> dict:
    from monai.inferers import ControlNetDiffusionInferer, DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    torch.manual_seed(seed)
    unet, cn = peer_networks(len(values))
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(seed)
    cond_all = one_hot(ytr, values)

    def batch_of(i):
        idx = torch.randint(0, len(xtr), (batch,), generator=g)
        noise = torch.randn(xtr[idx].shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        return xtr[idx], cond_all[idx], noise, t

    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    inferer = DiffusionInferer(sched)

    def base_step(i):
        x, _, noise, t = batch_of(i)
        loss = torch.nn.functional.mse_loss(inferer(x, unet, noise, t).float(), noise)
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step()
        return float(loss)

    res = {"base": train_for(budget[0], base_step, "peer base")}
    cn.load_state_dict(unet.state_dict(), strict=False)  # the tutorial's copy of the encoder
    unet.requires_grad_(False)
    opt = torch.optim.Adam(cn.parameters(), lr=lr)
    cinferer = ControlNetDiffusionInferer(sched)

    def cn_step(i):
        x, c, noise, t = batch_of(i)
        pred = cinferer(inputs=x, diffusion_model=unet, controlnet=cn, noise=noise, timesteps=t, cn_cond=c)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step()
        return float(loss)

    res["controlnet"] = train_for(budget[1], cn_step, "peer controlnet")
    res["parameters"] = {"unet": count_parameters(unet), "controlnet": count_parameters(cn)}
    return res | {"nets": (unet.eval(), cn.eval())}


@torch.no_grad()
def peer_sample(nets, labels, values, ids, seed: int, steps: int = 50) -> tuple[torch.Tensor, float]:
    from monai.inferers import ControlNetDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    unet, cn = nets
    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    noise = torch.stack([torch.randn((1,) + labels.shape[-2:], generator=torch.Generator().manual_seed(
        case_seed(seed, c, 0))) for c in ids])
    t0, c0 = time.perf_counter(), time.process_time()
    x = ControlNetDiffusionInferer(sched).sample(input_noise=noise, diffusion_model=unet, controlnet=cn,
                                                 cn_cond=one_hot(labels, values), scheduler=sched, verbose=False)
    return x.clamp(-1, 1), time.perf_counter() - t0, time.process_time() - c0


def cpu_seconds(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def calibrated_steps(cfg: TrainConfig, stage: str, seconds: float, work: Path) -> int:
    """maskray's steps for ``seconds`` of CPU time: the CPU cost per step of this stage, from a 6-step and a
    2-step run (their difference leaves set-up, validation and saving out)."""
    cost = [cpu_seconds(lambda: train(dataclasses.replace(cfg, out=str(work / f"probe-{stage}-{n}"), steps=n,
                                                          checkpoint_every=10 ** 6), stage, progress=False))
            for n in (2, 6)]
    return max(1, int(seconds * 4 / max(cost[1] - cost[0], 1e-6)))


def run_maskray(data: str, size: int, budget: tuple[float, float], batch: int, seed: int, work: Path) -> dict:
    common = dict(data=data, image_size=size, batch_size=batch, seed=seed, validate_every=10 ** 6)
    res = {}
    for stage, secs, extra in (("base", budget[0], {}), ("controlnet", budget[1], {"base": str(work / "base")})):
        cfg = TrainConfig(out=str(work / stage), **common, **extra)
        steps = calibrated_steps(cfg, stage, secs, work)
        t0 = time.time()
        cpu = cpu_seconds(lambda: train(dataclasses.replace(cfg, steps=steps), stage))
        res[stage] = {"steps": steps, "cpu_s": cpu, "wall_s": time.time() - t0}
    return res


def realism_of(x: torch.Tensor, ref: dict, xtr: torch.Tensor, net, seed: int) -> dict:
    """Feature-space and spectrum distances of ``x`` from the real training split; the floor is kept once."""
    r = realism(xtr, ref["x"], x, net.embed, "self-supervised feature network", seed)
    ref.setdefault("realism_floor", {"features": r["features"]["floor_real_test"],
                                     "power_spectrum": r["power_spectrum"]["floor_real_test"]})
    f = r["features"]["synthetic"]
    return {"fid": f["fid"], "kid": f["kid"]["mean"], "precision": f["precision"], "recall": f["recall"],
            "spectrum_to_train": r["power_spectrum"]["synthetic"]}


def scored(x, secs: float, cpu: float, ref: dict, xtr, net, seed: int) -> dict:
    n = len(ref["ids"])
    return {"seconds_per_image": secs / n, "cpu_seconds_per_image": cpu / n,
            **score(x, ref["x"], ref["y"], ref["seg"], ref["fg"]), "realism": realism_of(x, ref, xtr, net, seed)}


def train_rates(e: dict, bsz: int) -> None:
    e["train_images"] = sum(e[s]["steps"] for s in ("base", "controlnet")) * bsz
    e["train_images_per_cpu_s"] = {s: e[s]["steps"] * bsz / e[s]["cpu_s"] for s in ("base", "controlnet")}
    e["train_images_per_s"] = {s: e[s]["steps"] * bsz / e[s]["wall_s"] for s in ("base", "controlnet")}


def sample_maskray(run: Path, samplers: list[tuple[str, int]], ref: dict, xtr, net, seed: int) -> dict:
    model, card = load_model(run, need_controlnet=True)
    out = {"parameters": {"unet": count_parameters(model.unet), "controlnet": count_parameters(model.controlnet)},
           "samplers": {}}
    for name, steps in samplers:
        x, secs, cpu = draw(model, card, ref["y"], ref["ids"], name, steps, seed)
        out["samplers"][f"{name} {steps}"] = scored(x, secs, cpu, ref, xtr, net, seed)
    return out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=64, help="pixels (the issue's runs: 64, and 128 at 25 + 25 min)")
    p.add_argument("--base-minutes", type=float, default=10.0, help="CPU minutes of this process for stage 1")
    p.add_argument("--controlnet-minutes", type=float, default=10.0, help="CPU minutes for stage 2")
    p.add_argument("--batch-size", type=int, default=8, help="peer batch (the tutorial's)")
    p.add_argument("--maskray-batch-size", type=int, default=32, help="maskray's default")
    p.add_argument("--maskray-samplers", default="dpm++:8,unipc:8,unipc:5",
                   help="NAME:STEPS samplers scored besides generate's default")
    p.add_argument("--peer-lr", type=float, default=2.5e-5, help="the tutorial's Adam learning rate")
    p.add_argument("--eval-steps", type=int, default=300)
    p.add_argument("--feature-steps", type=int, default=400, help="training steps of the realism feature network")
    p.add_argument("--test-masks", type=int, default=None, help="score the first N test masks (default: all)")
    p.add_argument("--keep", default=None, help="keep maskray's runs here (base/, controlnet/)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "peer.json"))
    return p.parse_args()


def report(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    rows = [("peer " + out["peer"]["sampler"], out["peer"], out["peer"]["scores"])]
    rows += [(f"maskray {k}", out["maskray"], v) for k, v in out["maskray"]["samplers"].items()]
    for name, e, sc in rows:
        print(f"{name:20} train img/CPU-s {e['train_images_per_cpu_s']['base']:.1f} / "
              f"{e['train_images_per_cpu_s']['controlnet']:.1f}  sample {sc['cpu_seconds_per_image']:.3f} CPU-s/img  "
              f"PSNR {sc['psnr']:.2f} SSIM {sc['ssim']:.3f} Dice " + " ".join(f"{v:.3f}" for v in sc["dice"].values())
              + f"  FID {sc['realism']['fid']:.2f} prec {sc['realism']['precision']:.2f}")
    print(f"wrote {path}")


def main() -> int:
    a = parse_args()
    torch.set_num_threads(a.threads)
    ds = Dataset(a.data)
    budget = (a.base_minutes * 60, a.controlnet_minutes * 60)
    ref = references(ds, a.size, a.eval_steps, a.seed, a.test_masks)
    values = list(ds.info.foreground.values())
    _, xtr, ytr = load_split(ds, "train", a.size)
    net = train_feature_net(xtr, steps=a.feature_steps, seed=a.seed)
    peer = run_peer(xtr, ytr, values, budget, a.batch_size, a.peer_lr, a.seed)
    px, psecs, pcpu = peer_sample(peer.pop("nets"), ref["y"], values, ref["ids"], a.seed)
    peer |= {"sampler": "monai DDIM 50", "scores": scored(px, psecs, pcpu, ref, xtr, net, a.seed)}
    samplers = [DEFAULT_SAMPLER] + [(s.split(":")[0], int(s.split(":")[1])) for s in a.maskray_samplers.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        mr = run_maskray(str(ds.root), a.size, budget, a.maskray_batch_size, a.seed, work)
        mr |= {"default_sampler": f"{DEFAULT_SAMPLER[0]} {DEFAULT_SAMPLER[1]}",
               **sample_maskray(work / "controlnet", samplers, ref, xtr, net, a.seed)}
    train_rates(peer, a.batch_size)
    train_rates(mr, a.maskray_batch_size)
    out = {"peer": peer, "maskray": mr, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
           "budget_s": budget, "image_size": a.size, "threads": a.threads, "test_masks": len(ref["ids"]),
           "perfect_sampler_bound_psnr": ref["bound"], "real_test_images": ref["real"],
           "realism_floor_real_test": ref["realism_floor"], "feature_net_steps": a.feature_steps,
           "bf16_matmul_peak_gflops": round(matmul_peak_gflops(torch.bfloat16), 1),
           "fp32_matmul_peak_gflops": round(matmul_peak_gflops(torch.float32), 1),
           "note": "one thread; peaks measured with the same thread count at the end of the run", "versions": versions()}
    report(out, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
