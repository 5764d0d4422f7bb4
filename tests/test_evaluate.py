"""maskray evaluate: baselines, pairing, feature distances, and the CLI end to end on a toy set."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import make_toy_dataset
from maskray.cli import main
from maskray.data.dataset import Dataset, write_case
from maskray.data.schema import write_dataset_info, write_splits
from maskray.measures import distributions as feat
from maskray.evaluation.evaluate import EvaluateConfig, evaluate, label_mean_baseline, mean_image_baseline
from maskray.evaluation.pairs import groups_by_mask, read_manifest


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


FAST = EvaluateConfig(seg_steps=15, reg_steps=15, feature_steps=10, batch_size=8, ks=(1, 2), threads=1)


def test_baselines_are_exact():
    x = torch.tensor([[[[-1.0, 1.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    y = torch.tensor([[[0, 1]], [[0, 1]]])
    assert torch.allclose(mean_image_baseline(x), torch.tensor([[[-0.5, 0.5]]]))
    painted = label_mean_baseline(x, y, torch.tensor([[[1, 1]]]), [0, 1, 2])
    assert torch.allclose(painted, torch.full((1, 1, 1, 2), 0.5))


def test_manifest_pairs_and_fallback(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=3)
    groups = groups_by_mask(read_manifest(Dataset(syn), Dataset(real)))
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
    # every image is a near-copy of its own source, test masks included (an oracle, not a memoriser): images
    # are as close to their training sources as to their test sources, and none copies another training image
    own = m["memorisation"]["own_source"]
    assert abs(own["train_minus_test"]) < 0.05 and own["train_sources"]["mean"] > 0.8
    assert m["memorisation"]["n_flagged"] == 0
    assert m["realism"]["images_per_set"] == 4  # one sample per mask, at the real test set's size
    assert m["diversity"]["within_mask_ms_ssim"]["n"] == 12
    assert "dice" in m["adherence"]["synthetic"] and "detection" in m["adherence"]["synthetic"]
    det = m["adherence"]["real_test_reference"]["detection"]
    assert set(det["froc"]["sensitivity_at"]) == {"0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
    assert np.isfinite(m["realism"]["features"]["floor_real_test"]["fid"])
    assert m["fidelity"]["ssim_true_minus_shuffled"]["clear"]  # near-copies follow their masks
    assert (tmp_path / "out" / "feature_net" / "feature_net.safetensors").is_file()
    out = tmp_path / "out"
    assert {"metrics.json", "metrics.csv", "report.html", "run.json"} <= {p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "perfect sampler" in html and "manifest_sha256" in html
    assert "power-spectrum distance" in html and "CPM" in html and "centre" in html
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
    # evaluate uses it in place of its own feature network, which is then neither trained nor saved
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    import dataclasses

    m = evaluate(real, syn, tmp_path / "out", dataclasses.replace(FAST, feature_weights=path, feature_size=16))
    assert "TorchScript" in m["realism"]["features"]["feature_space"]
    assert "train_feature_net" not in m["timing_s"] and not (tmp_path / "out" / "feature_net").exists()


def test_torch_threads_restores():
    from maskray.measures.segmenter import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_dice_counts_false_positives_on_empty_truth():
    from maskray.evaluation.metrics import dice_summary
    from maskray.measures.mask_check import dice

    truth = torch.zeros(3, 8, 8, dtype=torch.long)
    truth[0, 2:4, 2:4] = 2  # image 0 has a nodule; images 1 and 2 have none
    pred = torch.zeros_like(truth)
    pred[0, 2:4, 2:4] = 2  # found exactly
    pred[1, 5, 5] = 2  # a false positive on an image without nodules
    d = dice(pred, truth, [2])
    assert d[:, 0].tolist() == [1.0, 0.0, 1.0]  # empty/empty = 1, empty truth + prediction = 0, never NaN
    s = dice_summary(pred, truth, {"nodule": 2})["nodule"]
    assert s["all"]["n"] == 3 and abs(s["all"]["mean"] - 2 / 3) < 1e-9
    assert s["present"]["n"] == 1 and s["present"]["mean"] == 1.0
    assert s["false_positive_images"] == 1 and s["empty_truth_images"] == 2


def test_froc_and_cpm_on_a_constructed_case():
    from maskray.measures.detection import detection

    # 2 images, 3 true nodules; candidates with known scores:
    # image 0: hit on nodule A (0.9), a second candidate on A (0.8, ignored), FP (0.7), hit on nodule B (0.3)
    # image 1: FP (0.6); nodule C never found
    truth = torch.zeros(2, 32, 32, dtype=torch.long)
    truth[0, 2:7, 2:7] = 2
    truth[0, 20:25, 20:25] = 2
    truth[1, 10:15, 10:15] = 2
    prob = torch.zeros(2, 32, 32)
    prob[0, 3:5, 3:5] = 0.9
    prob[0, 5:7, 5:7] = 0.8  # second candidate on A: its centre (5.5 -> 6, 6) is inside A
    prob[0, 12:14, 28:30] = 0.7
    prob[0, 21:23, 21:23] = 0.3
    prob[1, 28:30, 2:4] = 0.6
    d = detection(prob, truth, 2, threshold=0.1, operating_point=0.5)
    assert d["lesions"] == 3 and d["found"] == 1 and d["false_positives"] == 2 and d["fp_per_image"] == 1.0
    at = d["froc"]["sensitivity_at"]
    # by falling score: 0.9 hit (1/3 @ 0 FP), 0.7 FP (0.5), 0.6 FP (1.0), 0.3 hit (2/3 @ 1.0)
    assert at["0.125"] == at["0.25"] == at["0.5"] == 1 / 3
    assert at["1.0"] == at["2.0"] == at["4.0"] == at["8.0"] == 2 / 3
    assert abs(d["cpm"] - (3 * (1 / 3) + 4 * (2 / 3)) / 7) < 1e-12
    # a touching-only prediction does not count: its centre lies outside the nodule
    ring = torch.zeros(1, 32, 32)
    ring[0, 10:20, 10:20] = 0.9
    one = torch.zeros(1, 32, 32, dtype=torch.long)
    one[0, 10:12, 10:12] = 2
    assert detection(ring, one, 2)["found"] == 0


def test_summarize_counts_capped_and_undefined_values():
    from maskray.evaluation.metrics import PSNR_CAP_DB, paired_scores, summarize

    s = summarize(torch.tensor([30.0, float("inf"), float("nan")]), cap=PSNR_CAP_DB)
    assert s["n"] == 2 and s["n_capped"] == 1 and s["n_undefined"] == 1 and s["mean"] == (30 + PSNR_CAP_DB) / 2
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    p = paired_scores(x, x.clone())["psnr"]
    assert p["mean"] == PSNR_CAP_DB and p["n_capped"] == 2 and p["n"] == 2


def test_realism_ranks_blurred_behind_real():
    from maskray.evaluation.realism import blur, realism
    from maskray.measures.features import train_feature_net

    g = torch.Generator().manual_seed(0)

    def textured(n):
        ramp = torch.linspace(-0.5, 0.5, 32).view(1, 1, 32, 1).expand(n, 1, 32, 32)
        return (ramp + 0.2 * torch.randn(n, 1, 32, 32, generator=g)).clamp(-1, 1)

    xtr, xte = textured(48), textured(24)
    net = train_feature_net(xtr, steps=30, seed=0, progress=False, widths=(8, 16))
    r = realism(xtr, xte, blur(textured(24)), net.embed, "test")
    ps, f = r["power_spectrum"], r["features"]
    assert ps["synthetic"] > 5 * ps["floor_real_test"] and ps["synthetic_behind_real"]
    assert f["synthetic"]["fid"] > 3 * f["floor_real_test"]["fid"] and f["synthetic_behind_real"]["fid"]
    assert f["synthetic"]["precision"] < f["floor_real_test"]["precision"]


def test_evaluate_reports_provenance_without_following_it(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    ckpt = tmp_path / "elsewhere"
    ckpt.mkdir()
    (ckpt / "planted.safetensors").write_bytes(b"x")
    (syn / "run.json").write_text(json.dumps({"command": "generate", "checkpoint": str(ckpt)}))
    from maskray.evaluation.evaluate import recorded_provenance

    prov = recorded_provenance(Dataset(syn))
    assert prov["checkpoint"] == str(ckpt) and "planted" not in json.dumps(prov)
    (syn / "run.json").write_text("{not json")
    import pytest

    from maskray.errors import MaskrayError

    with pytest.raises(MaskrayError, match="run.json: not valid JSON"):
        recorded_provenance(Dataset(syn))


def test_memoriser_is_caught_both_ways(tmp_path):
    """A 'generator' that returns training images: its own source for a training mask, another training image
    for a test mask. Check (1) flags the test-mask images, check (2) sees the train-minus-test gap."""
    real = make_real(tmp_path / "real")
    ds = Dataset(real)
    train, test = ds.case_ids("train"), ds.case_ids("test")
    root, manifest = tmp_path / "syn", {}
    for i, cid in enumerate(train + test):
        copy = cid if cid in train else train[i % len(train)]
        write_case(root, f"syn_{cid}", (ds.image(copy)[0].numpy() + 1) / 2, ds.label(cid).numpy())
        manifest[f"syn_{cid}"] = {"source_case": cid, "seed": i, "sample": 0}
    write_dataset_info(root, ds.info, len(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest))
    m = evaluate(real, root, tmp_path / "out", FAST)["memorisation"]
    assert m["n_flagged"] == len(test)
    assert m["own_source"]["train_minus_test"] > 0.3


def test_samples_are_grouped_by_mask_and_only_unedited_full_images_are_paired(tmp_path):
    """One real test case, three masks made from it (itself, an edited copy, a region-preserving image): three
    groups; paired fidelity scores only the unedited, fully generated one, and says why the others were not."""
    real = make_real(tmp_path / "real")
    ds = Dataset(real)
    t = ds.case_ids("test")[0]
    img, lab = (ds.image(t)[0].numpy() + 1) / 2, ds.label(t).numpy()
    edited = lab.copy()
    edited[2:6, 2:6] = 1
    root, manifest = tmp_path / "syn", {}
    for name, label, mode, samples in (("same", lab, "full", 2), ("edit", edited, "full", 2),
                                       ("inpaint", lab, "region-preserving", 1)):
        for k in range(samples):
            write_case(root, f"{name}_{k}", img, label)
            manifest[f"{name}_{k}"] = {"source_case": t, "mask_case": f"m_{name}", "sample": k, "seed": k,
                                       "mode": mode}
    write_dataset_info(root, ds.info, len(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest))
    groups = groups_by_mask(read_manifest(Dataset(root), ds))
    assert groups == {"m_edit": ["edit_0", "edit_1"], "m_inpaint": ["inpaint_0"], "m_same": ["same_0", "same_1"]}
    m = evaluate(real, root, tmp_path / "out", FAST)
    f = m["fidelity"]
    assert f["n_masks"] == 1
    assert f["masks_not_paired"] == {"source_not_in_test_split": 0, "mask_differs_from_source": 1,
                                     "region_preserving": 1}
    assert m["diversity"]["within_mask_ms_ssim"]["n"] == 2  # two masks have two samples each
    assert m["realism"]["images_per_set"] == 3  # one per mask


def test_realism_scores_both_sets_at_the_same_size():
    from maskray.evaluation.realism import realism

    g = torch.Generator().manual_seed(0)
    xtr, xte, xs = (torch.rand(n, 1, 16, 16, generator=g) * 2 - 1 for n in (20, 6, 15))
    r = realism(xtr, xte, xs, lambda x: x.flatten(1)[:, :8], "test")
    assert r["images_per_set"] == 6
    r = realism(xtr, xte, xs[:4], lambda x: x.flatten(1)[:, :8], "test")
    assert r["images_per_set"] == 4
