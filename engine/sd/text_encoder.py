"""The CLIP value nodes pass around: tokenizer + text encoder(s) + which layer to read.

Prompt weights follow ComfyUI (comfyui.md §5.8): every 77-token chunk is
encoded; when any weight differs from 1, an empty prompt is encoded too and a
weighted token becomes ``(z − z_empty)·w + z_empty``.  SDXL concatenates the
CLIP-L and bigG hidden states along the feature axis and takes the pooled
output from bigG.

Textual-inversion embeddings come from ``embeddings(name, key, width)``: ``key``
names the encoder's vectors in SDXL files (``clip_l``, ``clip_g``; ``clip_h`` for
SD2). Weight patches (LoRA) are kept per encoder and applied to the shared
network when it runs (:mod:`engine.sd.patching`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ..models.clip import CLIPTextModel
from ..text import CLIPTokenizer, EmbeddingToken, tokenize_with_weights
from .patching import PatchSet, Patches, apply_patches


@dataclass(frozen=True)
class EncoderSpec:
    """How one CLIP tower is read: layer (negative index or "last"), final norm, padding token."""

    name: str  # "l", "h" or "g"
    layer: int | str
    final_layer_norm: bool
    pad_token: int


SD1_L = EncoderSpec("l", "last", True, 49407)
SD2_H = EncoderSpec("h", -2, True, 0)
SDXL_L = EncoderSpec("l", -2, False, 49407)
SDXL_G = EncoderSpec("g", -2, False, 0)


class TextEncoder:
    """CLIP: one or two encoders with their reading specs; cloned cheaply when options change."""

    def __init__(self, encoders: list[tuple[EncoderSpec, CLIPTextModel]], device: torch.device,
                 dtype: torch.dtype, embeddings=None):
        self.encoders = encoders
        self.device = device
        self.dtype = dtype
        self.embeddings = embeddings  # callable (name, key, width) -> tensor | None (textual inversion)
        self.tokenizer = CLIPTokenizer.default()
        self.patches: dict[str, Patches] = {}  # encoder name -> weight patches

    def cache_nbytes(self) -> int:
        return 0  # weights are accounted for by the model manager

    def clone(self) -> "TextEncoder":
        return copy.copy(self)

    def with_patches(self, name: str, patch_set: PatchSet, strength: float) -> "TextEncoder":
        """A clone whose encoder ``name`` ("l", "h", "g") also carries ``patch_set`` at ``strength``."""
        clone = self.clone()
        clone.patches = {**self.patches, name: self.patches.get(name, ()) + ((patch_set, float(strength)),)}
        return clone

    def set_last_layer(self, stop_at: int) -> "TextEncoder":
        """CLIPSetLastLayer: read layer ``stop_at`` (−1 = last, −2 = "clip skip 2") of every encoder."""
        clone = self.clone()
        clone.encoders = []
        for spec, model in self.encoders:
            layer = "last" if abs(stop_at) > model.config.layers else stop_at
            clone.encoders.append((replace(spec, layer=layer), model))
        return clone

    # --- encoding ----------------------------------------------------------
    def tokenize(self, text: str, pad_token: int, embeddings=None):
        return tokenize_with_weights(text, self.tokenizer, pad_token=pad_token, embeddings=embeddings)

    def _embeddings_for(self, spec: EncoderSpec, model):
        """The name -> vectors lookup of one encoder, or None when there are no embeddings."""
        if self.embeddings is None:
            return None
        return lambda name: self.embeddings(name, f"clip_{spec.name}", model.config.width)

    @torch.inference_mode()
    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt -> (cross-attention context [1, 77·chunks, dim], pooled [1, dim] or None)."""
        return self.encode_pair(**{spec.name: text for spec, _ in self.encoders})

    @torch.inference_mode()
    def encode_pair(self, **texts: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One prompt per encoder by name (SDXL: ``l`` and ``g``); a shorter token list is padded with
        empty-prompt chunks so both encoders give the same length (ComfyUI's CLIPTextEncodeSDXL)."""
        tokenized = [self.tokenize(texts.get(spec.name, ""), spec.pad_token, self._embeddings_for(spec, model))
                     for spec, model in self.encoders]
        longest = max(len(chunks) for chunks in tokenized)
        outputs, pooled = [], None
        for (spec, model), chunks in zip(self.encoders, tokenized):
            chunks = chunks + self.tokenize("", spec.pad_token) * (longest - len(chunks))
            hidden, pooled = self._encode_weighted(spec, model, chunks)
            outputs.append(hidden)
        return torch.cat(outputs, dim=-1), pooled

    def _encode_weighted(self, spec: EncoderSpec, model: CLIPTextModel, chunks):
        weights = [[w for _, w in chunk] for chunk in chunks]
        has_weights = any(w != 1.0 for chunk in weights for w in chunk)
        sequences = [[t for t, _ in chunk] for chunk in chunks]
        if has_weights:
            length = max(len(s) for s in sequences)
            empty = [self.tokenizer.bos_id, self.tokenizer.eos_id] + [spec.pad_token] * (length - 2)
            sequences.append(empty)
        hidden, pooled = self._run(spec, model, sequences)
        if has_weights:
            z_empty = hidden[-1]
            w = torch.tensor(weights, dtype=hidden.dtype, device=hidden.device)[..., None]
            z = hidden[:len(chunks)]
            hidden = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
        hidden = hidden[:len(chunks)].reshape(1, -1, hidden.shape[-1])
        return hidden, pooled[0:1]

    def _run(self, spec: EncoderSpec, model: CLIPTextModel, sequences):
        if hasattr(type(model), "network"):  # checkpoint.py's lazy stand-in
            model = model.network()
        model = apply_patches(model, self.patches.get(spec.name, ()))  # runs are sequential: one worker thread
        ids = torch.tensor([[t if isinstance(t, int) else 0 for t in seq] for seq in sequences], device=self.device)
        embeds = model.embed_tokens(ids).to(self.dtype)
        replaced = False
        for row, seq in enumerate(sequences):
            for col, token in enumerate(seq):
                if isinstance(token, EmbeddingToken):
                    if token.vector.shape[-1] != embeds.shape[-1]:
                        continue  # an embedding for another encoder width: ComfyUI ignores it too
                    embeds[row, col] = token.vector.to(embeds)
                    replaced = True
        hidden, pooled = model.encode(ids, layer=spec.layer, final_layer_norm=spec.final_layer_norm,
                                      input_embeds=embeds if replaced else None)
        return hidden.float(), pooled.float()
