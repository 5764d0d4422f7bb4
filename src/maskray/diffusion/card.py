"""The model card: what a trained model is, in one typed, versioned, frozen record (``maskray.json``).

Written beside the ``save_pretrained`` folders of a model (``unet/``, ``controlnet/``), read back by ``generate``,
``train controlnet --base``, validation and ``serve``. It holds what the networks' own ``config.json`` files do
not: the stage, the working resolution, the condition labels in channel order, the diffusion settings and the
sampling schedule, the weight hashes and the step. It holds no path, file name or date, so that it can travel
with exported data (a ControlNet on a Stable Diffusion folder records that folder's part hashes and its prompt;
where the folder lies is kept beside the card, in ``pretrained.json``). Unknown, missing or ill-typed keys are one-line errors naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maskray.errors import MaskrayError
from maskray.files import atomic_write, read_json
from maskray.provenance import to_jsonable

CARD_FILE = "maskray.json"
CARD_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """One trained model (a stage-1 base or a stage-2 base + ControlNet)."""

    stage: Literal["base", "controlnet"]
    image_size: int  # pixels per side of the images the model makes
    labels: dict[str, int]  # condition channels in order: label name -> value in the training data set
    unet_config: dict[str, Any]  # maskray's UNetConfig of the base
    diffusion: dict[str, Any]  # DiffusionConfig (prediction target, schedule, loss weighting)
    scheduler_config: dict[str, Any]  # the training noise scheduler's config; samplers share it
    step: int  # optimizer steps behind these weights
    unet_sha256: str
    controlnet_sha256: str | None = None
    base_unet_sha256: str | None = None  # stage 2: the frozen base it was trained on
    cond_embedding_channels: tuple[int, ...] = ()
    training: dict[str, Any] = field(default_factory=dict)  # hyper-parameters (no paths)
    # stage 2: condition name -> its parameters (edges: the Canny settings) and, beyond the first, "sha256" of its
    # ControlNet folder; empty = the mask alone (cards written before several conditions existed)
    conditions: dict[str, Any] = field(default_factory=dict)
    # patient-attribute vocabulary in vector order: attribute -> allowed values (empty: no attributes)
    attributes: dict[str, Any] = field(default_factory=dict)
    # latent models: {"factor", "latent_channels", "scaling_factor", "autoencoder_sha256"}; the autoencoder's
    # weights sit in the model folder's autoencoder/ (None: the model works on pixels)
    latent: dict[str, Any] | None = None
    # a ControlNet on a Stable Diffusion folder (diffusion/pretrained.py): {"prompt", "parts_sha256"}; the
    # folder's path is kept beside the card (pretrained.json), never in it
    pretrained: dict[str, Any] | None = None
    # the sampler the model is meant for, {"scheduler", "steps"} (a distilled student); empty: generate's defaults
    sampling: dict[str, Any] = field(default_factory=dict)
    distilled_from: str | None = None  # a distilled student: its teacher's controlnet_sha256
    maskray_version: str = ""
    format_version: int = CARD_VERSION

    @property
    def factor(self) -> int:
        """Pixels per sample element along each side: 1 for pixel models, the autoencoder's factor for latents."""
        return int(self.latent["factor"]) if self.latent else 1

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of what the UNet denoises (an image, or a latent)."""
        side = self.image_size // self.factor
        return (int(self.latent["latent_channels"]) if self.latent else 1, side, side)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CARD_FILE
        atomic_write(path, json.dumps(to_jsonable(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ModelCard":
        path = Path(folder) / CARD_FILE
        if not path.is_file():
            raise MaskrayError(f"{folder}: not a trained maskray run (missing {CARD_FILE}); train one with "
                               f"'maskray train base' or 'maskray train controlnet'")
        data = read_json(path, expect=(dict, list, str, int, float, type(None)), what="model card")
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = CARD_FILE) -> "ModelCard":
        if not isinstance(data, dict):
            raise MaskrayError(f"{where}: the model card must be a JSON object")
        version = data.get("format_version")
        if version != CARD_VERSION:
            raise MaskrayError(f"{where}: model card format_version {version!r}; this maskray reads {CARD_VERSION}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise MaskrayError(f"{where}: unknown model card keys {unknown}")
        missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise MaskrayError(f"{where}: model card lacks {missing}")
        hints = typing.get_type_hints(cls)
        values = {k: _checked(k, v, hints[k], where) for k, v in data.items()}
        card = cls(**values)
        card._validate(where)
        return card

    @property
    def condition_names(self) -> list[str]:
        """The conditions a stage-2 model follows, in ControlNet order (none for a base)."""
        if self.stage != "controlnet":
            return []
        return list(self.conditions) or ["mask"]

    @property
    def vocabulary(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self.attributes.items()}

    def _validate(self, where: str) -> None:
        if self.image_size < 8:
            raise MaskrayError(f"{where}: image_size {self.image_size} is not a usable size")
        if self.stage == "controlnet" and ((not self.labels and "mask" in self.condition_names)
                                           or self.controlnet_sha256 is None):
            raise MaskrayError(f"{where}: a controlnet card needs labels (for a mask condition) and "
                               f"controlnet_sha256")
        bad = [k for k, v in self.attributes.items() if not isinstance(v, list) or not v
               or not all(isinstance(x, str) for x in v)]
        if bad:
            raise MaskrayError(f"{where}: attributes {bad} need a non-empty list of string values")
        if self.latent is not None:
            need = {"factor", "latent_channels", "scaling_factor", "autoencoder_sha256"}
            if set(self.latent) != need or self.latent["factor"] not in (4, 8) or self.image_size % self.latent["factor"]:
                raise MaskrayError(f"{where}: latent must hold {sorted(need)} with factor 4 or 8 dividing image_size")
        if self.pretrained is not None:
            _validate_pretrained(self, where)
        if any(not isinstance(v, int) or isinstance(v, bool) for v in self.labels.values()):
            raise MaskrayError(f"{where}: label values must be integers")


def _validate_pretrained(card: ModelCard, where: str) -> None:
    info = card.pretrained
    hashes = info.get("parts_sha256")
    if set(info) != {"prompt", "parts_sha256"} or not isinstance(info["prompt"], str) or not isinstance(hashes, dict) \
            or not all(isinstance(hashes.get(p), str) for p in ("vae", "unet", "text_encoder", "tokenizer")):
        raise MaskrayError(f"{where}: pretrained must hold a prompt and parts_sha256 with the vae, unet, text_encoder "
                           f"and tokenizer hashes")
    if card.stage != "controlnet" or card.latent is None:
        raise MaskrayError(f"{where}: a Stable Diffusion model is a controlnet stage with a latent entry")


def _checked(name: str, value: Any, tp: Any, where: str) -> Any:
    """``value`` if it has type ``tp`` (JSON lists become tuples); else a one-line error."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    ok = True
    if origin is Literal:
        ok = value in args
    elif origin is tuple:
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    elif origin is dict:
        ok = isinstance(value, dict)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise MaskrayError(f"{where}: model card key '{name}' has {value!r}; expected {getattr(tp, '__name__', tp)}")
    return value
