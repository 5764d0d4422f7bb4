"""maskray downstream: conditions, leakage guard, outputs, nnU-Net export, errors."""

from __future__ import annotations

import dataclasses
import json

from conftest import make_toy_dataset
from test_evaluate import make_real, make_synthetic

from maskray.cli import main
from maskray.evaluation.downstream import DownstreamConfig, _fraction_subsets, run_downstream


def test_fraction_subsets_are_nested_and_seeded():
    ids = [f"c{i}" for i in range(20)]
    a = _fraction_subsets(ids, (0.1, 0.5, 1.0), seed=3)
    assert len(a[0.1]) == 2 and len(a[0.5]) == 10 and a[1.0] == sorted(ids)
    assert set(a[0.1]) <= set(a[0.5])
    assert a == _fraction_subsets(ids, (0.1, 0.5, 1.0), seed=3) and a != _fraction_subsets(ids, (0.1, 0.5, 1.0), 4)


def test_downstream_end_to_end(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    cfg = DownstreamConfig(seeds=2, fractions=(0.5,), steps=4, batch_size=4, export_nnunet=True, threads=1)
    m = run_downstream(real, syn, tmp_path / "out", cfg)
    # 4 of the 12 synthetic cases come from real test masks: never trained on
    assert m["n_synthetic_excluded_test_sources"] == 4 and m["n_synthetic_used"] == 8
    conds = {(r["condition"], r["fraction"]) for r in m["runs"]}
    assert conds == {("real", 0.5), ("real", 1.0), ("real+synthetic", 0.5), ("real+synthetic", 1.0), ("synthetic", 0.0)}
    assert len(m["runs"]) == 10
    half = [r for r in m["runs"] if r["condition"] == "real" and r["fraction"] == 0.5]
    assert all(r["n_real"] == 4 and r["n_synthetic"] == 0 for r in half)
    assert all(r["n_synthetic"] == 8 for r in m["runs"] if r["condition"] == "real+synthetic")
    s = [r for r in m["summary"] if r["condition"] == "real" and r["fraction"] == 1.0 and r["metric"] == "dice_lung"]
    assert s and s[0]["n"] == 2 and 0.0 <= s[0]["mean"] <= 1.0
    # nodule scores as the field reports them: Dice over all images and over images with a nodule, CPM, FROC
    metrics = {r["metric"] for r in m["summary"]}
    assert {"dice_nodule", "dice_present_nodule", "cpm", "sensitivity_at_0.125_fp", "sensitivity_at_8.0_fp"} <= metrics
    assert all(0.0 <= r["cpm"] <= 1.0 and 0.0 <= r["dice"]["nodule"] <= 1.0 for r in m["runs"])
    out = tmp_path / "out"
    assert {"metrics.json", "metrics.csv", "runs.csv", "dice_vs_fraction.png", "froc.png", "report.html", "run.json"} <= {
        p.name for p in out.iterdir()}
    nn = out / "nnunet" / "Dataset901_maskrayrealsynthetic"
    meta = json.loads((nn / "dataset.json").read_text())
    split = json.loads((nn / "splits_final.json").read_text())[0]
    assert meta["numTraining"] == 16 and len(list((nn / "imagesTr").iterdir())) == 16
    assert len(list((nn / "imagesTs").iterdir())) == 4
    assert all(c.startswith("real_") for c in split["val"]) and not set(split["val"]) & set(split["train"])
    assert sum(c.startswith("syn_") for c in split["train"]) == 8  # none made from a real test mask
    assert not any(p.name.startswith("syn_") for p in (nn / "imagesTs").iterdir())


def test_downstream_needs_test_split(tmp_path, capsys):
    real = make_toy_dataset(tmp_path / "real", n=4, size=32)
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    rc = main(["downstream", "--real", str(real), "--synthetic", str(syn), "--out", str(tmp_path / "o"),
               "--steps", "2", "--seeds", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "maskray data split" in err and not (tmp_path / "o").exists()


def test_downstream_rejects_bad_fraction(tmp_path, capsys):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    rc = main(["downstream", "--real", str(real), "--synthetic", str(syn), "--out", str(tmp_path / "o"),
               "--fractions", "0,0.5"])
    assert rc == 2 and "--fractions" in capsys.readouterr().err


def _unknown_source_synthetic(real, root):
    """A synthetic set whose ids match no real case and which has no manifest: every source is unknown."""
    syn = make_synthetic(real, root, samples=1)
    (syn / "manifest.json").unlink()
    return syn


def test_downstream_refuses_unknown_sources_before_training(tmp_path, capsys):
    real = make_real(tmp_path / "real")
    syn = _unknown_source_synthetic(real, tmp_path / "syn")
    rc = main(["downstream", "--real", str(real), "--synthetic", str(syn), "--out", str(tmp_path / "o"),
               "--steps", "1", "--seeds", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and str(syn) in err and "12 synthetic cases" in err and "--allow-unknown-sources" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_downstream_allowed_unknown_sources_are_counted_and_provenance_recorded(tmp_path):
    real = make_real(tmp_path / "real")
    syn = _unknown_source_synthetic(real, tmp_path / "syn")
    (syn / "manifest.json").write_text("{}")  # an empty manifest: hashed, and still no known source
    cfg = DownstreamConfig(seeds=1, fractions=(1.0,), steps=1, batch_size=4, threads=1, allow_unknown_sources=True)
    m = run_downstream(real, syn, tmp_path / "out", cfg)
    assert m["n_synthetic_unknown_source"] == 12 and m["n_synthetic_used"] == 12
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_synthetic_unknown_source"] == 12
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["checkpoint"] == str(syn / "nowhere")  # as the synthetic set's run.json records it
    assert run["synthetic_provenance"]["manifest_sha256"] and run["synthetic_provenance"]["synthetic_run"]
    assert "12 of unknown source" in (tmp_path / "out" / "report.html").read_text()


def test_downstream_checks_out_before_training(tmp_path, capsys, monkeypatch):
    from maskray.evaluation import downstream

    def no_training(*a, **k):
        raise AssertionError("trained before --out was checked")

    monkeypatch.setattr(downstream.Segmenter, "train", no_training)
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("old")
    for out, says in ((tmp_path / "file", "not a folder"), (tmp_path / "full", "--overwrite")):
        rc = main(["downstream", "--real", str(real), "--synthetic", str(syn), "--out", str(out), "--steps", "1"])
        assert rc == 2 and says in capsys.readouterr().err


def test_downstream_failure_keeps_old_results_whole(tmp_path, monkeypatch):
    from maskray.evaluation import downstream

    def fails(*a, **k):
        raise RuntimeError("killed while writing the outputs")

    monkeypatch.setattr(downstream.figures, "froc_points", fails)
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("old")
    try:
        run_downstream(real, syn, tmp_path / "out", DownstreamConfig(seeds=1, fractions=(1.0,), steps=1, batch_size=4,
                                                                     overwrite=True, threads=1))
    except RuntimeError:
        pass
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.json"]
    assert (tmp_path / "out" / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real", "syn"]  # no staging folder left


def test_baseline_runs_are_reused_only_for_the_same_real_pairs_and_settings(tmp_path, capsys):
    real = make_real(tmp_path / "real")
    syn_a = make_synthetic(real, tmp_path / "a", samples=1, seed=1)
    syn_b = make_synthetic(real, tmp_path / "b", samples=1, noise=0.2, seed=2)
    cfg = DownstreamConfig(seeds=1, fractions=(0.5,), steps=3, batch_size=4, threads=1)
    first = run_downstream(real, syn_a, tmp_path / "da", cfg)
    fresh = run_downstream(real, syn_b, tmp_path / "db", cfg)

    def real_dice(m):
        return {(r["fraction"], r["seed"]): r["dice"] for r in m["runs"] if r["condition"] == "real"}

    # the premise: a real-only run does not depend on the synthetic set beside it
    assert real_dice(first) == real_dice(fresh)
    reused = run_downstream(real, syn_b, tmp_path / "dr", dataclasses.replace(cfg, baseline=str(tmp_path / "da")))
    assert reused["baseline_runs_reused"] == 2 and first["baseline_runs_reused"] == 0
    assert real_dice(reused) == real_dice(first)
    alone = run_downstream(real, syn_b, tmp_path / "dn", dataclasses.replace(cfg, baseline=str(tmp_path / "da"),
                                                                           synthetic_alone=False))
    assert {r["condition"] for r in alone["runs"]} == {"real", "real+synthetic"}
    others = [(r["condition"], r["fraction"], r["dice"]) for r in reused["runs"] if r["condition"] != "real"]
    assert others == [(r["condition"], r["fraction"], r["dice"]) for r in fresh["runs"] if r["condition"] != "real"]
    # other settings: the baseline is refused before any training, naming its metrics file
    rc = main(["downstream", "--real", str(real), "--synthetic", str(syn_b), "--out", str(tmp_path / "bad"),
               "--steps", "4", "--seeds", "1", "--fractions", "0.5", "--batch-size", "4", "--threads", "1",
               "--baseline", str(tmp_path / "da")])
    err = capsys.readouterr().err
    assert rc == 2 and "da/metrics.json" in err and "cannot be reused" in err and not (tmp_path / "bad").exists()
    rc = main(["downstream", "--real", str(real), "--synthetic", str(syn_b), "--out", str(tmp_path / "bad"),
               "--steps", "3", "--seeds", "1", "--baseline", str(tmp_path / "nothing")])
    assert rc == 2 and "nothing/metrics.json" in capsys.readouterr().err


def test_workers_give_the_runs_of_one_process(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=1)
    cfg = DownstreamConfig(seeds=1, fractions=(0.5,), steps=3, batch_size=4, threads=1)
    one = run_downstream(real, syn, tmp_path / "one", cfg)
    two = run_downstream(real, syn, tmp_path / "two", dataclasses.replace(cfg, workers=2))

    def key(m):
        return [(r["condition"], r["fraction"], r["seed"], r["dice"], r["per_image"]) for r in m["runs"]]

    assert key(one) == key(two) and len(one["runs"]) == 5


def test_synthetic_per_real_caps_the_pairs_beside_each_fraction(tmp_path):
    real = make_real(tmp_path / "real")
    syn = make_synthetic(real, tmp_path / "syn", samples=2)
    cfg = DownstreamConfig(seeds=1, fractions=(0.5,), steps=2, batch_size=4, threads=1, synthetic_per_real=0.5)
    m = run_downstream(real, syn, tmp_path / "out", cfg)
    n = {(r["condition"], r["fraction"]): (r["n_real"], r["n_synthetic"]) for r in m["runs"]}
    assert n[("real+synthetic", 0.5)] == (4, 2) and n[("real+synthetic", 1.0)] == (8, 4)
    assert n[("synthetic", 0.0)][1] == 16  # the synthetic-only run keeps every pair
