"""The checked-in recipes under configs/ parse as their commands' configs (a renamed option fails here)."""

from pathlib import Path

import pytest

from maskray.config import build, load_config_file
from maskray.pipelines.generate import GenerateConfig
from maskray.training.autoencoder import AutoencoderTrainConfig
from maskray.training.checker import CheckerConfig
from maskray.training.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BY_NAME = {"autoencoder": AutoencoderTrainConfig, "decoder": AutoencoderTrainConfig, "base": TrainConfig, "controlnet": TrainConfig,
           "checker": CheckerConfig, "generate": GenerateConfig}
FILES = sorted(CONFIGS.rglob("*.yaml"))


def test_there_are_recipes():
    assert len(FILES) >= 5


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses(path):
    values = load_config_file(path)
    cfg = build(BY_NAME[path.stem], values, where=str(path))
    for key, value in values.items():
        assert getattr(cfg, key) == value
