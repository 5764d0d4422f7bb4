"""What reading the mask at image resolution costs a latent ControlNet: strided convolutions vs folding.

    python benchmarks/bench_mask_embedding.py [--threads 1] [--steps 6]

A stage-2 training step (bf16 autocast, AdamW) of the default network on 4 x 64 x 64 latents (a 256 px image
through the 4x autoencoder), batch 32, three mask labels at 256 px, with the ControlNet's conditioning embedding
either as Stable Diffusion's ControlNet builds it (strided 3x3 convolutions at 256, 128 and 64 px: 16,32,64) or as
maskray's latent models build it (the 4 x 4 patch of each latent cell folded into channels, then one 16-channel
embedding at 64 px). Mean seconds per step after two warm-up steps. Writes benchmarks/results/mask_embedding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from maskray.diffusion.networks import ControlledUNet, UNetConfig, build_controlnet, build_unet, count_parameters


def seconds_per_step(unet, emb: tuple[int, ...], steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    net = build_controlnet(unet, 3, emb, factor=4)
    model = ControlledUNet(unet, net)
    opt = torch.optim.AdamW(net.parameters())
    x, t = torch.randn(32, 4, 64, 64), torch.randint(0, 1000, (32,))
    mask = (torch.rand(32, 3, 256, 256) > 0.5).float()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, mask)
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return sum(times[2:]) / len(times[2:]), count_parameters(net)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    unet = build_unet(UNetConfig(in_channels=4), 64).requires_grad_(False)
    rows = {}
    for name, emb in (("strided convolutions 16,32,64", (16, 32, 64)), ("folded 4x4, embedding 16", (16,))):
        s, n = seconds_per_step(unet, emb, a.steps)
        rows[name] = {"cond_embedding_channels": list(emb), "s_per_step": round(s, 3), "controlnet_parameters": n}
        print(f"{name}: {s:.3f} s per step, {n} parameters", flush=True)
    out = Path(__file__).parent / "results" / "mask_embedding.json"
    out.write_text(json.dumps({"command": "python benchmarks/bench_mask_embedding.py " +
                               f"--threads {a.threads} --steps {a.steps}", "threads": a.threads,
                               "cpu_count": os.cpu_count(), "batch": 32, "latent": [4, 64, 64], "image_size": 256,
                               "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
