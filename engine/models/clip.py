"""The CLIP text transformer used by SD1 (CLIP-L), SD2 (OpenCLIP ViT-H) and SDXL (CLIP-L + OpenCLIP bigG).

One pre-norm causal transformer. Its parameter names are the transformers ("HF") layout that SD1 and
SDXL checkpoints store CLIP-L in (`text_model.encoder.layers.0.self_attn.q_proj.weight`,
`text_projection.weight`), which is also the layout LoRA files and ComfyUI name text-encoder weights
by. Checkpoints store the text encoders as:

    SD1    cond_stage_model.transformer.text_model.*         layout "hf"
    SD2    cond_stage_model.model.*                          layout "open_clip"
    SDXL   conditioner.embedders.0.transformer.text_model.*  layout "hf"        (CLIP-L)
           conditioner.embedders.1.model.*                   layout "open_clip" (bigG)

`clip_state_dict(sd, layout, prefix)` converts either layout to ours; `load_clip` also builds the model.

Which output each model uses (ComfyUI's defaults):
    SD1      encode(tokens)                                            last layer, final norm
             CLIPSetLastLayer -2 ("clip skip 2") -> layer=-2, final norm still applied
    SD2 (H)  encode(tokens, layer="penultimate")                       final norm applied
    SDXL L   encode(tokens, layer="penultimate", final_layer_norm=False)
    SDXL G   encode(tokens, layer="penultimate", final_layer_norm=False), pooled projected
SD1 pads with the end token 49407, SD2/SDXL-G pad with 0.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .meta import meta_device


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    max_positions: int = 77
    activation: str = "quick_gelu"  # OpenAI CLIP-L; OpenCLIP models use "gelu"
    projection_dim: int | None = None  # None: no text_projection (SD1's CLIP-L)
    eos_token_id: int = 49407

    @classmethod
    def clip_l(cls) -> "CLIPTextConfig":
        """OpenAI CLIP ViT-L/14 text tower (SD1, SDXL's first encoder)."""
        return cls()

    @classmethod
    def open_clip_h(cls) -> "CLIPTextConfig":
        """OpenCLIP ViT-H/14 text tower (SD2)."""
        return cls(width=1024, layers=24, heads=16, mlp_width=4096, activation="gelu", projection_dim=1024)

    @classmethod
    def open_clip_bigg(cls) -> "CLIPTextConfig":
        """OpenCLIP ViT-bigG/14 text tower (SDXL's second encoder)."""
        return cls(width=1280, layers=32, heads=20, mlp_width=5120, activation="gelu", projection_dim=1280)


ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
}


class Attention(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.heads = c.heads
        self.q_proj = nn.Linear(c.width, c.width)
        self.k_proj = nn.Linear(c.width, c.width)
        self.v_proj = nn.Linear(c.width, c.width)
        self.out_proj = nn.Linear(c.width, c.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(f(x), "b t (h d) -> b h t d", h=self.heads) for f in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))


class MLP(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.width, c.mlp_width)
        self.fc2 = nn.Linear(c.mlp_width, c.width)
        self.activation = ACTIVATIONS[c.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class Layer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.width)
        self.self_attn = Attention(c)
        self.layer_norm2 = nn.LayerNorm(c.width)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        c = self.config = config
        # Nested ModuleDicts only to reproduce the HF parameter names (`text_model.encoder.layers.N...`).
        self.text_model = nn.ModuleDict(dict(
            embeddings=nn.ModuleDict(dict(
                token_embedding=nn.Embedding(c.vocab_size, c.width),
                position_embedding=nn.Embedding(c.max_positions, c.width),
            )),
            encoder=nn.ModuleDict(dict(layers=nn.ModuleList(Layer(c) for _ in range(c.layers)))),
            final_layer_norm=nn.LayerNorm(c.width),
        ))
        self.text_projection = nn.Linear(c.width, c.projection_dim, bias=False) if c.projection_dim else None

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, width], without positions: edit these to insert textual-inversion
        vectors and pass them to `encode` as `input_embeds`."""
        return self.text_model.embeddings.token_embedding(tokens)

    def layer_index(self, layer: int | str) -> int:
        """0-based index of the layer whose output `encode` returns: "last" = -1, "penultimate" = -2,
        negative ints count from the end (-1 = last layer, -2 = "clip skip 2")."""
        index = {"last": -1, "penultimate": -2}.get(layer, layer)
        if not isinstance(index, int) or not -self.config.layers <= index < self.config.layers:
            raise ValueError(f"layer {layer!r} out of range for a {self.config.layers}-layer CLIP")
        return index % self.config.layers

    def encode(
        self,
        tokens: torch.Tensor,
        layer: int | str = -1,
        final_layer_norm: bool = True,
        input_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode token ids [B, T] (T <= max_positions) with causal attention.

        Returns (hidden, pooled):
          hidden  [B, T, width]  output of `layer`, through the final LayerNorm if `final_layer_norm`;
          pooled  [B, width or projection_dim]  the final-LayerNormed last layer at the first end token
                  (= argmax of the token ids, the end token being the largest id), times
                  `text_projection` when the model has one.
        `input_embeds` [B, T, width] replaces the token-embedding lookup (textual inversion); `tokens`
        still locate the end token.
        """
        index = self.layer_index(layer)
        tm = self.text_model
        x = self.embed_tokens(tokens) if input_embeds is None else input_embeds
        x = x + tm.embeddings.position_embedding.weight[: tokens.shape[1]]
        for i, block in enumerate(tm.encoder.layers):
            x = block(x)
            if i == index:
                hidden = x
        if final_layer_norm:
            hidden = tm.final_layer_norm(hidden)
        eos = (tokens == self.config.eos_token_id).int().argmax(dim=-1)
        pooled = tm.final_layer_norm(x)[torch.arange(x.shape[0], device=x.device), eos]
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return hidden, pooled


