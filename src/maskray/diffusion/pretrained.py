"""A Stable Diffusion folder as the frozen base: the reference system's own setup (ControlNet on Stable Diffusion,
Zhang, Rao & Agrawala 2023; latent diffusion, Rombach et al. 2022).

The folder is in diffusers layout, as ``StableDiffusionPipeline.save_pretrained`` writes it::

    DIR/vae/           AutoencoderKL (RGB, 8x)         DIR/unet/        UNet2DConditionModel (cross-attention)
    DIR/text_encoder/  CLIPTextModel (transformers)    DIR/tokenizer/   CLIPTokenizer
    DIR/scheduler/     scheduler_config.json (its noise schedule and prediction target)

Radiographs are grey: to encode, the grey image is repeated to three channels; the decoded RGB is averaged back
to grey (:class:`RGBLatentCodec`). The text prompt is the cross-attention context: fixed, or, for a model trained
with patient attributes, the base prompt followed by each case's attributes (:func:`attribute_prompt`).
Weights load from safetensors only; a part folder that holds a pickled weight file is refused.

A model trained on such a folder does not copy it: its model folder holds the ControlNet and the card, the card
records the hash of each part (and no path, since it travels with exported data), and ``pretrained.json`` beside
the card records where the folder was (:func:`write_pointer`). Loading checks each part against the card's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from maskray.diffusion.attributes import decode
from maskray.diffusion.objective import DiffusionConfig
from maskray.errors import MaskrayError
from maskray.provenance import file_sha256
from maskray.files import atomic_write

PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
WEIGHT_PARTS = ("vae", "unet", "text_encoder")
POINTER_FILE = "pretrained.json"
DEFAULT_PROMPT = "a chest radiograph"
PICKLE_ENDINGS = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
_BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


def check_folder(root: str | os.PathLike, parts: tuple[str, ...] = PARTS) -> Path:
    """``root`` if it holds ``parts`` in diffusers layout with safetensors weights; else a one-line error naming
    the first part that is missing or holds pickled weights."""
    root = Path(root)
    if not root.is_dir():
        raise MaskrayError(f"{root}: no such Stable Diffusion folder")
    for part in parts:
        folder = root / part
        if not folder.is_dir():
            raise MaskrayError(f"{root}: not a Stable Diffusion folder in diffusers layout: the '{part}' part is "
                               f"missing (needs {', '.join(PARTS)})")
        if part in WEIGHT_PARTS:
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_ENDINGS)
            if pickles:
                raise MaskrayError(f"{folder}: holds pickled weights {pickles}; maskray loads safetensors only "
                                   f"(a pickle can run code when loaded): remove them or save the part with "
                                   f"safe_serialization=True")
            if not any(folder.glob("*.safetensors")):
                raise MaskrayError(f"{folder}: the '{part}' part has no .safetensors weights")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        raise MaskrayError(f"{root / 'scheduler'}: the 'scheduler' part lacks scheduler_config.json")
    return root


def part_sha256(root: str | os.PathLike, part: str) -> str:
    """SHA-256 over every file of one part folder (names and contents, in name order): weights, config and
    vocabulary alike, so a changed config counts as a changed part."""
    folder = Path(root) / part
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}:{file_sha256(path)}\n".encode())
    return h.hexdigest()


def parts_sha256(root: str | os.PathLike, parts: tuple[str, ...] = PARTS) -> dict[str, str]:
    return {part: part_sha256(root, part) for part in parts}


def verify_parts(root: Path, expected: dict[str, str], parts: tuple[str, ...]) -> None:
    """One-line error naming the first of ``parts`` whose files differ from the hash the model card records."""
    check_folder(root, parts)
    for part in parts:
        if part_sha256(root, part) != expected.get(part):
            raise MaskrayError(f"{root / part}: is not the '{part}' this model was trained on (its files' hash "
                               f"differs from the model card's)")


def _from_pretrained(cls, root: Path, part: str, **kw):
    """``cls.from_pretrained`` of one part, safetensors only, held in float32 whatever the files store (the
    networks run under autocast; the VAE overflows in fp16); any failure as one line naming the part."""
    try:
        return cls.from_pretrained(root / part, **kw).float()
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MaskrayError(f"{root / part}: cannot load the '{part}' part ({first})") from None


def load_unet(root: Path) -> UNet2DConditionModel:
    unet = _from_pretrained(UNet2DConditionModel, root, "unet", use_safetensors=True)
    if unet.config.cross_attention_dim is None:
        raise MaskrayError(f"{root / 'unet'}: the UNet has no cross-attention; a Stable Diffusion UNet reads the "
                           f"prompt through it")
    return unet.eval().requires_grad_(False)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MaskrayError("Stable Diffusion folders need the transformers package (pip install 'maskray[sd]')") \
            from None
    return transformers


class PromptEncoder:
    """The folder's tokenizer and text encoder: ``encoder(prompt)`` -> float32 ``(1, L, D)``, the last hidden states
    for ``prompt`` padded to the tokenizer's length (what Stable Diffusion's UNet reads through cross-attention).
    Each distinct prompt is encoded once and kept (a run asks for a handful)."""

    def __init__(self, root: Path):
        tf = _transformers()
        try:
            self.tokenizer = tf.CLIPTokenizer.from_pretrained(root / "tokenizer")
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise MaskrayError(f"{root / 'tokenizer'}: cannot load the 'tokenizer' part ({str(e).splitlines()[0]})") \
                from None
        self.encoder = _from_pretrained(tf.CLIPTextModel, root, "text_encoder", use_safetensors=True).eval()
        self.length = min(self.tokenizer.model_max_length, self.encoder.config.max_position_embeddings)
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        if not prompt.strip():
            raise MaskrayError("--prompt is empty")
        if prompt not in self.cache:
            ids = self.tokenizer([prompt], padding="max_length", max_length=self.length, truncation=True,
                                 return_tensors="pt")
            self.cache[prompt] = self.encoder(ids.input_ids)[0].float()
        return self.cache[prompt]


def prompt_context(root: Path, prompt: str) -> torch.Tensor:
    """float32 ``(1, L, D)``: ``prompt`` encoded by the folder's text encoder."""
    return PromptEncoder(root)(prompt)


