"""The per-image mask check (measures/mask_check.py), its checker folder, `train checker` and `generate --check`."""

import json

import numpy as np
import pytest
import torch

from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.errors import MaskrayError
from maskray.measures.detection import detection
from maskray.measures.mask_check import Checker, CheckerPanel, CheckRule, dice, summarize_checks
from maskray.measures.segmenter import Segmenter, SegmenterConfig
from maskray.pipelines.checked import CheckedBatches
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.checker import CheckerConfig, load_pairs, train_checker
from maskray.training.trainer import TrainConfig, train

LABELS = {"background": 0, "lung": 1, "nodule": 2}


class _Painted:
    """A segmenter stand-in whose probabilities are the one-hot of a given label map (what a perfect one says)."""

    values = [0, 1, 2]

    def __init__(self, maps: torch.Tensor):
        self.maps = maps

    def probabilities(self, images):
        return torch.nn.functional.one_hot(self.maps, 3).permute(0, 3, 1, 2).float()

    def labels_from(self, p):
        return torch.as_tensor(self.values)[p.argmax(1)]


def _mask(nodules=((8, 8),), lung=True) -> torch.Tensor:
    m = torch.zeros(32, 32, dtype=torch.int64)
    if lung:
        m[4:28, 4:14] = 1
        m[4:28, 18:28] = 1
    for r, c in nodules:
        m[r - 1:r + 2, c - 1:c + 2] = 2
    return m


def test_check_on_known_cases():
    asked = torch.stack([_mask(), _mask(), _mask(nodules=()), _mask()])
    shown = torch.stack([_mask(),                       # as asked: passes
                         _mask(nodules=()),             # the asked-for nodule is missing
                         _mask(nodules=((20, 22),)),    # a nodule where the mask has none
                         _mask(lung=False)])            # no lungs at all (and the nodule on background)
    checker = Checker(_Painted(shown), LABELS, 32, CheckRule(min_dice=0.8))
    recs = checker.check(torch.zeros(4, 1, 32, 32), asked)
    assert [r["passed"] for r in recs] == [True, False, False, False]
    assert recs[0] == {"dice": {"lung": 1.0}, "lesions": 1, "found": 1, "false_lesions": 0, "false_score": 0.0,
                       "passed": True, "failures": []}
    assert recs[1]["found"] == 0 and recs[1]["failures"] == ["1 of 1 nodules not found"]
    assert recs[2]["false_lesions"] == 1 and recs[2]["failures"] == ["1 false nodule(s)"]
    assert recs[3]["dice"]["lung"] == 0.0 and "lung Dice 0.000 < 0.8" in recs[3]["failures"]
    s = summarize_checks(recs)
    assert (s["passed"], s["lesions"], s["found"], s["false_lesions_per_image"]) == (1, 3, 2, 0.25)
    assert (s["failed_missed"], s["failed_false"], s["failed_dice"]) == (1, 1, 1)


class _Faint(_Painted):
    """As :class:`_Painted`, plus a faint nodule-like spot (probability 0.3) at a given place."""

    def __init__(self, maps, spot):
        super().__init__(maps)
        self.spot = spot

    def probabilities(self, images):
        p = super().probabilities(images)
        r, c = self.spot
        p[:, 2, r - 1:r + 2, c - 1:c + 2] = 0.3
        p[:, 1, r - 1:r + 2, c - 1:c + 2] = 0.7
        return p


