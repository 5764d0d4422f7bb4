"""Checkpoints that hold tensors and numbers only, so that loading one can never run code.

::

    RUN/checkpoints/step-N/trainable.safetensors   raw weights of the trained network
    RUN/checkpoints/step-N/ema.safetensors         its EMA shadow weights (+ ema.json: decay state)
    RUN/checkpoints/step-N/optimizer.pt            optimizer and LR-schedule state: tensors, numbers, lists and
                                                   dicts only, read back with torch.load(weights_only=True)
    RUN/checkpoints/step-N/model/                  a loadable model folder (EMA weights + model card), so
                                                   ``generate --model RUN/checkpoints/step-N`` works
    RUN/checkpoints/step-N/trainer_state.json      {"step": N}, written last: its presence marks a complete one

No random state is stored: every batch, timestep and noise draw is a pure function of ``(seed, step)``. This
replaces accelerate's ``save_state``, whose custom-object files are pickles that ``load_state`` unpickles.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn

from maskray.errors import MaskrayError
from maskray.files import atomic_write, read_json

ALLOWED = {"trainable.safetensors", "ema.safetensors", "ema.json", "optimizer.pt", "model", "trainer_state.json"}


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (those whose trainer_state.json was written last), oldest first."""
    done = [p for p in (Path(out) / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(path: Path, step: int, trainable: nn.Module, optimizer, lr_sched, ema: EMAModel | None) -> None:
    """Write one checkpoint of the state that ``load_checkpoint`` restores (main process only)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.state_dict().items()},
              path / "trainable.safetensors")
    if ema is not None:
        names = [n for n, p in trainable.named_parameters()]
        save_file({n: s.detach().contiguous().cpu() for n, s in zip(names, ema.shadow_params)},
                  path / "ema.safetensors")
        scalars = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        atomic_write(path / "ema.json", json.dumps(scalars))
    torch.save({"optimizer": optimizer.state_dict(), "lr_schedule": lr_sched.state_dict()}, path / "optimizer.pt")
    atomic_write(path / "trainer_state.json", json.dumps({"step": step}))


def load_checkpoint(path: Path, trainable: nn.Module, optimizer, lr_sched, ema: EMAModel | None) -> int:
    """Restore a checkpoint in place; returns its step. Anything but tensors and numbers is refused."""
    stray = sorted(p.name for p in path.iterdir() if p.name not in ALLOWED)
    if stray:
        raise MaskrayError(f"{path}: holds files maskray does not write ({', '.join(stray[:5])}); refusing to "
                           f"resume from a checkpoint that may have been tampered with")
    try:
        trainable.load_state_dict(load_file(path / "trainable.safetensors"))
        state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_schedule"])
        if ema is not None:
            shadow = load_file(path / "ema.safetensors")
            names = [n for n, p in trainable.named_parameters()]
            scalars = read_json(path / "ema.json", what="EMA state")
            ema.load_state_dict({**scalars, "shadow_params": [shadow[n] for n in names]})
        step = read_json(path / "trainer_state.json", what="trainer state").get("step")
    except pickle.UnpicklingError:
        raise MaskrayError(f"{path / 'optimizer.pt'}: holds objects other than tensors and numbers; refusing to "
                           f"unpickle them") from None
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, json.JSONDecodeError) as e:
        raise MaskrayError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    if not isinstance(step, int) or step < 1:
        raise MaskrayError(f"{path / 'trainer_state.json'}: step must be a positive integer")
    return step


def prune_checkpoints(out: Path, keep: int) -> None:
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