SEX_WORDS = {"F": "female", "M": "male", "female": "female", "male": "male"}


def attribute_prompt(prompt: str, record: dict[str, str]) -> str:
    """The prompt of one case: the base ``prompt``, then its attributes in the record's order. ``sex`` (F/M) reads
    " of a female patient" / " of a male patient"; every other attribute ", NAME VALUE". An attribute not given (or
    dropped) is left out, so no attributes give the base prompt itself:
    ``("a chest radiograph", {"sex": "F", "age": "60-70"})`` -> ``"a chest radiograph of a female patient, age 60-70"``.
    """
    text = prompt
    sex = record.get("sex")
    if sex is not None and str(sex) in SEX_WORDS:
        text += f" of a {SEX_WORDS[str(sex)]} patient"
    rest = [f"{k} {v}" for k, v in record.items() if not (k == "sex" and str(v) in SEX_WORDS)]
    return ", ".join([text] + rest)


class AttributePrompts:
    """Patient attributes as the prompt (Stable Diffusion mode): ``prompts(attributes, n)`` -> float32
    ``(n, L, D)``, each sample's :func:`attribute_prompt` encoded. ``attributes``: float ``(n, V)`` multi-hot in
    ``vocab``'s order (diffusion/attributes.py; a zero block is "not given"), or ``None`` (the base prompt)."""

    def __init__(self, encoder: PromptEncoder, prompt: str, vocab: dict[str, tuple[str, ...]]):
        self.encoder, self.prompt, self.vocab = encoder, prompt, vocab
        encoder(prompt)  # an empty or unreadable prompt fails here, before any work

    def texts(self, attributes: torch.Tensor | None, n: int) -> list[str]:
        if attributes is None or not self.vocab:
            return [self.prompt] * n
        return [attribute_prompt(self.prompt, rec) for rec in decode(attributes, self.vocab)]

    def __call__(self, attributes: torch.Tensor | None, n: int) -> torch.Tensor:
        return torch.cat([self.encoder(t) for t in self.texts(attributes, n)])