def test_faint_spot_fails_only_below_the_false_operating_point():
    asked = torch.stack([_mask()])
    faint = _Faint(asked.clone(), (20, 22))  # as asked, and a 0.3 spot where the mask has none
    assert Checker(faint, LABELS, 32, CheckRule()).check(torch.zeros(1, 1, 32, 32), asked)[0]["passed"]
    rec = Checker(faint, LABELS, 32, CheckRule(false_operating_point=0.25)).check(torch.zeros(1, 1, 32, 32), asked)[0]
    assert (rec["passed"], rec["found"], rec["false_lesions"]) == (False, 1, 1)
    # the asked-for nodule itself still counts from the operating point, not the lower one
    inside = _Faint(asked.clone(), (8, 8))
    inside.maps[0][inside.maps[0] == 2] = 1  # only a 0.3 spot where the nodule was asked for
    rec = Checker(inside, LABELS, 32, CheckRule(false_operating_point=0.25)).check(torch.zeros(1, 1, 32, 32), asked)[0]
    assert (rec["found"], rec["false_lesions"]) == (0, 0)
    # below evaluate's candidate threshold (0.1) the false spots get a pass of their own; found ones keep 0.1's
    fainter = _Faint(asked.clone(), (20, 22))
    fainter.probabilities = lambda images, f=fainter: _Faint.probabilities(f, images).mul_(
        torch.where(torch.arange(32).view(1, 1, 1, 32) > 16, 0.25, 1.0))  # the spot at 0.075
    rec = Checker(fainter, LABELS, 32, CheckRule(false_operating_point=0.05)).check(torch.zeros(1, 1, 32, 32), asked)[0]
    assert (rec["found"], rec["false_lesions"], rec["false_score"]) == (1, 1, pytest.approx(0.075, abs=1e-4))
    assert Checker(fainter, LABELS, 32, CheckRule()).check(torch.zeros(1, 1, 32, 32), asked)[0]["false_score"] == 0


def test_a_panel_passes_only_what_every_checker_passes():
    from maskray.measures.mask_check import CheckerPanel

    asked = torch.stack([_mask(), _mask(), _mask()])
    one = Checker(_Painted(torch.stack([_mask(), _mask(nodules=((8, 8), (20, 22))), _mask()])), LABELS, 32)
    two = Checker(_Painted(torch.stack([_mask(), _mask(), _mask(nodules=())])), LABELS, 32)
    recs = CheckerPanel([one, two]).check(torch.zeros(3, 1, 32, 32), asked)
    assert [r["passed"] for r in recs] == [True, False, False]
    assert recs[1]["false_lesions"] == 1 and recs[1]["failures"] == ["checker 1: 1 false nodule(s)"]
    assert recs[2]["found"] == 0 and recs[2]["failures"] == ["checker 2: 1 of 1 nodules not found"]
    with pytest.raises(MaskrayError, match="share their labels"):
        CheckerPanel([one, Checker(one.segmenter, {**LABELS, "heart": 3}, 32)])


def test_dice_known_values():
    t = torch.tensor([[[1, 1, 0, 0]]])
    p = torch.tensor([[[1, 0, 0, 0]]])
    assert torch.allclose(dice(p, t, [1, 2]), torch.tensor([[2 / 3, 1.0]]))  # empty truth and prediction: 1


def _tiny_segmenter(ds, steps=30):
    xs, ys = load_pairs(ds, ds.case_ids(), 32)
    cfg = SegmenterConfig(features=(4, 4, 8, 8, 8, 4), steps=steps, batch_size=4, bf16=False, channels_last=False)
    return Segmenter.train(xs, ys, [0, 1, 2], cfg), xs, ys


def test_the_check_sums_to_what_evaluate_reports(toy_dataset):
    """Summed over a set, the check's figures are evaluate's: found and false positives at the operating point,
    and the mean Dice over all images."""
    from maskray.evaluation.metrics import dice_summary

    seg, xs, ys = _tiny_segmenter(Dataset(toy_dataset))
    recs = Checker(seg, LABELS, 32, CheckRule(operating_point=0.3)).check(xs, ys)
    probs = seg.probabilities(xs)
    det = detection(probs[:, 2], ys, 2, operating_point=0.3)
    assert sum(r["found"] for r in recs) == det["found"]
    assert sum(r["false_lesions"] for r in recs) == det["false_positives"]
    summary = dice_summary(seg.labels_from(probs), ys, {"lung": 1, "nodule": 2})
    assert np.mean([r["dice"]["lung"] for r in recs]) == pytest.approx(summary["lung"]["all"]["mean"], abs=1e-4)


