"""Model folders: the networks as diffusers ``save_pretrained`` folders (safetensors) plus the model card.

::

    FOLDER/unet/          config.json + diffusion_pytorch_model.safetensors of the base UNet (EMA weights)
    FOLDER/controlnet/    the same for the ControlNet (stage 2 only; the mask's, or the first condition's)
    FOLDER/controlnet_NAME/  one more per further condition (``--conditions mask,edges``: controlnet_edges/)
    FOLDER/autoencoder/   latent models only: the autoencoder (diffusion/autoencoder.py), so the folder is whole
    FOLDER/maskray.json   the model card (diffusion/card.py)

A ControlNet trained on a Stable Diffusion folder has no ``unet/`` or ``autoencoder/``: its base and VAE stay in
that folder, named by ``FOLDER/pretrained.json`` and checked against the card's hashes (diffusion/pretrained.py).

A finished run keeps its model in ``RUN/model``; every checkpoint keeps one in ``RUN/checkpoints/step-N/model``,
so ``generate --model`` takes a run, a model folder or a checkpoint. Loading reads safetensors only: a folder that
holds a pickled file where weights belong is refused, since unpickling can run code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from diffusers import ControlNetModel, UNet2DConditionModel

from maskray.diffusion import pretrained as sd
from maskray.diffusion.autoencoder import LatentCodec
from maskray.diffusion.card import CARD_FILE, ModelCard
from maskray.diffusion.networks import ControlledUNet, ControlNetSet, mask_fold
from maskray.errors import MaskrayError
from maskray.provenance import file_sha256

MODEL_DIR = "model"
PICKLE_ENDINGS = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")


def save_model(folder: str | os.PathLike, unet: UNet2DConditionModel, card: ModelCard,
               controlnet: ControlNetModel | ControlNetSet | None = None, codec: LatentCodec | None = None) -> Path:
    """Write the networks, the autoencoder (latent models) and the card (with the weight hashes filled in)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if codec is not None:
        codec.save(out / "autoencoder")
    unet.save_pretrained(out / "unet", safe_serialization=True)
    hashes = {"unet_sha256": weights_hash(out / "unet")}
    if isinstance(controlnet, ControlNetSet):
        hashes.update(_save_controlnet_set(out, controlnet, card))
    elif controlnet is not None:
        controlnet.save_pretrained(out / "controlnet", safe_serialization=True)
        hashes["controlnet_sha256"] = weights_hash(out / "controlnet")
    dataclasses.replace(card, **hashes).save(out)  # the card last: a folder with a card is complete
    return out


