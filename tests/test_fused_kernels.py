"""The fused GroupNorm + SiLU sampling kernel (maskray.diffusion.fused): against fp32 arithmetic on known inputs,
against diffusers' own ResNet block, and the paths that must not use it."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D

from maskray.diffusion import fused
from maskray.diffusion.networks import ControlledUNet, UNetConfig, build_controlnet, build_unet
from maskray.diffusion.store import load_model
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.config import TrainConfig
from maskray.training.trainer import train

TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=3)
needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="no C++ compiler to build the fused kernel")


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _norm(channels: int, groups: int, seed: int) -> torch.nn.GroupNorm:
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.GroupNorm(groups, channels)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=g))
        norm.bias.copy_(torch.randn(channels, generator=g))
    return norm


@needs_compiler
def test_the_kernel_builds_on_this_machine():
    assert fused.kernel_problem() is None


@needs_compiler
@pytest.mark.parametrize("channels,groups,offset", [(32, 8, 0.0), (96, 8, 0.0), (24, 4, 40.0)])
def test_fused_norm_silu_matches_fp32_arithmetic_at_least_as_well_as_eager_bf16(channels, groups, offset):
    """Truth: fp32 GroupNorm + SiLU of the same bf16 input. A large common offset (40 with unit spread) is where
    sums of squares cancel; the kernel's pivot keeps it accurate."""
    g = torch.Generator().manual_seed(channels)
    x = _cl((torch.randn(2, channels, 12, 10, generator=g) * 2 + offset).bfloat16())
    add = torch.randn(2, channels, generator=g)
    norm = _norm(channels, groups, 1)
    with torch.no_grad():
        for extra in (None, add):
            extra_bf16 = None if extra is None else extra.bfloat16().float()  # eager adds it in bf16
            xin = x.float() if extra is None else x.float() + extra_bf16[:, :, None, None]
            truth = F.silu(F.group_norm(xin, groups, norm.weight, norm.bias, norm.eps))
            eager = F.silu(norm.bfloat16()(x + (0 if extra is None else extra_bf16.bfloat16()[:, :, None, None])))
            norm.float()
            got = fused.group_norm_silu(norm, x, extra_bf16)
            assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
            assert _rel(got, truth) < 5e-3
            assert _rel(got, truth) <= _rel(eager, truth) * 1.05
        plain = fused.group_norm_silu(norm, x, silu=False)
        assert _rel(plain, F.group_norm(x.float(), groups, norm.weight, norm.bias, norm.eps)) < 5e-3


def _reference_grads(x, add, norm, dy):
    """fp32 autograd of silu(group_norm(x + add)) at the bf16 input: the truth both kernel paths are held to."""
    xf = x.float().requires_grad_(True)
    af = add.clone().requires_grad_(True)
    w, b = norm.weight.detach().clone().requires_grad_(True), norm.bias.detach().clone().requires_grad_(True)
    y = F.silu(F.group_norm(xf + af[:, :, None, None], norm.num_groups, w, b, norm.eps))
    y.backward(dy.float())
    return y.detach(), xf.grad, w.grad, b.grad, af.grad


@needs_compiler
@pytest.mark.parametrize("channels,groups,height,width", [(48, 8, 7, 5), (24, 4, 9, 9), (40, 8, 6, 4)])
def test_vector_and_portable_paths_match_fp32_arithmetic_forward_and_backward(channels, groups, height, width):
    """Both builds of the kernel (AVX-512 where this CPU has it, and plain C++) against fp32 autograd, on channel
    counts that leave a partial vector (24, 40) and odd row counts (35, 81 pixels)."""
    g = torch.Generator().manual_seed(channels + height)
    x = _cl((torch.randn(3, channels, height, width, generator=g) * 3 + 1).bfloat16())
    add = torch.randn(3, channels, generator=g)
    dy = _cl(torch.randn(3, channels, height, width, generator=g).bfloat16())
    norm = _norm(channels, groups, 2)
    y_ref, dx_ref, dw_ref, db_ref, da_ref = _reference_grads(x, add, norm, dy)
    affine = torch.stack([norm.weight.detach(), norm.bias.detach()])
    builds = {"loaded": torch.ops.maskray_kernels, "portable": fused.portable_kernel_ops()}
    assert builds["portable"].vector_path() == "portable"
    for name, ops in builds.items():
        y, means, rstds = ops.group_norm_silu(x, affine, add, groups, norm.eps, True)
        dx, dw, db, da = ops.group_norm_silu_backward(dy, x, affine, add, means, rstds, groups, True)
        assert _rel(y, y_ref) < 4e-3, name  # bf16 output: one rounding (2^-9 relative at most)
        assert _rel(dx, dx_ref) < 4e-3, name
        for got, want in ((dw.sum(0), dw_ref), (db.sum(0), db_ref), (da, da_ref)):
            assert _rel(got, want) < 1e-3, name  # fp32 sums of the fp32 gradient


