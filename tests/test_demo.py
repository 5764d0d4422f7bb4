"""End-to-end smoke test of the real CLI: ``maskray demo`` with a tiny budget."""

import json

from maskray.cli import main


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--size", "32", "--cases", "30", "--base-steps", "3",
               "--controlnet-steps", "3", "--batch-size", "4", "--sampler-steps", "2", "--eval-steps", "3"])
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    s = m["scores"]
    assert set(s) >= {"generated (true mask)", "generated vs other case (shuffled mask)", "mean training image",
                      "per-label mean painted into mask"}
    assert m["test_cases"] == len(list((out / "generated" / "imagesTr").glob("*.png"))) > 0
    assert 0 <= s["generated (true mask)"]["ssim"]["mean"] <= 1
    assert "clear" in m["ssim_true_minus_shuffled"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "shuffled" in page
    for f in ("run.json", "figure_grid.png", "controlnet/validation/strip.png", "evaluation/report.html"):
        assert (out / f).is_file(), f
    # a second run into the same folder is refused with one line
    assert main(["demo", "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