def save_with_codec(source: str | os.PathLike, codec: LatentCodec, out: str | os.PathLike, note: dict) -> Path:
    """Write ``out``: the latent model at ``source`` (networks copied as they are) with ``codec`` as its autoencoder
    (one whose encoder is the model's, so its latents are the ones the networks learned on; the caller checks).
    The card names the new autoencoder and keeps ``note`` (how it was made) under ``training["decoder"]``."""
    import shutil

    src = model_folder(source)
    card = ModelCard.load(src)
    if card.latent is None or card.pretrained is not None:
        raise MaskrayError(f"{src}: not a latent model with its own autoencoder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part in sorted(src.iterdir()):
        if part.is_dir() and part.name != "autoencoder":
            shutil.copytree(part, out / part.name)
    codec.save(out / "autoencoder")
    latent = {**card.latent, "autoencoder_sha256": codec.weights_hash()}
    dataclasses.replace(card, latent=latent, training={**card.training, "decoder": note}).save(out)  # card last
    return out


def controlnet_dir(index: int, name: str) -> str:
    """Folder of a model's ``index``-th ControlNet: ``controlnet`` for the first, ``controlnet_NAME`` after."""
    return "controlnet" if index == 0 else f"controlnet_{name}"


def _save_controlnet_set(out: Path, nets: ControlNetSet, card: ModelCard) -> dict:
    conditions = {}
    for i, (name, net) in enumerate(nets.nets.items()):
        net.save_pretrained(out / controlnet_dir(i, name), safe_serialization=True)
        conditions[name] = {**card.conditions.get(name, {}), "sha256": weights_hash(out / controlnet_dir(i, name))}
    first = next(iter(conditions))
    return {"controlnet_sha256": conditions[first]["sha256"], "conditions": conditions}


def save_pretrained_model(folder: str | os.PathLike, controlnet: ControlNetModel, card: ModelCard,
                          root: str | os.PathLike) -> Path:
    """Write a ControlNet trained on the Stable Diffusion folder ``root``: its weights, ``pretrained.json`` (where
    ``root`` is) and the card (whose ``pretrained`` entry holds the parts' hashes). The folder's weights are not
    copied."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    controlnet.save_pretrained(out / "controlnet", safe_serialization=True)
    sd.write_pointer(out, Path(root))
    dataclasses.replace(card, controlnet_sha256=weights_hash(out / "controlnet")).save(out)
    return out


def weights_hash(folder: Path) -> str:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise MaskrayError(f"{folder}: no safetensors weights")
    return file_sha256(files[0])


def model_folder(path: str | os.PathLike) -> Path:
    """The model folder behind ``path``: a run (``RUN/model``), a checkpoint (``step-N/model``) or the folder."""
    path = Path(path)
    for cand in (path / MODEL_DIR, path):
        if (cand / CARD_FILE).is_file():
            return cand
    if not path.exists():
        raise MaskrayError(f"{path}: not a trained maskray run (no such folder)")
    raise MaskrayError(f"{path}: not a trained maskray run (no {MODEL_DIR}/{CARD_FILE}); give a run folder, "
                       f"its model/ folder or one of its checkpoints/step-N folders")


def read_card(path: str | os.PathLike) -> ModelCard:
    return ModelCard.load(model_folder(path))


def load_model(path: str | os.PathLike, need_controlnet: bool = False, prompt: str | None = None,
               pretrained: str | os.PathLike | None = None) -> tuple[ControlledUNet, ModelCard]:
    """Rebuild the networks behind ``path`` (a run, model folder or checkpoint). Returns ``(model in eval mode,
    card)``; the weights must match the card's hashes.

    Stable Diffusion models only: ``prompt`` replaces the card's prompt, ``pretrained`` the folder that
    ``pretrained.json`` names."""
    folder = model_folder(path)
    card = ModelCard.load(folder)
    if need_controlnet and card.stage != "controlnet":
        raise MaskrayError(f"{path}: is a stage-1 base model; generating for masks needs a stage-2 run "
                           f"('maskray train controlnet --base {path} ...')")
    if card.pretrained is None and (prompt is not None or pretrained is not None):
        raise MaskrayError(f"{path}: was not trained on a Stable Diffusion folder; --prompt and --pretrained are "
                           f"for models that were")
    prompts = None
    if card.pretrained is None:
        unet = _load_net(UNet2DConditionModel, folder / "unet", card.unet_sha256)
    else:
        unet, prompts = _load_pretrained_base(folder, card, prompt, pretrained)
    controlnet = None
    if card.stage == "controlnet" and not card.conditions:
        controlnet = _load_net(ControlNetModel, folder / "controlnet", card.controlnet_sha256)
        fold = mask_fold(card.factor, tuple(controlnet.config.conditioning_embedding_out_channels))
        if controlnet.config.conditioning_channels != len(card.labels) * fold * fold:
            raise MaskrayError(f"{folder / 'controlnet'}: takes {controlnet.config.conditioning_channels} condition "
                               f"channels but the model card names {len(card.labels)} labels"
                               + (f" (x {fold * fold} folded)" if fold > 1 else ""))
    elif card.stage == "controlnet":
        controlnet = ControlNetSet({name: _load_net(ControlNetModel, folder / controlnet_dir(i, name),
                                                    card.conditions[name].get("sha256"))
                                    for i, name in enumerate(card.conditions)})
    model = ControlledUNet(unet, controlnet, prompts=prompts).eval()
    model.requires_grad_(False)
    return model, card


def _load_pretrained_base(folder: Path, card: ModelCard, prompt: str | None, pretrained: str | os.PathLike | None):
    """The Stable Diffusion UNet and the prompts (the base prompt, followed by each case's attributes for a model
    trained with them), each part checked against the card."""
    root = sd.pretrained_root(folder, pretrained)
    sd.verify_parts(root, card.pretrained["parts_sha256"], ("unet", "text_encoder", "tokenizer"))
    unet = sd.load_unet(root)
    text = card.pretrained["prompt"] if prompt is None else prompt
    return unet, sd.AttributePrompts(sd.PromptEncoder(root), text, card.vocabulary)


def load_codec(path: str | os.PathLike, card: ModelCard,
               pretrained: str | os.PathLike | None = None) -> LatentCodec | sd.RGBLatentCodec | None:
    """The autoencoder of a latent model (``None`` for a pixel model), checked against the card; a Stable
    Diffusion model's VAE comes from its folder (``pretrained`` overrides the one ``pretrained.json`` names)."""
    if card.latent is None:
        return None
    if card.pretrained is not None:
        root = sd.pretrained_root(model_folder(path), pretrained)
        sd.verify_parts(root, card.pretrained["parts_sha256"], ("vae",))
        codec = sd.RGBLatentCodec.load(root, card.pretrained["parts_sha256"]["vae"])
        if codec.latent_card() != card.latent:
            raise MaskrayError(f"{root / 'vae'}: its factor, channels or scaling factor differ from the model card's")
        return codec
    folder = model_folder(path) / "autoencoder"
    codec = LatentCodec.load(folder)
    if codec.weights_hash() != card.latent["autoencoder_sha256"] or codec.factor != card.factor:
        raise MaskrayError(f"{folder}: is not the autoencoder the model card names (hash or factor differ)")
    return codec


def _load_net(cls, folder: Path, expected_sha: str | None):
    if not folder.is_dir():
        raise MaskrayError(f"{folder}: missing (the model card says it should be there)")
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_ENDINGS]
    if pickles:
        raise MaskrayError(f"{folder}: holds pickled files {pickles}; maskray loads safetensors only "
                           f"(a pickle can run code when loaded)")
    if expected_sha and weights_hash(folder) != expected_sha:
        raise MaskrayError(f"{folder}: weights do not match the model card's hash (changed or from another run)")
    try:
        return cls.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise MaskrayError(f"{folder}: cannot load weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
