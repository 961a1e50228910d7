"""Weight patches (LoRA, LyCORIS, full diffs) applied in place on a shared network.

A MODEL or CLIP handle carries an immutable tuple of ``(PatchSet, strength)``
pairs. When the handle fetches its network, :func:`apply_patches` makes the
module hold exactly ``W0 + Σ strength·ΔW`` for that tuple and nothing else:
parameters patched for a previous tuple get their saved originals ``W0`` back;
the ones this tuple patches get ``W0 + Σ strength·ΔW``, summed in fp32 and cast
to the module's dtype (ComfyUI's order: each term added to an fp32 copy of the
weight). Only the touched parameters are saved (on the CPU), never a second
copy of the network, and the same tuple again costs one comparison.

Not thread-safe: runs are sequential (one worker thread), so two handles never
use one module at the same time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _f32(t: torch.Tensor, device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _scale(alpha: float | None, rank: int) -> float:
    """LoRA's ``alpha / rank`` (1 when the file stores no alpha)."""
    return 1.0 if alpha is None else alpha / rank


@dataclass(frozen=True, eq=False)
class LoRA:
    """ΔW = (alpha/rank) · up @ down (kohya ``lora_up/lora_down``, PEFT ``lora_B/lora_A``, LoCon on
    convs: up [out, r, 1, 1], down [r, in, kh, kw]). With a Tucker core ``mid`` [r, r, kh, kw]
    (LoCon's CP mode) down is 1x1 and mixed by the core first."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None

    def factors(self, device, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(strength·scale·up, down) as matrices: ΔW = their product."""
        up, down = _f32(self.up, device).flatten(1), _f32(self.down, device)
        rank = down.shape[0]
        if self.mid is not None:
            down = torch.einsum("a b h w, b i -> a i h w", _f32(self.mid, device), down.flatten(1))
        return (strength * _scale(self.alpha, rank)) * up, down.flatten(1)

    def numel(self) -> int:
        """The size of ΔW, from the factors' shapes alone."""
        columns = self.down[0].numel() if self.mid is None else self.down.shape[1] * self.mid[0, 0].numel()
        return self.up.shape[0] * columns

    def delta(self, shape, device, strength: float) -> torch.Tensor:
        up, down = self.factors(device, strength)
        return (up @ down).reshape(shape)


@dataclass(frozen=True, eq=False)
class LoHa:
    """ΔW = (alpha/rank) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), a Hadamard product of two low-rank
    products (LyCORIS LoHa); on convs with Tucker cores t1, t2, w*_a is [r, out] and w*_b [r, in]."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def numel(self) -> int:
        if self.t1 is not None:
            return self.w1_a.shape[1] * self.w1_b.shape[1] * self.t1[0, 0].numel()
        return self.w1_a.shape[0] * self.w1_b.shape[1]

    def delta(self, shape, device, strength: float) -> torch.Tensor:
        w1_a, w1_b, w2_a, w2_b = (_f32(t, device) for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b))
        if self.t1 is not None:
            m1 = torch.einsum("i j k l, j r, i p -> p r k l", _f32(self.t1, device), w1_b, w1_a)
            m2 = torch.einsum("i j k l, j r, i p -> p r k l", _f32(self.t2, device), w2_b, w2_a)
        else:
            m1, m2 = w1_a @ w1_b, w2_a @ w2_b
        return ((strength * _scale(self.alpha, self.w1_b.shape[0])) * (m1 * m2)).reshape(shape)


@dataclass(frozen=True, eq=False)
class LoKr:
    """ΔW = scale · w1 ⊗ w2 (Kronecker product, LyCORIS LoKr). Each factor is stored whole
    (``lokr_w1``) or as a low-rank pair (``lokr_w1_a @ lokr_w1_b``; w2 also with a Tucker core t2).
    scale = alpha / rank of the factored one (w2's when both are), 1 when neither is factored."""

    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None

    def numel(self) -> int:
        w1 = self.w1.numel() if self.w1 is not None else self.w1_a.shape[0] * self.w1_b.shape[1]
        if self.w2 is not None:
            return w1 * self.w2.numel()
        if self.t2 is not None:
            return w1 * self.w2_a.shape[1] * self.w2_b.shape[1] * self.t2[0, 0].numel()
        return w1 * self.w2_a.shape[0] * self.w2_b.shape[1]

    def delta(self, shape, device, strength: float) -> torch.Tensor:
        rank = None
        if self.w1 is not None:
            w1 = _f32(self.w1, device)
        else:
            w1, rank = _f32(self.w1_a, device) @ _f32(self.w1_b, device), self.w1_b.shape[0]
        if self.w2 is not None:
            w2 = _f32(self.w2, device)
        elif self.t2 is not None:
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", _f32(self.t2, device),
                              _f32(self.w2_b, device), _f32(self.w2_a, device))
            rank = self.w2_b.shape[0]
        else:
            w2, rank = _f32(self.w2_a, device) @ _f32(self.w2_b, device), self.w2_b.shape[0]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        scale = 1.0 if rank is None else _scale(self.alpha, rank)
        return ((strength * scale) * torch.kron(w1, w2)).reshape(shape)


