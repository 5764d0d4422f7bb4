"""Few-step distillation: the target's algebra, and the distil stage end to end through the CLI."""

import json

import torch

from maskray.cli import main
from maskray.diffusion.card import ModelCard
from maskray.diffusion.distillation import (_alpha_sigma, distillation_loss, output_for, student_grid,
                                             teacher_jump)
from maskray.diffusion.objective import DiffusionConfig, make_train_scheduler
from maskray.diffusion.sampling import make_scheduler
from maskray.diffusion.store import model_folder
from maskray.diffusion.model import DEFAULT_SAMPLER

SCHED = make_train_scheduler(DiffusionConfig())
AC = SCHED.alphas_cumprod.float()


def constant_x_model(value: float):
    """A v-prediction model whose clean estimate is ``value`` everywhere (an exact, known denoiser)."""
    def fn(z, t):
        alpha, sigma = _alpha_sigma(AC, t, z.ndim)
        return output_for(torch.full_like(z, value), z, alpha, sigma, "v_prediction")
    return fn


def test_student_grid_is_the_trailing_ddim_grid_the_sampler_uses():
    grid = student_grid(dict(SCHED.config), 4)
    assert grid.tolist() == [999, 749, 499, 249, -1]
    ddim = make_scheduler("ddim", {**SCHED.config, "timestep_spacing": "trailing"})
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == grid[:-1].tolist()


def test_a_student_equal_to_a_one_substep_teacher_has_zero_loss():
    # one teacher DDIM step is exactly one student DDIM step when both predict the same clean image
    x0 = torch.rand(6, 1, 8, 8) - 0.5
    grid = student_grid(dict(SCHED.config), 3)
    g = torch.Generator().manual_seed(0)
    same = distillation_loss(constant_x_model(0.2), constant_x_model(0.2), x0, grid, 1, AC, "v_prediction", g)
    assert float(same) < 1e-8
    other = distillation_loss(constant_x_model(-0.3), constant_x_model(0.2), x0, grid, 4, AC, "v_prediction",
                              torch.Generator().manual_seed(0))
    assert float(other) > 1e-3


def test_teacher_jump_to_clean_returns_its_estimate_clipped():
    z = torch.randn(3, 1, 8, 8)
    t, clean = torch.tensor([999, 500, 100]), torch.tensor([-1, -1, -1])
    out = teacher_jump(constant_x_model(1.7), z, t, clean, 3, AC, "v_prediction")
    assert torch.allclose(out, torch.ones_like(out))


def test_distil_stage_trains_and_generate_uses_its_steps(toy_dataset, tmp_path):
    tiny = ["--image-size", "32", "--batch-size", "2", "--block-out-channels", "8,16", "--norm-num-groups", "4",
            "--validation-cases", "2", "--validation-sampler-steps", "2", "--precision", "no", "--steps", "2"]
    data = ["--data", str(toy_dataset)]
    assert main(["train", "base", *data, "--out", str(tmp_path / "base"), *tiny]) == 0
    assert main(["train", "controlnet", *data, "--out", str(tmp_path / "cn"), "--base", str(tmp_path / "base"),
                 *tiny]) == 0
    assert main(["train", "distil", *data, "--out", str(tmp_path / "st"), "--model", str(tmp_path / "cn"),
                 "--student-steps", "2", "--teacher-steps", "4", "--lr", "1e-3", *tiny]) == 0
    from conftest import assert_stage_saves
    for stage, run in (("base", "base"), ("controlnet", "cn"), ("distil", "st")):
        assert_stage_saves(stage, tmp_path / run)
    card = ModelCard.load(model_folder(tmp_path / "st"))
    teacher = ModelCard.load(model_folder(tmp_path / "cn"))
    assert card.sampling == {"scheduler": "ddim", "steps": 2}
    assert card.distilled_from == teacher.controlnet_sha256 and card.unet_sha256 != teacher.unet_sha256
    assert card.scheduler_config["timestep_spacing"] == "trailing"
    gen = ["generate", "--model", str(tmp_path / "st"), "--masks", str(toy_dataset), "--cases", "case000"]
    assert main([*gen, "--out", str(tmp_path / "g")]) == 0
    used = json.loads((tmp_path / "g/generate_config.json").read_text())
    assert (used["scheduler"], used["steps"]) == ("ddim", 2)
    assert main([*gen, "--out", str(tmp_path / "g3"), "--steps", "3", "--scheduler", "dpm++"]) == 0
    used = json.loads((tmp_path / "g3/generate_config.json").read_text())
    assert (used["scheduler"], used["steps"]) == ("dpm++", 3)
    # a teacher's card names no sampler: generate keeps its defaults
    assert main(["generate", "--model", str(tmp_path / "cn"), "--masks", str(toy_dataset), "--cases", "case000",
                 "--out", str(tmp_path / "gt")]) == 0
    used = json.loads((tmp_path / "gt/generate_config.json").read_text())
    assert (used["scheduler"], used["steps"]) == DEFAULT_SAMPLER
