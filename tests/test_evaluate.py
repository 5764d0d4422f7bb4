"""maskray evaluate: baselines, pairing, feature distances, and the CLI end to end on a toy set."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import make_toy_dataset
from maskray.cli import main
from maskray.data.layout import Dataset, write_case, write_dataset_info, write_splits
from maskray.evaluation import features as feat
from maskray.evaluation.evaluate import EvaluateConfig, evaluate, label_mean_baseline, mean_image_baseline
from maskray.evaluation.pairs import groups_by_source, read_manifest


def make_real(root, n=12, size=32):
    make_toy_dataset(root, n=n, size=size, seed=0)
    ids = sorted(Dataset(root).cases)
    write_splits(root, {"train": ids[: n - 4], "val": [], "test": ids[n - 4:]})
    return root


def make_synthetic(real_root, root, samples=2, noise=0.05, seed=1):
    """'Synthetic' images: the real image of each mask plus noise, several samples per mask, with a manifest."""
    real = Dataset(real_root)
    rng = np.random.default_rng(seed)
    manifest = {}
    for cid in sorted(real.cases):
        img = (real.image(cid)[0].numpy() + 1) / 2
        for k in range(samples):
            sid = f"syn_{cid}_{k}"
            write_case(root, sid, np.clip(img + noise * rng.standard_normal(img.shape), 0, 1), real.label(cid).numpy())
            manifest[sid] = {"source_case": cid, "seed": 100 + k, "sample": k}
    write_dataset_info(root, real.info, len(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "run.json").write_text(json.dumps({"command": "generate", "checkpoint": str(root / "nowhere")}))
    return root


FAST = EvaluateConfig(seg_steps=15, reg_steps=15, batch_size=8, ks=(1, 2), threads=1)


def test_baselines_are_exact():
    x = torch.tensor([[[[-1.0, 1.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    y = torch.tensor([[[0, 1]], [[0, 1]]])
    assert torch.allclose(mean_image_baseline(x), torch.tensor([[[-0.5, 0.5]]]))
    painted = label_mean_baseline(x, y, torch.tensor([[[1, 1]]]), [0, 1, 2])
    assert torch.allclose(painted, torch.full((1, 1, 1, 2), 0.5))


def test_manifest_pairs_and_fallback(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=3)
    groups = groups_by_source(read_manifest(Dataset(syn), Dataset(real)))
    assert groups["case000"] == ["syn_case000_0", "syn_case000_1", "syn_case000_2"]
    (syn / "manifest.json").unlink()
    same_ids = make_toy_dataset(tmp_path / "same", n=3, size=32, seed=5)
    cases = read_manifest(Dataset(same_ids), Dataset(real))
    assert cases["case001"].source_case == "case001"


def test_feature_distances_behave():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    far = b + 3.0
    assert feat.fid(a, b) < 1.0 < feat.fid(a, far)
    assert feat.kid(a, b)["mean"] < feat.kid(a, far)["mean"]
    pr = feat.precision_recall(a, b)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    assert feat.precision_recall(a, far)["precision"] < 0.2


def test_nearest_by_ssim_finds_a_copy():
    torch.manual_seed(0)
    pool = torch.rand(10, 1, 32, 32) * 2 - 1
    idx, sim = feat.nearest_by_ssim(pool[[3, 7]], pool)
    assert idx.tolist() == [3, 7] and torch.allclose(sim, torch.ones(2), atol=1e-4)


def test_evaluate_end_to_end(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=2, noise=0.03)
    m = evaluate(real, syn, tmp_path / "out", FAST)
    f = m["fidelity"]
    assert f["n_masks"] == 4
    # near-copies of the real image must beat the mask-only baselines and the shuffled-mask control
    assert f["synthetic"]["psnr"]["mean"] > f["baselines"]["mean_training_image"]["psnr"]["mean"]
    assert f["synthetic"]["psnr"]["mean"] > f["shuffled_masks"]["psnr"]["mean"] + 3
    assert f["mean_of_2_samples"]["psnr"]["mean"] > f["mean_of_1_samples"]["psnr"]["mean"]  # noise averages out
    bound = f["perfect_sampler_bound"]["psnr"]["mean"]
    assert abs(f["baselines"]["regression_posterior_mean"]["psnr"]["mean"] - 3.0103 - bound) < 1e-3
    # near-copies of training images are flagged as memorised
    assert m["memorisation"]["n_flagged"] > 0
    assert m["diversity"]["within_mask_ms_ssim"]["n"] == 12
    assert "dice" in m["adherence"]["synthetic"] and "detection" in m["adherence"]["synthetic"]
    assert np.isfinite(m["realism"]["floor_real_test_vs_real_train"]["fid"])
    out = tmp_path / "out"
    assert {"metrics.json", "metrics.csv", "report.html", "run.json"} <= {p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "perfect sampler" in html and "manifest_sha256" in html
    assert "fidelity,baselines/mean_training_image,psnr" in (out / "metrics.csv").read_text()


def test_cli_errors_are_one_line(tmp_path, capsys):
    real = make_toy_dataset(tmp_path / "real", n=4, size=32)  # no test split
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    assert main(["evaluate", "--real", str(real), "--synthetic", str(syn), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "maskray data split" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_feature_weights_torchscript(tmp_path):
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)

    path = tmp_path / "ext.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(path))
    ext = feat.TorchScriptExtractor(path, size=16)
    f = ext.features(torch.zeros(3, 1, 32, 32))
    assert f.shape == (3, 2) and torch.allclose(f[:, 0], torch.full((3,), 0.5))


def test_torch_threads_restores():
    from maskray.evaluation.segmenter import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
