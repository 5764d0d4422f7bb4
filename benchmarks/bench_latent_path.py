"""The whole 256 px latent path against the 64 px pixel path, on the same data, timed stage by stage.

    python benchmarks/bench_latent_path.py --data phantom [--work bench_out/latent] [--threads 2]
    python benchmarks/bench_latent_path.py --data cxr     # ../shared/data/cxr-lungs, skipped when absent

Stages (each a `maskray` command in its own process, so the times are what a user sees): data at 256 px ->
train autoencoder (4x: 64 x 64 latents) -> train base --autoencoder -> train controlnet -> generate for the
test masks -> evaluate at 256 px; then the pixel model at 64 px on the same data (base, controlnet, generate,
evaluate at 64 px). Also: seconds to sample one 256 px image in 20 steps (batch 16, in-process).
Writes benchmarks/results/latent_path_<data>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr-lungs"


CPU_S: dict[str, float] = {}
DONE = {}  # stage -> the file whose presence marks it finished (for --reuse)
REUSE = False
LEDGER: Path | None = None  # WORK/times.json: the times of every finished stage, kept across --reuse runs


def run(name: str, argv: list[str], times: dict, env: dict) -> None:
    """Run one stage; wall seconds into ``times``, CPU seconds (user + system of the child) into ``CPU_S``.
    With ``--reuse`` a stage whose output is complete is skipped and its recorded times are kept."""
    out = Path(argv[argv.index("--out") + 1])
    marker = out / DONE.get(name, DONE.get(argv[0], ""))
    if REUSE and name in times and marker.exists() and marker != out:
        print(f"--- {name}: reused ({out})", flush=True)
        return
    print(f"--- {name}: maskray {' '.join(argv)}", flush=True)
    t, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "maskray", *argv], check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times[name] = round(time.time() - t, 1)
    CPU_S[name] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    print(f"--- {name}: {times[name]} s wall, {CPU_S[name]} CPU-s", flush=True)
    LEDGER.write_text(json.dumps({"times_s": times, "cpu_s": CPU_S}, indent=2))


def make_data(a, work: Path, times: dict, env: dict) -> Path:
    data = work / "data"
    if a.data == "phantom":
        run("data", ["phantom", "--out", str(data), "--n", str(a.cases), "--image-size", "256", "--seed", "0",
                     "--overwrite"], times, env)
    else:
        cxr = Path(a.cxr)
        run("data", ["data", "import", "--out", str(data), "--images", str(cxr / "images"), "--masks",
                     str(cxr / "masks"), "--threshold", "127", "--label-name", "lung", "--image-size", "256",
                     "--val-fraction", "0.1", "--test-fraction", "0.1", "--seed", "0", "--overwrite"], times, env)
    return data


def sampling_seconds(model: Path, data: Path, n: int = 16, steps: int = 20, guidance_scale: str = "1") -> float:
    """Seconds per image to sample and decode ``n`` images in ``steps`` steps of generate's default sampler (bf16),
    at mask guidance ``guidance_scale`` (above 1 each step costs a second network pass)."""
    from maskray.data.dataset import Dataset
    from maskray.pipelines.generate import GenerateConfig, generate

    ds = Dataset(data)
    cases = tuple(ds.case_ids("test")[:n])
    out = model.parent / f"timing-{model.name}"
    cfg = GenerateConfig(model=str(model), masks=str(data), out=str(out), cases=cases, steps=steps,
                         batch_size=len(cases), guidance_scale=guidance_scale, overwrite=True)
    generate(cfg, progress=False)  # warm-up (first-call allocations)
    t = time.time()
    generate(cfg, progress=False)
    return (time.time() - t) / len(cases)


def without_case_ids(metrics: dict) -> dict:
    """evaluate's metrics without the case ids it names (the memorisation pairs it flags): the results file is
    committed, and the ids of an internal data set must not be in it. The number flagged stays."""
    mem = metrics.get("memorisation")
    if isinstance(mem, dict) and "flagged" in mem:
        metrics = {**metrics, "memorisation": {k: v for k, v in mem.items() if k != "flagged"}}
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("phantom", "cxr"), default="phantom")
    p.add_argument("--work", default=None)
    p.add_argument("--cases", type=int, default=400, help="phantom cases")
    p.add_argument("--ae-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=600, help="steps of each diffusion stage (both paths)")
    p.add_argument("--controlnet-batch-size", type=int, default=None,
                   help="batch of the latent stage 2 (default: maskray's); its steps stay --steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=300)
    p.add_argument("--skip-pixel", action="store_true")
    p.add_argument("--feature-net", default=None, help="evaluate's feature net, already trained on the same real data "
                                                        "(saves its training; evaluate writes one under eval/feature_net)")
    p.add_argument("--reuse", action="store_true", help="skip stages whose output is complete (times kept)")
    p.add_argument("--cxr", default=str(CXR), help="the cxr-lungs folder (from a worktree: ../../shared/...)")
    a = p.parse_args()
    if a.data == "cxr" and not (Path(a.cxr) / "images").is_dir():
        print(f"skipped: {a.cxr} not found (internal development data)")
        return
    work = Path(a.work or f"bench_out/latent-{a.data}")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    global REUSE, LEDGER
    REUSE, LEDGER = a.reuse, work / "times.json"
    DONE.update({"train_autoencoder": "report.json", "phantom": "dataset.json", "data": "dataset.json", "train": "model/maskray.json",
                 "generate": "run.json", "evaluate": "metrics.json"})
    times: dict[str, float] = {}
    if a.reuse and LEDGER.is_file():
        ledger = json.loads(LEDGER.read_text())
        times.update(ledger["times_s"])
        CPU_S.update(ledger["cpu_s"])
    data = make_data(a, work, times, env)
    lat, pix = work / "latent", work / "pixel"
    run("train_autoencoder", ["train", "autoencoder", "--data", str(data), "--out", str(lat / "ae"), "--image-size",
                              "256", "--factor", "4", "--steps", str(a.ae_steps), "--overwrite"], times, env)
    run("train_base_latent", ["train", "base", "--data", str(data), "--out", str(lat / "base"), "--image-size", "256",
                              "--autoencoder", str(lat / "ae"), "--steps", str(a.steps), "--overwrite"], times, env)
    run("train_controlnet_latent", ["train", "controlnet", "--data", str(data), "--out", str(lat / "cn"), "--base",
                                    str(lat / "base"), "--image-size", "256", "--steps", str(a.steps), "--overwrite",
                                    *(["--batch-size", str(a.controlnet_batch_size)] if a.controlnet_batch_size else [])],
        times, env)
    run("generate_latent", ["generate", "--model", str(lat / "cn"), "--masks", str(data), "--split", "test",
                            "--out", str(lat / "gen"), "--overwrite"], times, env)
    run("evaluate_latent", ["evaluate", "--real", str(data), "--synthetic", str(lat / "gen"), "--out",
                            str(lat / "eval"), "--image-size", "256", "--seg-steps", str(a.eval_steps), "--reg-steps",
                            str(a.eval_steps), "--threads", "1", "--overwrite",
                            *(["--feature-net", a.feature_net] if a.feature_net else [])], times, env)
    if not a.skip_pixel:
        run("train_base_pixel64", ["train", "base", "--data", str(data), "--out", str(pix / "base"), "--image-size",
                                   "64", "--steps", str(a.steps), "--overwrite"], times, env)
        run("train_controlnet_pixel64", ["train", "controlnet", "--data", str(data), "--out", str(pix / "cn"),
                                         "--base", str(pix / "base"), "--image-size", "64", "--steps", str(a.steps),
                                         "--overwrite"], times, env)
        run("generate_pixel64", ["generate", "--model", str(pix / "cn"), "--masks", str(data), "--split", "test",
                                 "--out", str(pix / "gen"), "--overwrite"], times, env)
        run("evaluate_pixel64", ["evaluate", "--real", str(data), "--synthetic", str(pix / "gen"), "--out",
                                 str(pix / "eval"), "--image-size", "64", "--seg-steps", str(a.eval_steps), "--reg-steps",
                                 str(a.eval_steps), "--threads", "1", "--overwrite"], times, env)
    import torch

    torch.set_num_threads(a.threads)
    from maskray.hardware import measure_peaks

    per_image = sampling_seconds(lat / "cn", data)
    peaks = measure_peaks()  # at the benchmark's thread count, so the times above can be scaled to another machine
    # the path is data -> autoencoder -> both stages -> generate; evaluation is reported beside it, not in it
    on_latent = [k for k in times if k in ("data", "train_autoencoder") or
                 (k.endswith("_latent") and not k.startswith("evaluate"))]
    result = {
        "data": a.data, "threads": a.threads, "cpu": os.cpu_count(), "args": vars(a), "times_s": times,
        "cpu_s": CPU_S, "load_average_at_end": os.getloadavg(), "hardware": peaks,
        "latent_path_wall_min": round(sum(times[k] for k in on_latent) / 60, 1),
        "latent_path_cpu_min": round(sum(CPU_S[k] for k in on_latent) / 60, 1),
        "latent_path_stages": on_latent,
        "command": "python benchmarks/bench_latent_path.py " + " ".join(sys.argv[1:]),
        "sample_256px_20_steps_s_per_image": round(per_image, 3),
        # case ids of the internal data set stay out of the results file
        "autoencoder_report": {k: v for k, v in json.loads((lat / "ae" / "report.json").read_text()).items()
                               if k != "cases"},
        "latent_eval": without_case_ids(json.loads((lat / "eval" / "metrics.json").read_text())),
        "pixel64_eval": None if a.skip_pixel else without_case_ids(json.loads((pix / "eval" / "metrics.json").read_text())),
    }
    text = json.dumps(result, indent=2, default=float)
    from maskray.data.dataset import Dataset

    leaked = [c for c in Dataset(data).case_ids() if f'"{c}"' in text or f"{c}." in text]
    if leaked:  # the results file is committed: no case id (or file name) of the data may be in it
        raise SystemExit(f"results hold {len(leaked)} case ids of the data (e.g. {leaked[0]}); not written")
    out = ROOT / "benchmarks" / "results" / f"latent_path_{a.data}.json"
    out.write_text(text)
    print(json.dumps({k: result[k] for k in ("times_s", "cpu_s", "latent_path_wall_min", "latent_path_cpu_min",
                                             "sample_256px_20_steps_s_per_image")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