@dataclass(frozen=True, eq=False)
class Diff:
    """ΔW stored whole (``.diff``, ``.diff_b`` for biases, LyCORIS ``w_norm``/``b_norm``)."""

    weight: torch.Tensor

    def numel(self) -> int:
        return self.weight.numel()

    def delta(self, shape, device, strength: float) -> torch.Tensor:
        return (strength * _f32(self.weight, device)).reshape(shape)


Adapter = LoRA | LoHa | LoKr | Diff


def add_delta(base: torch.Tensor, adapter: Adapter, strength: float, out: torch.Tensor) -> None:
    """out <- base + strength·ΔW (fp32, contiguous; ``out`` may be ``base``). A LoRA's ΔW is never
    formed: one matrix multiply-add reads base and writes out."""
    if isinstance(adapter, LoRA) and adapter.up.shape[0] == out.shape[0]:
        up, down = adapter.factors(out.device, strength)
        torch.addmm(base.view(out.shape[0], -1), up, down, out=out.view(out.shape[0], -1))
    else:
        torch.add(base, adapter.delta(out.shape, out.device, strength), out=out)


@dataclass(eq=False)
class PatchSet:
    """The adapters one file contributes to one network, by parameter key. Compared by identity,
    so a module records which sets it holds without comparing tensors."""

    name: str
    adapters: dict[str, Adapter]

    def __repr__(self) -> str:
        return f"PatchSet({self.name!r}, {len(self.adapters)} weights)"


Patches = tuple[tuple[PatchSet, float], ...]


def write_patched(param: torch.Tensor, original: torch.Tensor, terms) -> None:
    """param <- W0 + Σ strength·ΔW, each term added in turn in fp32 (in the parameter itself when it is
    fp32), then cast to the parameter's dtype. ``original`` may be the parameter (first patch)."""
    weight = param if param.dtype == torch.float32 else torch.empty_like(param, dtype=torch.float32)
    base = original.to(param.device, torch.float32)  # no copy when it already is
    for adapter, strength in terms:
        add_delta(base, adapter, strength, out=weight)
        base = weight
    if weight is not param:
        param.copy_(weight)


def _terms_by_key(patches: Patches) -> dict[str, list]:
    terms: dict[str, list] = {}
    for patch_set, strength in patches:
        for key, adapter in patch_set.adapters.items():
            terms.setdefault(key, []).append((adapter, strength))
    return terms


def apply_patches(module: torch.nn.Module, patches: Patches) -> torch.nn.Module:
    """Make ``module`` hold its original weights plus exactly ``patches`` (none: the originals).

    The applied tuple is recorded on the module (``_loom_patch_key``), the saved
    originals of the patched parameters in ``_loom_originals``.
    """
    if getattr(module, "_loom_patch_key", ()) == patches:
        return module
    module._loom_patch_key = None  # a failure half-way leaves the module marked as unknown
    originals: dict[str, torch.Tensor] = module.__dict__.setdefault("_loom_originals", {})
    terms = _terms_by_key(patches)
    with torch.inference_mode():  # parameters loaded under inference mode may only change under it
        for key in [k for k in originals if k not in terms]:
            module.get_parameter(key).copy_(originals.pop(key))
        for key, key_terms in terms.items():
            param = module.get_parameter(key)
            if key in originals:
                write_patched(param, originals[key], key_terms)
            else:  # the parameter still holds its original: save it, then patch in place
                originals[key] = param.detach().to("cpu", copy=True)
                write_patched(param, param, key_terms)
    module._loom_patch_key = patches
    return module
