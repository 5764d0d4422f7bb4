"""Bootstrap intervals and paired tests of the utility study, on cases whose answer is known."""

import numpy as np

from maskray.evaluation.intervals import bootstrap_cpm, bootstrap_mean, paired_cpm, paired_difference, study_intervals


def test_constant_scores_have_a_point_interval():
    lo, hi = bootstrap_mean(np.full(30, 0.7))
    assert abs(lo - 0.7) < 1e-12 and abs(hi - 0.7) < 1e-12


def test_interval_covers_the_mean_and_shrinks_with_more_images():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.1, 20), rng.normal(0.5, 0.1, 2000)
    lo, hi = bootstrap_mean(small)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_mean(large)
    assert hi2 - lo2 < (hi - lo) / 5


def test_paired_difference_sees_a_shift_and_no_shift():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.3, 0.9, 40)
    same = paired_difference(a, a)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_wilcoxon"] == 1.0
    up = paired_difference(a + 0.05 + rng.normal(0, 0.01, 40), a)
    assert up["ci95"][0] > 0 and up["p_wilcoxon"] < 1e-6


def test_cpm_of_a_perfect_detector_is_one_everywhere():
    perfect = ([[(0.9, True)], [], [(0.8, True)]], [1, 0, 1])
    out = bootstrap_cpm([perfect, perfect])
    assert out["mean"] == 1.0 and out["ci95"] == [1.0, 1.0]  # every resample with a lesion: found, no FP
    blind = ([[], [], []], [1, 0, 1])
    d = paired_cpm([blind], [perfect])
    assert d["mean"] == -1.0 and d["ci95"] == [-1.0, -1.0]


def test_study_intervals_pairs_each_condition_with_real_at_its_fraction():
    def run(cond, f, seed, dice):
        return {"condition": cond, "fraction": f, "seed": seed,
                "per_image": {"dice": {"nodule": dice}, "candidates": [[(0.9, True)], []], "lesions": [1, 0]}}
    runs = [run("real", 0.1, s, [0.2, 0.4]) for s in (0, 1)] + [run("real+synthetic", 0.1, s, [0.5, 0.7])
                                                                 for s in (0, 1)]
    rows = {r["condition"]: r for r in study_intervals(runs)}
    assert abs(rows["real"]["dice_nodule"]["mean"] - 0.3) < 1e-12 and "vs_real" not in rows["real"]["dice_nodule"]
    vs = rows["real+synthetic"]["dice_nodule"]["vs_real"]
    assert abs(vs["mean"] - 0.3) < 1e-12 and abs(vs["ci95"][0] - 0.3) < 1e-12
    assert rows["real+synthetic"]["cpm"]["vs_real"]["mean"] == 0.0
