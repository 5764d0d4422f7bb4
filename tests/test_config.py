import pytest

from maskray.cli import build_parser
from maskray.config import from_args
from maskray.errors import MaskrayError
from maskray.training.trainer import TrainConfig


@pytest.mark.parametrize("name,text", [("c.yaml", "steps: 7\nlr: 0.01\nblock_out_channels: [8, 16]\n"),
                                       ("c.toml", "steps = 7\nlr = 0.01\nblock_out_channels = [8, 16]\n")])
def test_config_file_then_flags_override(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    args = build_parser().parse_args(["train", "base", "--config", str(tmp_path / name), "--lr", "0.5"])
    cfg = from_args(TrainConfig, args)
    assert cfg.steps == 7 and cfg.lr == 0.5 and cfg.block_out_channels == (8, 16)
    assert cfg.batch_size == TrainConfig().batch_size  # untouched defaults stay


def test_config_file_with_unknown_or_bad_option(tmp_path):
    (tmp_path / "a.yaml").write_text("stepz: 3\n")
    args = build_parser().parse_args(["train", "base", "--config", str(tmp_path / "a.yaml")])
    with pytest.raises(MaskrayError, match="unknown option 'stepz'"):
        from_args(TrainConfig, args)
    (tmp_path / "b.yaml").write_text("steps: many\n")
    args = build_parser().parse_args(["train", "base", "--config", str(tmp_path / "b.yaml")])
    with pytest.raises(MaskrayError, match="steps"):
        from_args(TrainConfig, args)
