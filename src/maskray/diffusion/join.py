"""Joining separately trained ControlNets into one model ("trained separately", the other option to training
several conditions jointly in one run).

Each source is a stage-2 run on the same frozen base; the joined model holds that base once and one ControlNet per
named condition, taken from the source that names it, as a :class:`~maskray.diffusion.networks.ControlNetSet`:
the same object a joint run writes, so ``generate`` loads it, sums the residuals and honours
``--conditioning-scale`` and per-condition guidance the same way. Nothing is retrained; the weights are copied
bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from maskray.diffusion.card import ModelCard
from maskray.diffusion.model import MaskModel
from maskray.diffusion.networks import ControlledUNet, ControlNetSet
from maskray.diffusion.store import MODEL_DIR
from maskray.errors import MaskrayError
from maskray.files import atomic_write, prepare_output_dir

# what every source must share with the first, so that the ControlNets read the same base, samples and attributes
SHARED = (("base_unet_sha256", "was trained on another base (its base UNet hash differs)"),
          ("image_size", "has another image size"),
          ("latent", "works on other latents (autoencoder, factor or channels differ) or in another space"),
          ("attributes", "has other patient attributes"),
          ("diffusion", "has another prediction target or noise schedule"))


def parse_sources(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["mask=RUN_A", "edges=RUN_B"]`` -> ``{"mask": "RUN_A", "edges": "RUN_B"}``; one-line errors."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise MaskrayError(f"--controlnet '{item}' is not CONDITION=RUN (e.g. mask=runs/cn-mask)")
        if name.strip() in out:
            raise MaskrayError(f"--controlnet: condition '{name.strip()}' is given twice; each condition once")
        out[name.strip()] = path.strip()
    if len(out) < 2:
        raise MaskrayError("--controlnet: joining needs at least two conditions (e.g. --controlnet mask=RUN_A "
                           "--controlnet edges=RUN_B)")
    return out


def check_compatible(cards: dict[str, tuple[str, ModelCard]]) -> None:
    """``{condition: (source folder, its card)}``: every source is a stage-2 maskray run that follows its condition
    and shares the first source's base, size, latent space, attributes and diffusion; else a one-line error."""
    first_name, (first_path, first) = next(iter(cards.items()))
    for name, (path, card) in cards.items():
        if card.stage != "controlnet":
            raise MaskrayError(f"{path}: is a stage-1 base; join takes stage-2 runs ('maskray train controlnet')")
        if card.pretrained is not None:
            raise MaskrayError(f"{path}: is a ControlNet on a Stable Diffusion folder; join takes maskray's own runs")
        if card.distilled_from is not None:
            raise MaskrayError(f"{path}: is a distilled student (its UNet is no longer the base); join takes "
                               f"undistilled runs")
        if name not in card.condition_names:
            raise MaskrayError(f"{path}: follows {', '.join(card.condition_names)}, not '{name}'")
        for key, problem in SHARED:
            if getattr(card, key) != getattr(first, key):
                raise MaskrayError(f"{path}: {problem} than {first_path} (--controlnet {first_name})")


def join_models(sources: dict[str, str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the model of ``{condition: source run}`` to ``out/model`` (and the sources to ``out/join.json``);
    returns the run folder ``out``. Every check runs before ``out`` is touched."""
    loaded = {name: (str(path), MaskModel.load(path)) for name, path in sources.items()}
    check_compatible({name: (path, m.card) for name, (path, m) in loaded.items()})
    run = prepare_output_dir(out, overwrite=overwrite)
    nets, conditions, origin = {}, {}, {}
    for name, (path, m) in loaded.items():
        controlnet, card = m.net.controlnet, m.card
        nets[name] = controlnet.nets[name] if isinstance(controlnet, ControlNetSet) else controlnet
        params = card.conditions.get(name, {"channels": len(card.labels)})
        conditions[name] = {k: v for k, v in params.items() if k != "sha256"}
        origin[name] = {"step": card.step, "controlnet_sha256": card.conditions.get(name, {}).get(
            "sha256", card.controlnet_sha256)}
    models = [m for _, m in loaded.values()]
    first = models[0]
    with_mask = next((m.card for m in models if "mask" in m.card.condition_names), first.card)
    card = dataclasses.replace(
        first.card, labels=dict(with_mask.labels) if "mask" in conditions else {}, conditions=conditions,
        step=max(m.card.step for m in models), controlnet_sha256=None,
        training={"joined": origin, "note": "ControlNets trained separately on one base, joined by 'train join'"})
    atomic_write(run / "join.json", json.dumps({"controlnet": {k: str(v) for k, v in sources.items()}}, indent=2))
    MaskModel(ControlledUNet(first.net.unet, ControlNetSet(nets)), card, first.codec).save(run / MODEL_DIR)
    return run