def test_checker_folder_round_trip_and_tampering(toy_dataset, tmp_path):
    seg, xs, _ = _tiny_segmenter(Dataset(toy_dataset), steps=3)
    Checker(seg, LABELS, 32).save(tmp_path / "ck")
    back = Checker.load(tmp_path / "ck")
    assert back.labels == LABELS and back.rule == CheckRule()
    assert torch.allclose(back.segmenter.probabilities(xs), seg.probabilities(xs), atol=1e-6)
    assert Checker.load(tmp_path / "ck", CheckRule(min_dice=0.5)).rule.min_dice == 0.5
    from maskray.pipelines.checked import open_checker

    opened = open_checker(str(tmp_path / "ck"), 0.1, None, 32, LABELS)  # --check-min-dice 0.1
    assert opened.rule == CheckRule(min_dice=0.1)
    Checker(seg, LABELS, 32, CheckRule(min_dice=0.5)).save(tmp_path / "ck2")
    panel = open_checker(f"{tmp_path / 'ck'},{tmp_path / 'ck2'}", 0.1, None, 32, LABELS, 0.2)  # one rule for both
    assert [m.rule for m in panel.members] == [CheckRule(min_dice=0.1, false_operating_point=0.2)] * 2
    with pytest.raises(MaskrayError, match="different rules"):
        open_checker(f"{tmp_path / 'ck'},{tmp_path / 'ck2'}", None, None, 32, LABELS)
    with pytest.raises(MaskrayError, match="different rules"):  # built directly, too
        CheckerPanel([Checker.load(tmp_path / "ck"), Checker.load(tmp_path / "ck2")])
    with pytest.raises(MaskrayError, match="works at 32 px"):
        open_checker(str(tmp_path / "ck"), None, None, 64, LABELS)
    with pytest.raises(MaskrayError, match="labels \\['heart'\\]"):
        open_checker(str(tmp_path / "ck"), None, None, 32, {**LABELS, "heart": 3})
    with open(tmp_path / "ck" / "checker.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(MaskrayError, match="does not match the hash"):
        Checker.load(tmp_path / "ck")
    with pytest.raises(MaskrayError, match="not a checker folder"):
        Checker.load(tmp_path)


def test_a_segresnet_checker_round_trips_as_its_own_class(toy_dataset, tmp_path):
    """`--network segresnet` trains MONAI's SegResNet (a judge of another class); its folder rebuilds that class."""
    from monai.networks.nets import SegResNet

    xs, ys = load_pairs(Dataset(toy_dataset), Dataset(toy_dataset).case_ids(), 32)
    cfg = SegmenterConfig(features=(4, 4, 8, 8, 8, 4), steps=3, batch_size=4, bf16=False, channels_last=False,
                          network="segresnet")
    seg = Segmenter.train(xs, ys, [0, 1, 2], cfg)
    Checker(seg, LABELS, 32).save(tmp_path / "ck")
    back = Checker.load(tmp_path / "ck")
    assert back.segmenter.cfg.network == "segresnet" and isinstance(back.segmenter.net.unet, SegResNet)
    assert torch.allclose(back.segmenter.probabilities(xs), seg.probabilities(xs), atol=1e-6)
    with pytest.raises(ValueError, match="unknown segmenter network"):
        Segmenter.train(xs, ys, [0, 1, 2], SegmenterConfig(steps=1, network="vnet"))


def test_redrawn_until_it_passes_then_given_up(tmp_path):
    """The loop: a case is redrawn with its next attempt until it passes; after the last attempt it is given up
    (not written, or written as its best attempt)."""

    class Judge:  # passes case "a" from attempt 2 on, never case "b"
        def check(self, imgs, labs):
            return [{"passed": bool(i[0, 0, 0] >= 2 and i[0, 0, 1] == 0),
                     "failures": [] if i[0, 0, 0] >= 2 and i[0, 0, 1] == 0 else ["x"] * int(3 - min(i[0, 0, 0], 2))}
                    for i in imgs]

    items = [("a", "a", 0), ("b", "b", 0)]
    for keep in (False, True):
        out = tmp_path / f"keep{keep}"
        written = {}

        def draw(batch):
            imgs = [torch.tensor([[[float(t), float(item[0] == "b")]]]) for item, t in batch]
            return [torch.zeros(1, 1, dtype=torch.int64)] * len(batch), imgs

        class Bar:
            n = 0

            def update(self, k):
                Bar.n += k

        CheckedBatches(out, Judge(), torch.arange(3), tries=4, keep_failed=keep).run(
            items, 2, draw, lambda item, img, lab: written.setdefault(item[0], img), Bar())
        ra = json.loads((out / ".check" / "a.json").read_text())
        rb = json.loads((out / ".check" / "b.json").read_text())
        assert (ra["outcome"], ra["attempts"], ra["written_attempt"]) == ("resampled", 3, 2)
        assert written["a"][0, 0, 0] == 2 and Bar.n == 2
        assert (rb["outcome"], rb["attempts"], rb["written"]) == ("given_up", 4, keep)
        assert ("b" in written) == keep
        if keep:  # its best attempt: the one with the fewest failures (attempt 2 or later; the first of them)
            assert rb["written_attempt"] == 2 and written["b"][0, 0, 0] == 2


TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=100)