@needs_compiler
def test_fused_silu_is_exact_on_known_values():
    """A group holding only -a and +a normalises to -1 and +1 exactly; weight 1, bias 0 then gives silu(+-1)."""
    x = torch.tensor([-3.0, 3.0] * 8).reshape(1, 1, 4, 4).repeat(1, 4, 1, 1)
    norm = torch.nn.GroupNorm(2, 4, eps=0.0)
    with torch.no_grad():
        got = fused.group_norm_silu(norm, _cl(x.bfloat16())).float()
    want = F.silu(torch.sign(x))
    assert torch.allclose(got, want, atol=4e-3)  # bf16 rounding of silu(1) = 0.7311


def _block(temb_channels: int = 16) -> ResnetBlock2D:
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=temb_channels, groups=4).eval()
    with torch.no_grad():
        for n in (block.norm1, block.norm2):
            n.weight.normal_(), n.bias.normal_()
    return block


@needs_compiler
def test_fused_resnet_block_reproduces_diffusers_block_and_depends_on_its_input():
    block = _block()
    x, temb = torch.randn(3, 8, 8, 8), torch.randn(3, 16)
    with torch.no_grad():
        truth = block(x, temb)  # fp32, diffusers' code
        block.to(torch.bfloat16).to(memory_format=torch.channels_last)
        eager = block(_cl(x.bfloat16()), temb.bfloat16()).float()
        assert fused.fuse_norm_silu(block) == 2
        got = block(_cl(x.bfloat16()), temb.bfloat16()).float()
        other = block(_cl((x + 1).bfloat16()), temb.bfloat16()).float()
    assert _rel(got, truth) < 2e-2 and _rel(got, truth) <= _rel(eager, truth) * 1.2
    assert _rel(other, got) > 0.05


@needs_compiler
def test_fused_forward_keeps_diffusers_code_where_it_does_not_apply():
    """Autograd on, or an fp32 / NCHW tensor: the block runs its own forward, bit for bit."""
    block = _block()
    ref = _block()
    fused.fuse_norm_silu(block)
    x, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 16)
    assert torch.equal(block(x, temb), ref(x, temb))  # grad enabled, fp32
    with torch.no_grad():
        assert torch.equal(block(x, temb), ref(x, temb))  # fp32 NCHW


def _model() -> ControlledUNet:
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4), 16)
    model = ControlledUNet(unet, build_controlnet(unet, 2))
    with torch.no_grad():  # trained-looking parameters: non-zero joins, norms off their defaults
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 or "norm" in name:
                p.normal_(0, 0.2 if "bias" in name else 1.0)
    return model


def _step(model, x, t, c):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(_cl(x), t, _cl(c)).float()


def test_bf16_weights_without_fusion_give_autocast_outputs_exactly():
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([10, 900]), torch.rand(2, 2, 16, 16)
    ref = _model().eval().to(memory_format=torch.channels_last)
    model = _model()
    assert fused.prepare_for_sampling(model, torch.device("cpu"), "bf16", True, fused=False) == fused.PYTORCH_KERNELS
    assert torch.equal(_step(model, x, t, c), _step(ref, x, t, c))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


@needs_compiler
def test_prepared_model_samples_with_fused_kernels_close_to_fp32():
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([10, 900]), torch.rand(2, 2, 16, 16)
    with torch.no_grad():
        truth = _model().eval()(x, t, c)
    eager = _model().eval().to(memory_format=torch.channels_last)
    model = _model()
    assert fused.prepare_for_sampling(model, torch.device("cpu"), "bf16", True) == fused.FUSED_KERNELS
    got = _step(model, x, t, c)
    assert _rel(got, truth) < 3e-2 and _rel(got, truth) <= _rel(_step(eager, x, t, c), truth) * 1.2
    assert _rel(_step(model, x, t, torch.zeros_like(c)), got) > 1e-3  # the mask still steers the output


def test_a_kernel_that_cannot_be_built_is_said_once_and_sampling_goes_on(monkeypatch, capsys):
    monkeypatch.setattr(fused, "kernel_problem", lambda: "could not build the fused CPU kernel (no compiler)")
    fused._say_once.cache_clear()
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([10, 900]), torch.rand(2, 2, 16, 16)
    ref = _model().eval().to(memory_format=torch.channels_last)
    for _ in range(2):
        model = _model()
        kernels = fused.prepare_for_sampling(model, torch.device("cpu"), "bf16", True)
        assert kernels == "pytorch (could not build the fused CPU kernel (no compiler))"
        assert torch.equal(_step(model, x, t, c), _step(ref, x, t, c))
    assert capsys.readouterr().err.count("could not build the fused CPU kernel") == 1


