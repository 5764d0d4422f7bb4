"""Patient attributes (sex, age band, finding, ...) as a condition: a multi-hot vector that the base UNet and the
ControlNet turn into an embedding added to the time embedding (diffusers' ``class_embed_type="projection"``: a
two-layer MLP from ``class_labels`` to the time-embedding width).

A *vocabulary* is ``{attribute: (value, ...)}`` in a fixed order; the vector holds one one-hot block per
attribute. A block of zeros means "not given": attribute dropout in training teaches the networks that meaning,
so a request may name some attributes and leave the others free, and guidance (Ho & Salimans 2022) contrasts a
request with all-zero blocks. Values are strings (an age is a band such as ``60-70``).
"""

from __future__ import annotations

import torch

from maskray.errors import MaskrayError

Vocabulary = dict[str, tuple[str, ...]]


def vocabulary_of(records: dict[str, dict[str, str]], names: tuple[str, ...] | list[str] | None = None) -> Vocabulary:
    """The vocabulary of per-case attribute records (values sorted); ``names`` picks and orders the attributes."""
    seen: dict[str, set[str]] = {}
    for rec in records.values():
        for k, v in rec.items():
            seen.setdefault(k, set()).add(str(v))
    order = list(names) if names else sorted(seen)
    missing = [n for n in order if n not in seen]
    if missing:
        raise MaskrayError(f"no case records attribute(s) {missing} (recorded: {sorted(seen)})")
    return {n: tuple(sorted(seen[n])) for n in order}


def vector_size(vocab: Vocabulary) -> int:
    return sum(len(v) for v in vocab.values())


def check_request(request: dict[str, str], vocab: Vocabulary, where: str = "--attributes") -> None:
    """One-line error for an attribute name or value that the model was not trained on."""
    if not vocab and request:
        raise MaskrayError(f"{where}: this model was trained without attributes")
    for name, value in request.items():
        if name not in vocab:
            raise MaskrayError(f"{where}: unknown attribute '{name}' (allowed: {', '.join(vocab)})")
        if str(value) not in vocab[name]:
            raise MaskrayError(f"{where}: unknown value '{value}' for attribute '{name}' "
                               f"(allowed: {', '.join(vocab[name])})")


def parse_request(text: str, vocab: Vocabulary, where: str = "--attributes") -> dict[str, str]:
    """``"sex=F,age=60-70"`` -> ``{"sex": "F", "age": "60-70"}``, checked against ``vocab``."""
    out: dict[str, str] = {}
    for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise MaskrayError(f"{where}: '{part}' is not NAME=VALUE (e.g. sex=F,age=60-70)")
        out[name.strip()] = value.strip()
    check_request(out, vocab, where)
    return out


def encode(records: list[dict[str, str] | None], vocab: Vocabulary) -> torch.Tensor:
    """Per-sample attribute records -> float32 ``(N, D)`` multi-hot; an absent attribute is a zero block.
    A recorded value outside ``vocab`` is treated as absent (a case of a value unseen in training)."""
    out = torch.zeros(len(records), vector_size(vocab))
    for i, rec in enumerate(records):
        offset = 0
        for name, values in vocab.items():
            value = (rec or {}).get(name)
            if value is not None and str(value) in values:
                out[i, offset + values.index(str(value))] = 1.0
            offset += len(values)
    return out


def decode(vec: torch.Tensor, vocab: Vocabulary) -> list[dict[str, str]]:
    """float ``(N, D)`` multi-hot -> per-sample records; an all-zero block (not given, or dropped) is left out."""
    out = []
    for row in vec.detach().cpu():
        rec, offset = {}, 0
        for name, values in vocab.items():
            block = row[offset: offset + len(values)]
            if block.abs().sum() > 0:
                rec[name] = values[int(block.argmax())]
            offset += len(values)
        out.append(rec)
    return out


def drop_attributes(vec: torch.Tensor, vocab: Vocabulary, p: float, generator: torch.Generator) -> torch.Tensor:
    """Zero the whole vector of a sample with probability ``p`` (for guidance on all attributes) and, independently,
    each attribute's block with probability ``p`` (so a request may leave attributes free). Returns a new tensor."""
    n = vec.shape[0]
    keep_all = (torch.rand(n, generator=generator) >= p).to(vec.dtype)
    blocks = [torch.full((len(v),), i) for i, v in enumerate(vocab.values())]
    block_of = torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.long)
    keep_each = (torch.rand(n, len(vocab), generator=generator) >= p).to(vec.dtype)
    return vec * keep_all.view(-1, 1).to(vec.device) * keep_each[:, block_of].to(vec.device)