def test_train_checker_then_generate_check(toy_dataset, tmp_path):
    """A barely trained model draws no nodule: every case whose mask asks for one fails the check and is given
    up; with --check-keep-failed and one try the images are the unchecked run's, byte for byte, and flagged."""
    ck = tmp_path / "ck"
    assert main(["train", "checker", "--data", str(toy_dataset), "--out", str(ck), "--image-size", "32",
                 "--steps", "150", "--batch-size", "4", "--eval-split", "train", "--operating-point", "0.3"]) == 0
    report = json.loads((ck / "report.json").read_text())
    assert report["images"] == 6 and 0 <= report["passed"] <= 6 and "sensitivity" in report
    assert json.loads((ck / "run.json").read_text())["command"] == "train checker"
    from conftest import assert_stage_saves
    assert_stage_saves("checker", ck)
    base, cn = tmp_path / "base", tmp_path / "cn"
    train(TrainConfig(data=str(toy_dataset), out=str(base), steps=2, **TINY), "base", progress=False)
    train(TrainConfig(data=str(toy_dataset), out=str(cn), steps=2, base=str(base), **TINY), "controlnet",
          progress=False)
    kw = dict(model=str(cn), masks=str(toy_dataset), steps=2, batch_size=4, precision="no")
    # a 2-step model draws noise: no asked-for nodule is found and every case is given up
    with pytest.raises(MaskrayError, match="no image passed the check"):
        generate(GenerateConfig(out=str(tmp_path / "gen"), check=str(ck), check_tries=2, **kw), progress=False)
    check = json.loads((tmp_path / "gen" / "check.json").read_text())
    assert (check["cases"], check["given_up"], check["written"], check["attempts"]) == (6, 6, 0, 12)
    nodule_cases = [c for c in Dataset(toy_dataset).case_ids() if (Dataset(toy_dataset).label(c) == 2).any()]
    for c in nodule_cases:  # the records keep what failed
        rec = json.loads((tmp_path / "gen" / ".check" / f"{c}.json").read_text())
        assert rec["attempts"] == 2 and "1 of 1 nodules not found" in rec["failures"] and not rec["written"]
    assert not list((tmp_path / "gen" / "imagesTr").glob("*.png"))
    # one try, failures kept: the same bytes as without the check
    generate(GenerateConfig(out=str(tmp_path / "plain"), **kw), progress=False)
    generate(GenerateConfig(out=str(tmp_path / "kept"), check=str(ck), check_tries=1, check_keep_failed=True, **kw),
             progress=False)
    for c in Dataset(toy_dataset).case_ids():
        assert (tmp_path / f"plain/imagesTr/{c}_0000.png").read_bytes() == \
            (tmp_path / f"kept/imagesTr/{c}_0000.png").read_bytes()
    kept = json.loads((tmp_path / "kept" / "manifest.json").read_text())["cases"]
    assert len(kept) == 6 and {c for c, m in kept.items() if not m["check"]["passed"]} >= set(nodule_cases)
    assert all(m["check"]["outcome"] == "given_up" for c, m in kept.items() if c in nodule_cases)
    assert json.loads((tmp_path / "kept" / "run.json").read_text())["check"]["rejected_share"] >= 0.5
    # a checker of another size is refused before anything is drawn
    assert main(["generate", "--model", str(cn), "--masks", str(toy_dataset), "--out", str(tmp_path / "bad"),
                 "--check", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "bad" / "imagesTr").exists() or not list((tmp_path / "bad" / "imagesTr").iterdir())


def test_train_checker_bad_input(tmp_path, toy_dataset):
    with pytest.raises(MaskrayError, match="multiple of 16"):
        train_checker(CheckerConfig(data=str(toy_dataset), out=str(tmp_path / "x"), image_size=30))
    assert not (tmp_path / "x").exists()


def test_select_best_writes_the_faintest_passing_attempt(tmp_path):
    """--check-select best: every attempt is drawn and the passing one with the faintest false spot is written;
    a case stops at the first attempt with no spot at all; first keeps the first passing attempt."""

    class Judge:  # image value = attempt; case "a" passes at every attempt with false scores 0.4, 0.2, 0.3, 0.25;
        # case "z" passes with no spot from attempt 1 on
        scores = {"a": [0.4, 0.2, 0.3, 0.25], "z": [0.5, 0.0, 0.0, 0.0]}

        def check(self, imgs, labs):
            out = []
            for i in imgs:
                case = "a" if i[0, 0, 1] == 0 else "z"
                out.append({"passed": True, "failures": [], "false_score": self.scores[case][int(i[0, 0, 0])]})
            return out

    def draw(batch):
        imgs = [torch.tensor([[[float(t), float(item[0] == "z")]]]) for item, t in batch]
        return [torch.zeros(1, 1, dtype=torch.int64)] * len(batch), imgs

    class Bar:
        def update(self, k):
            pass

    items = [("a", "a", 0), ("z", "z", 0)]
    for select, want_a, want_z in (("best", (1, 4), (1, 2)), ("first", (0, 1), (0, 1))):
        out, written = tmp_path / select, {}
        CheckedBatches(out, Judge(), torch.arange(3), tries=4, keep_failed=False, select=select).run(
            items, 2, draw, lambda item, img, lab: written.setdefault(item[0], img), Bar())
        for case, (attempt, attempts) in (("a", want_a), ("z", want_z)):
            rec = json.loads((out / ".check" / f"{case}.json").read_text())
            assert (rec["written_attempt"], rec["attempts"]) == (attempt, attempts)
            assert written[case][0, 0, 0] == attempt
    with pytest.raises(MaskrayError, match="--check-select 'most'"):
        CheckedBatches(tmp_path / "bad", Judge(), torch.arange(3), tries=4, keep_failed=False, select="most")


def test_false_score_is_the_strongest_spot_outside_the_asked_for_nodules():
    """As asked plus a 0.3 spot where the mask has none: false_score 0.3 and the image still passes (the spot is
    under the operating point); as asked alone: 0; a panel of both reports the larger."""
    from maskray.measures.mask_check import CheckerPanel
    asked = torch.stack([_mask()])
    faint = Checker(_Faint(asked.clone(), (20, 22)), LABELS, 32)
    clean = Checker(_Painted(asked.clone()), LABELS, 32)
    rec = faint.check(torch.zeros(1, 1, 32, 32), asked)[0]
    assert rec["passed"] and rec["false_score"] == pytest.approx(0.3)
    assert clean.check(torch.zeros(1, 1, 32, 32), asked)[0]["false_score"] == 0.0
    assert CheckerPanel([clean, faint]).check(torch.zeros(1, 1, 32, 32), asked)[0]["false_score"] == pytest.approx(0.3)
