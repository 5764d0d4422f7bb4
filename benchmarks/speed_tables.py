"""The speed tables of docs/speed.md and docs/results.md, as Markdown from the results files.

    python benchmarks/speed_tables.py [steps|peer|peer_128|levers|profile|kernels|generate ...]   # print
    python benchmarks/tables.py --write                                                      # into the docs

Reads benchmarks/results/steps.json (bench_steps.py), peer.json and peer_128.json (bench_peer.py), speed_levers.json
(bench_speed.py --levers), speed_profile.json (bench_speed.py --profile), speed_kernels.json and
speed_autoencoder_kernels.json (bench_kernels.py), fused_generate*.json (bench_fused_generate.py); a missing file is
named, not guessed. Each table is a function of the results folder returning Markdown (``tables.py`` registers them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from results_file import RESULTS, MissingResults, read_results  # benchmarks/ is the script's own folder on sys.path


def _text(out: list[str]) -> str:
    return "\n".join(out).strip()




def _nodules(r: dict) -> str:
    """``found/of, contrast`` with whatever the row measured (rows without a segmenter have no detection)."""
    n = r.get("nodules") or {}
    parts = [f"{n['found']}/{n['of']}" if "found" in n else "", f"{n['contrast_mean']:+.3f}" if "contrast_mean" in n
             else ""]
    return ", ".join(p for p in parts if p)


def _dice(scores: dict, labels: list[str]) -> str:
    return " / ".join(f"{scores['dice'][k]:.3f}" for k in labels) if "dice" in scores else "not measured"


def steps_table(results: Path = RESULTS) -> str:
    d = read_results(results, "steps")
    out: list[str] = []
    peak = d["machine"]["bf16_matmul_peak_gflops"]
    for data in dict.fromkeys(m["data_name"] for m in d["models"].values()):
        names = [k for k, m in d["models"].items() if m["data_name"] == data]
        m = d["models"][names[0]]
        real = m["real_test_images"]
        labels = list(real.get("dice", {}))
        out.append(f"**{data}**: {m['test_masks']} held-out masks, {m['image_size']} px, {d['threads']} thread (bf16 "
                   f"matmul peak {peak:.0f} GFLOP/s at 1 thread); perfect-sampler bound "
                   f"{m['perfect_sampler_bound_psnr']:.2f} dB; real test images: Dice "
                   + ", ".join(f"{k} {v:.3f}" for k, v in real.get("dice", {}).items())
                   + (f", nodules {_nodules(real)}" if real.get("nodules") else "") + "\n")
        out.append("| model | sampler | steps | PSNR dB | - bound | SSIM | Dice " + " / ".join(labels)
                   + " | nodules found, contrast | texture distance | CPU s / image |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in (r for r in d["rows"] if r["model"] in names):
            out.append(f"| {r['model']} | {r['scheduler']} | {r['steps']} | {r['psnr']:.2f} | {r['psnr_minus_bound']:+.2f} | "
                       f"{r['ssim']:.3f} | {_dice(r, labels)} | {_nodules(r)} | {r['spectrum_distance']:.3f} | "
                       f"{r['cpu_seconds_per_image']:.3f} |")
        out.append("")
    out.append("`python benchmarks/" + "`; `python benchmarks/".join(d["commands"]) + "` (figure: `benchmarks/results/steps.png`)\n")
    return _text(out)


def peer_table(results: Path = RESULTS) -> str:
    """The 64 px run, results/peer.json (``bench_peer.py``)."""
    return _peer_table(read_results(results, "peer"))


def peer_128_table(results: Path = RESULTS) -> str:
    """The 128 px run, results/peer_128.json (``bench_peer.py --size 128 --out ...``)."""
    return _peer_table(read_results(results, "peer_128"))


def _peer_table(d: dict) -> str:
    out: list[str] = []
    labels = list(d["real_test_images"]["dice"])
    floor = d["realism_floor_real_test"]["features"]
    out.append(f"{d['image_size']} px, budget {d['budget_s'][0] / 60:.0f} + {d['budget_s'][1] / 60:.0f} CPU-minutes each, "
               f"{d['threads']} thread (matmul peak at 1 thread: {d['fp32_matmul_peak_gflops']:.0f} GFLOP/s fp32, "
               f"{d['bf16_matmul_peak_gflops']:.0f} bf16), {d['test_masks']} held-out masks; perfect-sampler bound "
               f"{d['perfect_sampler_bound_psnr']:.2f} dB; real test images: Dice "
               + ", ".join(f"{k} {v:.3f}" for k, v in d["real_test_images"]["dice"].items())
               + f"; realism floor (real test vs real train): FID {floor['fid']:.2f}, precision {floor['precision']:.2f}, "
                 f"recall {floor['recall']:.2f}\n")
    out.append("| | parameters (UNet + ControlNet) | steps (base + CN) | train img/CPU-s (base / CN) | sampler | "
               "CPU s / image | PSNR dB | SSIM | Dice " + " / ".join(labels) + " | FID | precision / recall |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [("MONAI tutorial build", d["peer"], d["peer"]["sampler"], d["peer"]["scores"])]
    rows += [("maskray", d["maskray"], k, v) for k, v in d["maskray"]["samplers"].items()]
    for name, e, sampler, sc in rows:
        p, r = e["parameters"], sc["realism"]
        out.append(f"| {name} | {p['unet'] / 1e6:.2f} M + {p['controlnet'] / 1e6:.2f} M | {e['base']['steps']} + "
                   f"{e['controlnet']['steps']} | {e['train_images_per_cpu_s']['base']:.1f} / "
                   f"{e['train_images_per_cpu_s']['controlnet']:.1f} | {sampler} | {sc['cpu_seconds_per_image']:.3f} | "
                   f"{sc['psnr']:.2f} | {sc['ssim']:.3f} | {_dice(sc, labels)} | {r['fid']:.2f} | "
                   f"{r['precision']:.2f} / {r['recall']:.2f} |")
    out.append(f"\n`python benchmarks/{d['command']}`\n")
    return _text(out)


def levers_table(results: Path = RESULTS) -> str:
    d = read_results(results, "speed_levers")
    out: list[str] = []
    out.append(f"{d['threads']} thread; bf16 matmul peak {d['bf16_matmul_peak_gflops']:.0f} GFLOP/s, fp32 "
               f"{d['fp32_matmul_peak_gflops']:.0f} GFLOP/s (same thread count); GFLOP per image: "
               + "; ".join(f"{k} px {v['per_image_denoising_step']:.2f} per denoising step, "
                           f"{v['per_image_stage2_train_step']:.2f} per stage-2 training step" for k, v in d["gflop"].items())
               + "\n")
    out.append("| px | batch | channels_last | torch.compile | freezing | stage-2 train img/s | % of peak | "
               "sampling img-steps/s | % of peak |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        tr = (f"{r['train_images_per_s']:.1f} | {100 * r['train_fraction_of_peak']:.0f}%"
              if "train_images_per_s" in r else "(inference only) | ")
        out.append(f"| {r['size']} | {r['batch']} | {r['channels_last']} | {r['compile']} | {r['freezing']} | {tr} | "
                   f"{r['sample_image_steps_per_s']:.1f} | {100 * r['sample_fraction_of_peak']:.0f}% |")
    out.append(f"\n`python benchmarks/{d['command']}`\n")
    return _text(out)


PROFILE_STEP_NAMES = {"train": "stage-2 training, fused kernel, freed memory kept (default)",
                      "train_nchw": "stage-2 training, NCHW, PyTorch's kernels, glibc's allocator",
                      "sample": "denoising, fused kernel, freed memory kept (default)",
                      "sample_pytorch": "denoising, PyTorch's kernels, glibc's allocator"}


def profile_table(results: Path = RESULTS) -> str:
    d = read_results(results, "speed_profile")
    out: list[str] = []
    out.append(f"{d['threads']} thread; bf16 matmul peak {d['bf16_matmul_peak_gflops']:.0f} GFLOP/s (measured in the same "
               "run); share of the step's profiled time per operator group\n")
    out.append("| px | step (batch 32) | memory format | convolutions | GroupNorm | SiLU | GroupNorm + SiLU fused | other "
               "(adds, concatenations, copies, casts, optimizer) | conv + matmul kernels alone, % of peak | whole step, "
               "% of peak |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        sh = r["share"]
        named = ("convolution", "group_norm", "silu", "group_norm_silu (fused)")
        other = 1 - sum(sh.get(k, 0) for k in named)
        out.append(f"| {r['size']} | {PROFILE_STEP_NAMES.get(r['kind'], r['kind'])} | "
                   f"{'channels_last' if r['channels_last'] else 'NCHW'} | "
                   + " | ".join(f"{100 * sh.get(k, 0):.0f}%" for k in named)
                   + f" | {100 * other:.0f}% | {100 * r['conv_matmul_kernels_fraction_of_peak']:.0f}% | "
                     f"{100 * r['fraction_of_peak_profiled']:.0f}% |")
    out.append(f"\n`python benchmarks/{d['command']}`\n")
    return _text(out)


def _highest_one_thread_peak(results: Path) -> tuple[float, str]:
    """The highest one-thread bf16 matmul peak any results file measured, and that file's name: this machine's peak
    moves by about 10% between runs, so fractions are also given against the highest."""
    best = (0.0, "")
    for path in sorted(Path(results).glob("*.json")):
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("threads") != 1:
            continue
        peak = d.get("bf16_matmul_peak_gflops")
        for value in (peak.values() if isinstance(peak, dict) else [peak]):
            if isinstance(value, (int, float)) and value > best[0]:
                best = (float(value), path.name)
    return best


def _rss(row: dict, kept: str, default: str) -> str:
    """Peak RSS of the default (freed memory kept) against glibc's default allocator, same kernels."""
    if kept in row and default in row and "peak_rss_mib" in row[kept]:
        return f"{row[kept]['peak_rss_mib']:.0f} / {row[default]['peak_rss_mib']:.0f} MiB"
    return ""