def read_scheduler(root: Path) -> tuple[dict[str, Any], DiffusionConfig]:
    """The folder's noise schedule as a scheduler config that every maskray sampler reads (clipping off: the
    samples are latents) and the :class:`DiffusionConfig` of its training target."""
    path = root / "scheduler" / "scheduler_config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MaskrayError(f"{path}: cannot read the scheduler config ({e})") from None
    if not isinstance(raw, dict):
        raise MaskrayError(f"{path}: the scheduler config must be a JSON object")
    config = {k: v for k, v in raw.items() if not k.startswith("_")}
    config.update(clip_sample=False, thresholding=False)
    target = config.get("prediction_type", "epsilon")
    schedule = config.get("beta_schedule", "linear")
    if target not in ("epsilon", "v_prediction") or schedule not in _BETA_SCHEDULES:
        raise MaskrayError(f"{path}: prediction_type {target!r} / beta_schedule {schedule!r} are not supported "
                           f"(allowed: epsilon, v_prediction / {', '.join(_BETA_SCHEDULES)})")
    diff = DiffusionConfig(prediction_type=target, beta_schedule=schedule,
                           num_train_timesteps=int(config.get("num_train_timesteps", 1000)))
    return config, diff


class RGBLatentCodec:
    """Stable Diffusion's RGB ``AutoencoderKL`` for grey images: ``(N, 1, H, W)`` in ``[-1, 1]`` <-> scaled
    latents ``(N, C, H/f, W/f)``. The interface of :class:`~maskray.diffusion.autoencoder.LatentCodec`."""

    def __init__(self, vae: AutoencoderKL, sha256: str):
        if vae.config.in_channels != 3 or vae.config.out_channels != 3:
            raise MaskrayError(f"the Stable Diffusion VAE has {vae.config.in_channels} input channels; expected RGB")
        self.vae = vae.eval().requires_grad_(False)
        self.sha256 = sha256
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @classmethod
    def load(cls, root: Path, sha256: str) -> RGBLatentCodec:
        return cls(_from_pretrained(AutoencoderKL, root, "vae", use_safetensors=True), sha256)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def weights_hash(self) -> str:
        return self.sha256

    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of float ``(N, 1, H, W)`` grey images in ``[-1, 1]`` (repeated to RGB); the posterior
        mean, or a posterior sample when ``generator`` is given."""
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"expected (N, 1, H, W) with H, W divisible by {self.factor}, got {tuple(x.shape)}")
        rgb = x.to(self._device(), torch.float32).repeat(1, 3, 1, 1)
        post = self.vae.encode(rgb).latent_dist
        z = post.mode() if generator is None else post.sample(generator=generator)
        return (z - self.shift_factor) * self.scaling_factor

    def prepare_for_decoding(self, device: torch.device, precision: str, channels_last: bool,
                             fused: bool = True) -> str:
        """Move the decoder to ``device``; a Stable Diffusion VAE keeps decoding in fp32 (bf16 decoding is
        measured only for maskray's own autoencoder)."""
        self.vae.to(device)
        return "pytorch (fp32 decoding)"

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Grey images float ``(N, 1, H, W)`` in ``[-1, 1]``: the decoded RGB averaged over its channels."""
        rgb = self.vae.decode(z.to(self._device(), torch.float32) / self.scaling_factor + self.shift_factor).sample
        return rgb.mean(dim=1, keepdim=True).clamp(-1.0, 1.0)

    def latent_card(self) -> dict:
        """The model card's ``latent`` entry."""
        return {"factor": self.factor, "latent_channels": self.latent_channels,
                "scaling_factor": self.scaling_factor, "autoencoder_sha256": self.sha256}


def write_pointer(model_folder: Path, root: Path) -> Path:
    """``pretrained.json`` beside the card: where the Stable Diffusion folder was when the model was trained."""
    path = Path(model_folder) / POINTER_FILE
    atomic_write(path, json.dumps({"path": str(Path(root).resolve())}, indent=2))
    return path


def pretrained_root(model_folder: Path, override: str | os.PathLike | None = None) -> Path:
    """The Stable Diffusion folder of a model: ``override`` (``--pretrained``), else the one ``pretrained.json``
    names."""
    if override:
        return Path(override)
    path = Path(model_folder) / POINTER_FILE
    try:
        where = json.loads(path.read_text())["path"]
    except FileNotFoundError:
        raise MaskrayError(f"{path}: missing; this model was trained on a Stable Diffusion folder: give it with "
                           f"--pretrained DIR") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise MaskrayError(f"{path}: cannot read ({e.__class__.__name__}); give the Stable Diffusion folder with "
                           f"--pretrained DIR") from None
    return Path(where)