def test_generate_records_which_kernels_ran(toy_dataset, tmp_path):
    base, cn = tmp_path / "base", tmp_path / "cn"
    train(TrainConfig(data=str(toy_dataset), out=str(base), **{**TINY, "steps": 2}), "base", progress=False)
    train(TrainConfig(data=str(toy_dataset), out=str(cn), **{**TINY, "steps": 2, "base": str(base)}), "controlnet",
          progress=False)
    kinds = {}
    for name, on in (("fused", True), ("eager", False)):
        generate(GenerateConfig(model=str(cn), masks=str(toy_dataset), out=str(tmp_path / name), steps=2,
                                fused_kernels=on, precision="bf16"), progress=False)  # the kernel is bf16's
        run = json.loads((tmp_path / name / "run.json").read_text())
        assert run["config"]["fused_kernels"] is on
        kinds[name] = run["kernels"]["sampling"]
    assert kinds["eager"] == fused.PYTORCH_KERNELS
    if fused.kernel_problem() is None:
        assert kinds["fused"] == fused.FUSED_KERNELS
    else:  # a machine without a compiler: generate says why it ran PyTorch's kernels
        assert kinds["fused"].startswith(fused.PYTORCH_KERNELS + " (could not build")


@needs_compiler
def test_prepared_decoder_decodes_in_bf16_with_fused_norms_close_to_fp32():
    from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec

    torch.manual_seed(0)
    codec = LatentCodec.new(AutoencoderConfig(factor=4, latent_channels=4, block_out_channels=(8, 16),
                                              norm_num_groups=4))
    codec.vae.eval()
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        truth = codec.decode(z)
        assert codec.prepare_for_decoding(torch.device("cpu"), "bf16", True) == fused.FUSED_KERNELS
        got = codec.decode(z)
        other = codec.decode(z.flip(-1))
    assert got.dtype == torch.float32 and got.shape == (2, 1, 32, 32)
    assert codec.decode_bf16 and _rel(got, truth) < 2e-2
    assert _rel(other, got) > 0.05


@needs_compiler
@pytest.mark.parametrize("silu,with_add", [(True, True), (True, False), (False, True)])
def test_fused_gradients_match_fp32_arithmetic_better_than_eager_bf16(silu, with_add):
    """Gradients of x, the norm's weight and bias, and the added term, against fp32 autograd on the same bf16
    input."""
    g = torch.Generator().manual_seed(3)
    x0 = _cl((torch.randn(2, 24, 8, 6, generator=g) * 2 + 0.5).bfloat16())
    add0 = torch.randn(2, 24, generator=g) if with_add else None
    dy = _cl(torch.randn(2, 24, 8, 6, generator=g).bfloat16())
    norm = _norm(24, 4, 5)

    def grads(kind):
        x = x0.clone().requires_grad_(True)
        add = add0.clone().requires_grad_(True) if with_add else None
        norm.zero_grad()
        if kind == "fused":
            y = fused.group_norm_silu(norm, x, add, silu)
        else:
            xin = x.float() if kind == "fp32" else x
            if with_add:
                xin = xin + (add if kind == "fp32" else add.bfloat16())[:, :, None, None]
            y = F.group_norm(xin, 4, norm.weight, norm.bias, norm.eps)
            y = F.silu(y) if silu else y
        y.backward(dy.to(y.dtype))
        out = [x.grad.float(), norm.weight.grad.clone(), norm.bias.grad.clone()]
        return out + ([add.grad.clone()] if with_add else [])

    truth, eager, got = grads("fp32"), grads("eager"), grads("fused")
    for name, t, e, f in zip(("x", "weight", "bias", "add"), truth, eager, got):
        assert _rel(f, t) < 3e-3, name
        assert _rel(f, t) <= _rel(e, t) * 1.05, name


@needs_compiler
def test_bf16_training_runs_channels_last_with_fused_kernels_and_resumes_exactly(toy_dataset, tmp_path):
    kw = {**TINY, "precision": "bf16", "steps": 4}
    train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "full"), **kw), "base", progress=False)
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["kernels"] == fused.FUSED_KERNELS and run["config"]["channels_last"] is True
    assert run["allocator"].startswith(("glibc heap, freed memory kept", "system defaults"))
    train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "split"), **kw, stop_after=2), "base",
          progress=False)
    train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "split"), **kw, resume=True), "base",
          progress=False)
    a = load_model(tmp_path / "full")[0].state_dict()
    b = load_model(tmp_path / "split")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [float(row.split(",")[1]) for row in (tmp_path / "full" / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
    train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "off"), **kw, fused_kernels=False), "base",
          progress=False)
    off = json.loads((tmp_path / "off" / "run.json").read_text())
    assert off["kernels"] == fused.PYTORCH_KERNELS and off["config"]["channels_last"] is False


@needs_compiler
def test_stage2_training_feeds_every_fused_block_bf16(toy_dataset, tmp_path, monkeypatch):
    """accelerate's fp32-output wrapper once made the ControlNet's residuals fp32, which sent the frozen base's up
    path past the fused kernel in fp32; no block may see an fp32 input in bf16 training."""
    kw = {**TINY, "precision": "bf16", "steps": 2}
    train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "base"), **kw), "base", progress=False)
    seen = []
    applies = fused._applies
    monkeypatch.setattr(fused, "_applies", lambda x: seen.append(x.dtype) or applies(x))
    train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "cn"), **kw, base=str(tmp_path / "base")),
          "controlnet", progress=False)
    assert seen and torch.float32 not in seen, f"{seen.count(torch.float32)} fp32 inputs of {len(seen)}"