def kernels_table(results: Path = RESULTS) -> str:
    d = read_results(results, "speed_kernels")
    out: list[str] = []
    peaks = ", ".join(f"{k} px {v:.0f}" for k, v in d["bf16_matmul_peak_gflops"].items())
    out.append(f"{d['threads']} thread; one denoising step (base + ControlNet), bf16, channels_last; bf16 matmul peak "
               f"GFLOP/s measured before each size's rows: {peaks}\n")
    out.append("| px | batch | fp32 weights + autocast | bf16 weights, PyTorch kernels | bf16 weights + fused GroupNorm/SiLU "
               "| the same, freed memory kept (default) | default vs autocast | peak RSS, kept / glibc default |")
    out.append("|---|---|---|---|---|---|---|---|")
    cells: dict = {}
    for r in d["rows"]:
        cells.setdefault((r["size"], r["batch"]), {})[r["choice"]] = r
    for (size, batch), row in cells.items():
        text = [f"{row[c]['image_steps_per_s']:.1f} img-steps/s ({100 * row[c]['fraction_of_peak']:.0f}%)"
                if c in row else "" for c in ("autocast", "pytorch", "fused", "fused_kept")]
        gain = (f"{row['fused_kept']['image_steps_per_s'] / row['autocast']['image_steps_per_s']:.2f}x"
                if "fused_kept" in row and "autocast" in row else "")
        out.append(f"| {size} | {batch} | " + " | ".join(text) + f" | {gain} | {_rss(row, 'fused_kept', 'fused')} |")
    if d.get("train_rows"):
        out.append("\nStage-2 training step (ControlNet trained, base frozen and back-propagated through), bf16:\n")
        top, top_file = _highest_one_thread_peak(results)
        out.append("| px | batch | NCHW, PyTorch kernels (default before) | channels_last, PyTorch kernels | channels_last + "
                   "fused GroupNorm/SiLU | the same, freed memory kept (default) | default vs before | default, % of the "
                   f"highest peak measured ({top:.0f} GFLOP/s, {top_file}) | peak RSS, kept / glibc default |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        train: dict = {}
        for r in d["train_rows"]:
            train.setdefault((r["size"], r["batch"]), {})[r["train_choice"]] = r
        for (size, batch), row in train.items():
            text = [f"{row[c]['images_per_s']:.1f} img/s ({100 * row[c]['fraction_of_peak']:.0f}%)" if c in row else ""
                    for c in ("nchw", "channels_last", "fused", "fused_kept")]
            gain = (f"{row['fused_kept']['images_per_s'] / row['nchw']['images_per_s']:.2f}x"
                    if "fused_kept" in row and "nchw" in row else "")
            of_top = (f"{100 * row['fused_kept']['images_per_s'] * d['gflop_per_image_train_step'][str(size)] / top:.0f}%"
                      if "fused_kept" in row and top else "")
            out.append(f"| {size} | {batch} | " + " | ".join(text) + f" | {gain} | {of_top} | "
                       f"{_rss(row, 'fused_kept', 'fused')} |")
    out.append(f"\n`python benchmarks/{d['command']}`\n")
    ae = read_results(results, "speed_autoencoder_kernels")
    if "fused_kept" in ae:
        steps = ", ".join(f"{k} {ae[k]['seconds_per_step']:.3f} s" for k in ("nchw", "fused", "fused_kept"))
        out.append(f"Autoencoder training step (128 px crops, batch {ae['batch']}, L1, bf16, {ae['threads']} thread): "
                   f"{steps}; default vs NCHW {ae['speedup']:.2f}x (`python benchmarks/{ae['command']}`)\n")
    return _text(out)


def fused_generate_table(results: Path = RESULTS) -> str:
    """End-to-end generate runs, one row per results/fused_generate*.json."""
    files = sorted(Path(results).glob("fused_generate*.json"))
    if not files:
        raise MissingResults(f"{results}/fused_generate*.json: not found (run benchmarks/bench_fused_generate.py)")
    out: list[str] = []
    out.append("| model | images | before (autocast, fp32 decoding) | PyTorch kernels, bf16 weights and decoding | fused, "
               "glibc's default allocator | fused, freed memory kept (default) | default vs before | default's images vs "
               "before: median PSNR, largest difference |")
    out.append("|---|---|---|---|---|---|---|---|")
    for path in files:
        d = json.loads(path.read_text())
        name = path.stem.removeprefix("fused_generate").lstrip("_") or "-"
        cell = lambda k: f"{d[k]['seconds_per_image']:.3f} s/image" if k in d else ""  # noqa: E731
        agree = d.get("agreement_fused_vs_before", {})
        agree_text = (f"{agree['psnr_db_median']:.1f} dB, {agree['max_abs_diff_grey_levels']:.0f} grey levels"
                      if agree else "")
        gain = f"{d['speedup_vs_before']:.2f}x" if "speedup_vs_before" in d else ""
        out.append(f"| {name} | {d['fused']['images']} | {cell('before')} | {cell('pytorch')} | {cell('fused_system_malloc')} "
                   f"| {cell('fused')} | {gain} | {agree_text} |")
    out.append(f"\n`python benchmarks/{d['command']}` (wall time per process, {d['threads']} thread, model loading and "
               f"image writing included)\n")
    return _text(out)


DISTIL_ROWS = [("teacher, DDIM 4 (leading spacing)", "demo", "ddim", 4), ("teacher, DPM-Solver++ 4", "demo", "dpm++", 4),
               ("teacher, DDIM 25", "demo", "ddim", 25), ("teacher, DPM-Solver++ 25", "demo", "dpm++", 25),
               ("teacher, DDPM 25 (generate's default)", "demo", "ddpm", 25),
               ("**student, DDIM 4 (trailing)**", "demo-distil4", "ddim", 4)]


def distil_table(results: Path = RESULTS) -> str:
    """docs/speed.md's few-step table: the phantom rows of results/steps.json for the teacher and its 4-step student."""
    d = read_results(results, "steps")
    out = ["| sampler | network evaluations | PSNR dB | Dice lung / heart | nodules found, contrast | texture distance | "
           "CPU s / image |", "|---|---|---|---|---|---|---|"]
    for label, model, scheduler, steps in DISTIL_ROWS:
        r = next(r for r in d["rows"] if (r["model"], r["scheduler"], r["steps"]) == (model, scheduler, steps))
        cells = [str(steps), f"{r['psnr']:.2f}", _dice(r, ["lung", "heart"]), _nodules(r),
                 f"{r['spectrum_distance']:.3f}", f"{r['cpu_seconds_per_image']:.3f}"]
        if label.startswith("**"):
            cells = [f"**{c}**" for c in cells]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    real = d["models"]["demo"]["real_test_images"]
    out.append(f"| real test images | | | {_dice(real, ['lung', 'heart'])} | {_nodules(real)} | "
               f"{real['spectrum_distance']:.0f} | |")
    return _text(out)


SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++": "DPM-Solver++", "unipc": "UniPC", "euler": "Euler"}


def _sampler_name(name: str) -> str:
    """``dpm++ 25`` -> ``DPM-Solver++ 25``; the peer's ``monai DDIM 50`` -> ``DDIM 50``."""
    kind, _, steps = name.removeprefix("monai ").rpartition(" ")
    return f"{SAMPLER_NAMES.get(kind, kind)} {steps}"


def peer_summary(results: Path, name: str, samplers: dict[str, str]) -> str:
    """docs/results.md's short peer table from results/NAME.json: the peer and the named maskray samplers (the
    dict's values are fixed notes after the sampler's name, such as "(default)")."""
    d = read_results(results, name)
    real, floor = d["real_test_images"]["dice"]["lung"], d["realism_floor_real_test"]["features"]["fid"]
    out = ["| | steps (base + CN) | train img/CPU-s (base / CN) | sampler | CPU s / image | PSNR dB | SSIM | "
           f"lung Dice (real {real:.3f}) | FID (floor {floor:.2f}) |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [("MONAI tutorial build", d["peer"], d["peer"]["sampler"], "", d["peer"]["scores"])]
    rows += [("maskray", d["maskray"], k, note, d["maskray"]["samplers"][k]) for k, note in samplers.items()]
    for who, e, sampler, note, sc in rows:
        tput = e["train_images_per_cpu_s"]
        out.append(f"| {who} | {e['base']['steps']} + {e['controlnet']['steps']} | {tput['base']:.1f} / "
                   f"{tput['controlnet']:.1f} | {(_sampler_name(sampler) + ' ' + note).strip()} | "
                   f"{sc['cpu_seconds_per_image']:.3f} | {sc['psnr']:.2f} | {sc['ssim']:.3f} | {sc['dice']['lung']:.3f} "
                   f"| {sc['realism']['fid']:.2f} |")
    return _text(out)


def peer_summary_64(results: Path = RESULTS) -> str:
    return peer_summary(results, "peer", {"dpm++ 25": "(default then)", "dpm++ 8": ""})


def peer_summary_128(results: Path = RESULTS) -> str:
    return peer_summary(results, "peer_128", {"ddpm 25": "(default)", "dpm++ 8": ""})


def levers_best_table(results: Path = RESULTS) -> str:
    """docs/results.md's summary of results/speed_levers.json: each size's fastest uncompiled training and sampling
    rows, and the compiled sampling row when it is faster still."""
    d = read_results(results, "speed_levers")
    fmt = lambda r: "channels_last" if r["channels_last"] else "NCHW"  # noqa: E731
    out = ["| px | stage-2 training, best | % of peak | sampling, best | % of peak |", "|---|---|---|---|---|"]
    for size in d["sizes"]:
        rows = [r for r in d["rows"] if r["size"] == size]
        plain = [r for r in rows if not r["compile"]]
        tr = max((r for r in plain if "train_images_per_s" in r), key=lambda r: r["train_images_per_s"])
        sa = max(plain, key=lambda r: r["sample_image_steps_per_s"])
        comp = max((r for r in rows if r["compile"]), key=lambda r: r["sample_image_steps_per_s"], default=None)
        faster = comp is not None and comp["sample_image_steps_per_s"] > sa["sample_image_steps_per_s"]
        extra = (f"; batch {comp['batch']} compiled{' with freezing' if comp['freezing'] else ''}: "
                 f"{comp['sample_image_steps_per_s']:.1f}" if faster else "")
        peak = f"{100 * sa['sample_fraction_of_peak']:.0f}%" + (
            f" ({100 * comp['sample_fraction_of_peak']:.0f}%)" if faster else "")
        out.append(f"| {size} | {tr['train_images_per_s']:.1f} img/s (batch {tr['batch']}, {fmt(tr)}) | "
                   f"{100 * tr['train_fraction_of_peak']:.0f}% | {sa['sample_image_steps_per_s']:.1f} image-steps/s "
                   f"(batch {sa['batch']}, {fmt(sa)}{extra}) | {peak} |")
    return _text(out)


def precision_table(results: Path = RESULTS) -> str:
    """docs/results.md's fp32 against bf16 table, results/speed.json (``bench_speed.py``)."""
    d = read_results(results, "speed")
    out = ["| precision | channels_last | stage-2 training img/s | sampling img/s (25 steps) | training % of peak | "
           "sampling % of peak |", "|---|---|---|---|---|---|"]
    for c in d["configs"]:
        out.append(f"| {c['precision']} | {'yes' if c['channels_last'] else 'no'} | {c['train_images_per_s']:.1f} | "
                   f"{c['sample_images_per_s']:.2f} | {100 * c['train_fraction_of_peak']:.0f}% | "
                   f"{100 * c['sample_fraction_of_peak']:.0f}% |")
    return _text(out)


def cpu_precision_table(results: Path = RESULTS) -> str:
    """docs/speed.md's bf16 against fp32 on this CPU, results/cpu_precision.json (``bench_cpu_precision.py``)."""
    d = read_results(results, "cpu_precision")
    r, ratio = d["rows"], d["bf16_time_over_fp32"]
    out = [f"| {d['processor']['model_name']}, {d['threads']} thread(s), {d['size']} px, batch {d['batch']} | fp32 | "
           "bf16 autocast | bf16 time / fp32 time |", "|---|---|---|---|",
           f"| matmul peak (GFLOP/s) | {r['fp32']['matmul_gflops']:.1f} | {r['bf16']['matmul_gflops']:.1f} | "
           f"{r['fp32']['matmul_gflops'] / r['bf16']['matmul_gflops']:.0f}x |"]
    for key, what in (("stage2_train_s_per_step", "stage-2 training step (s)"),
                      ("denoise_s_per_step", "denoising step, UNet + ControlNet (s)"),
                      ("segmenter_train_s_per_step", "segmenter training step (s)")):
        out.append(f"| {what} | {r['fp32'][key]:.2f} | {r['bf16'][key]:.2f} | {ratio[key]:.0f}x |")
    return _text(out)


def main(argv: list[str]) -> int:
    tables = {"steps": steps_table, "peer": peer_table, "peer_128": peer_128_table, "levers": levers_table,
              "profile": profile_table, "kernels": kernels_table, "generate": fused_generate_table}
    for name in argv or list(tables):
        if name not in tables:
            print(f"unknown table '{name}' (allowed: {', '.join(tables)})", file=sys.stderr)
            return 2
        try:
            print(tables[name]() + "\n")
        except MissingResults as e:
            print(e, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
