"""Model folders: what a trained run keeps so that it can rebuild itself.

::

    RUN/model/unet/           diffusers save_pretrained (config.json + safetensors) of the base UNet (EMA weights)
    RUN/model/controlnet/     the same for the ControlNet (stage 2 runs only)
    RUN/model/maskray.json    stage, image size, condition labels in channel order, diffusion and
                              scheduler config, the base it came from (path and weight hash), training step
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusers import ControlNetModel, UNet2DConditionModel

from maskray.errors import MaskrayError
from maskray.models.networks import ControlledUNet
from maskray.provenance import atomic_write_text, file_sha256

MODEL_DIR = "model"
META_FILE = "maskray.json"


def save_model(run_dir: str | os.PathLike, unet: UNet2DConditionModel, meta: dict,
               controlnet: ControlNetModel | None = None) -> Path:
    """Write ``run_dir/model`` (weights in safetensors, configs, ``maskray.json``)."""
    out = Path(run_dir) / MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    if controlnet is not None:
        controlnet.save_pretrained(out / "controlnet", safe_serialization=True)
    meta = dict(meta)
    meta["unet_sha256"] = weights_hash(out / "unet")
    if controlnet is not None:
        meta["controlnet_sha256"] = weights_hash(out / "controlnet")
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2))
    return out


def weights_hash(folder: Path) -> str:
    files = sorted(Path(folder).glob("*.safetensors"))
    return file_sha256(files[0]) if files else ""


def read_meta(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / MODEL_DIR / META_FILE
    if not path.is_file():
        raise MaskrayError(f"{run_dir}: not a trained maskray run (missing {MODEL_DIR}/{META_FILE}); "
                           f"train one with 'maskray train base' or 'maskray train controlnet'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MaskrayError(f"{path}: corrupt ({e})") from None


def load_model(run_dir: str | os.PathLike, need_controlnet: bool = False) -> tuple[ControlledUNet, dict]:
    """Rebuild the networks of a run from what it stores. Returns ``(model in eval mode, meta)``."""
    meta = read_meta(run_dir)
    folder = Path(run_dir) / MODEL_DIR
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        controlnet = None
        if (folder / "controlnet").is_dir():
            controlnet = ControlNetModel.from_pretrained(folder / "controlnet")
    except (OSError, ValueError, RuntimeError) as e:
        raise MaskrayError(f"{folder}: cannot load weights ({str(e).splitlines()[0]})") from None
    if need_controlnet and controlnet is None:
        raise MaskrayError(f"{run_dir}: is a stage-1 base model; generating for masks needs a stage-2 run "
                           f"('maskray train controlnet --base {run_dir} ...')")
    model = ControlledUNet(unet, controlnet).eval()
    model.requires_grad_(False)
    return model, meta