LAYOUTS = ("hf", "open_clip")
OPEN_CLIP_WIDTHS = (1024, 1280)  # ViT-H, ViT-bigG


def _under(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _from_hf(sd: dict) -> dict:
    """HF keys, with or without the `text_model.` level (older transformers files lack it).
    `embeddings.position_ids` (a buffer some files carry, sometimes corrupted) is dropped."""
    out = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key != "text_projection.weight" and not key.startswith("text_model."):
            key = "text_model." + key
        out[key] = value
    return out


_OPEN_CLIP_NAMES = [  # (OpenCLIP, ours)
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.", "text_model.final_layer_norm."),
]
_OPEN_CLIP_BLOCK_NAMES = [  # inside transformer.resblocks.N (OpenCLIP) / text_model.encoder.layers.N (ours)
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
]


def _from_open_clip(sd: dict) -> dict:
    """OpenCLIP text-tower keys to ours: the fused `attn.in_proj_{weight,bias}` is split into q, k, v
    (in that order) and `text_projection` [width, proj] (used as x @ P) becomes a Linear weight P^T."""
    out = {}
    for key, value in sd.items():
        if key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
            continue
        for old, new in _OPEN_CLIP_NAMES:
            if key.startswith(old):
                out[new + key[len(old):]] = value
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
        if m is None:
            continue
        layer, rest = f"text_model.encoder.layers.{m.group(1)}.", m.group(2)
        if fused := re.match(r"attn\.in_proj_(weight|bias)", rest):
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}_proj.{fused.group(1)}"] = part
        for old, new in _OPEN_CLIP_BLOCK_NAMES:
            if rest.startswith(old):
                out[layer + new + rest[len(old):]] = value
    return out


def clip_state_dict(state_dict: dict, layout: str, prefix: str = "") -> dict:
    """The text encoder under `prefix` (e.g. "cond_stage_model.transformer.",
    "conditioner.embedders.1.model.") renamed to our parameter names. Tensors are shared, not
    copied, except OpenCLIP's small transposed text_projection."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown CLIP layout {layout!r}; expected one of {LAYOUTS}")
    sd = _under(state_dict, prefix)
    return _from_hf(sd) if layout == "hf" else _from_open_clip(sd)


def detect_clip_config(state_dict: dict, layout: str, prefix: str = "", head_dim: int = 64) -> CLIPTextConfig:
    """Config from key names and shapes. Two things are not in the shapes: the head count, taken as
    width / head_dim (64 in every released CLIP), and the activation: gelu for the OpenCLIP layout and
    for the OpenCLIP widths (ViT-H 1024, bigG 1280) stored in the HF layout, else quick_gelu (OpenAI
    CLIP-L, and scaled-down HF-layout models)."""
    sd = clip_state_dict(state_dict, layout, prefix)
    tokens = sd["text_model.embeddings.token_embedding.weight"]
    width = tokens.shape[1]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    projection = sd.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=tokens.shape[0],
        width=width,
        layers=len(layers),
        heads=max(1, width // head_dim),
        mlp_width=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_positions=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        activation="gelu" if layout == "open_clip" or width in OPEN_CLIP_WIDTHS else "quick_gelu",
        projection_dim=None if projection is None else projection.shape[0],
        eos_token_id=tokens.shape[0] - 1,
    )


def load_clip(
    state_dict: dict, layout: str, prefix: str = "", config: CLIPTextConfig | None = None
) -> CLIPTextModel:
    """Build a CLIPTextModel from a checkpoint's text encoder (detecting the config unless given).
    The parameters share the state dict's tensors (same dtype and device; see `clip_state_dict`)."""
    config = config or detect_clip_config(state_dict, layout, prefix)
    with meta_device():
        model = CLIPTextModel(config)
    model.load_state_dict(clip_state_dict(state_dict, layout, prefix), strict=True, assign=True)
    return model.eval()
