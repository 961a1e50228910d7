"""The CONTROL_NET value and what sampling asks of it (ComfyUI's ControlBase / ControlNet / T2IAdapter).

A loader returns a control with no hint. An apply node makes a copy holding the hint image, the
strength, the (start, end) percent of the sampling run it acts in and the previous control of the
chain, and stores it in the ``control`` field of its Cond entries. At each model call CFGDenoiser
asks the chain's head ``get_control(x, sigma, context, y, guider)`` for the residuals that
``UNetModel.forward(control=...)`` adds: every link adds its own (× strength) to those of the link
before it, and outside its sigma range a link passes only the previous links' residuals on.
"""
from __future__ import annotations

import copy
import math

import torch

from ..errors import LoomError
from ..imageops import resize_bchw

LATENT_TO_PIXELS = 8  # an SD latent pixel covers 8x8 image pixels; hints are resized to match


class ControlBase:
    """One link of a control chain; subclasses compute the link's own residuals."""

    def __init__(self, ref, config, name: str):
        self.ref = ref  # engine.memory.ModelRef of the network
        self.config = config
        self.name = name
        self.hint: torch.Tensor | None = None  # [B, C, H, W] in 0..1
        self.strength = 1.0
        self.percent = (0.0, 1.0)
        self.previous: ControlBase | None = None
        self.vae = None
        self.apply_to_uncond = False
        self._cached = (None, None)  # (key, tensors) of the last hint size

    def applied(self, hint: torch.Tensor, strength: float, percent=(0.0, 1.0), previous=None, vae=None,
                apply_to_uncond: bool = False) -> "ControlBase":
        """A copy carrying `hint` (an IMAGE moved to [B,C,H,W]) and its settings, chained after `previous`."""
        link = copy.copy(self)
        link.hint = hint
        link.strength = float(strength)
        link.percent = (float(percent[0]), float(percent[1]))
        link.previous = previous
        link.vae = vae
        link.apply_to_uncond = apply_to_uncond
        link._cached = (None, None)
        return link

    def chain(self) -> list["ControlBase"]:
        """The links from this one back to the first."""
        links, link = [], self
        while link is not None:
            links.append(link)
            link = link.previous
        return links

    def sigma_range(self, schedule) -> tuple[float, float]:
        """(sigma at start_percent, sigma at end_percent): the link acts for sigmas in between."""
        return schedule.percent_to_sigma(self.percent[0]), schedule.percent_to_sigma(self.percent[1])

    def get_control(self, x, sigma, context, y, guider, batched_number: int | None = None) -> dict | None:
        """Residuals of the chain for latents `x` (sampler space) at per-row `sigma`, or None.

        `batched_number` is how many conditioning entries share the batch (ComfyUI's rule for a hint
        batch of several images); by default it is inferred from the hint's batch size.
        """
        previous = None
        if self.previous is not None:
            previous = self.previous.get_control(x, sigma, context, y, guider, batched_number)
        if self.hint is None:
            raise LoomError(f"ControlNet {self.name} has no hint image: connect it through an Apply ControlNet node")
        start, end = self.sigma_range(guider.schedule)
        s = float(sigma.reshape(-1)[0])
        if s > start or s < end:
            return previous
        own = self.residuals(x, sigma, context, y, guider, batched_number)
        return merge_controls(scale_control(own, self.strength), previous)

    def residuals(self, x, sigma, context, y, guider, batched_number) -> dict:
        raise NotImplementedError

    def _resized_hint(self, height, width, device, dtype) -> torch.Tensor:
        """The hint resized (nearest-exact, centre crop) to `height x width`, as ComfyUI's common_upscale."""
        return resize_bchw(self.hint.float(), width, height, "nearest-exact", "center").to(device, dtype)

    def _cache(self, key, make):
        """The value of `make()` for `key`; only the last key is kept (the hint's size rarely changes)."""
        if self._cached[0] != key:
            self._cached = (key, make())
        return self._cached[1]

    def cache_nbytes(self) -> int:
        from ..cache import nbytes

        own = nbytes(self.hint) + nbytes(self._cached[1])
        return own + (self.previous.cache_nbytes() if self.previous is not None else 0)

    def __repr__(self) -> str:
        links = " <- ".join(f"{link.name}×{link.strength:g}" for link in self.chain())
        return f"{type(self).__name__}({links})"


class ControlNet(ControlBase):
    """A ControlNet network (engine.models.controlnet.ControlNetModel) with its hint."""

    def __init__(self, ref, config, name: str, global_average_pooling: bool = False):
        super().__init__(ref, config, name)
        self.global_average_pooling = global_average_pooling

    def residuals(self, x, sigma, context, y, guider, batched_number):
        net = self.ref.get()
        weight = next(net.parameters())
        expected = self.config.unet.context_dim
        if expected is not None and context.shape[-1] != expected:
            raise LoomError(f"ControlNet {self.name} expects text embeddings of width {expected}, the model "
                            f"gives {context.shape[-1]}: it was made for another model family")
        height, width = x.shape[-2] * LATENT_TO_PIXELS, x.shape[-1] * LATENT_TO_PIXELS
        hint = self._cache((height, width, weight.device, weight.dtype),
                           lambda: self._resized_hint(height, width, weight.device, weight.dtype))
        hint = broadcast_to_batch(hint, x.shape[0], batched_number)
        x_in = guider.prediction.calculate_input(sigma, x)
        t = guider.schedule.timestep(sigma).float()
        out = net(x_in.to(weight.device, weight.dtype), hint, t.to(weight.device), context.to(weight.device),
                  y=y.to(weight.device) if y is not None and self.config.unet.adm_in_channels else None)
        if self.global_average_pooling:  # shuffle ControlNets: only the mean of each channel acts
            out = {key: [r.mean(dim=(2, 3), keepdim=True).expand_as(r) for r in rs] for key, rs in out.items()}
        return out


class T2IAdapter(ControlBase):
    """A T2I-Adapter: features of the hint alone, computed once per size and reused at every step."""

    def residuals(self, x, sigma, context, y, guider, batched_number):
        net = self.ref.get()
        weight = next(net.parameters())
        step = net.config.unshuffle
        height = math.ceil(x.shape[-2] * LATENT_TO_PIXELS / step) * step
        width = math.ceil(x.shape[-1] * LATENT_TO_PIXELS / step) * step

        def features():
            hint = self._resized_hint(height, width, weight.device, weight.dtype)
            if net.input_channels == 1 and hint.shape[1] > 1:
                hint = hint.mean(dim=1, keepdim=True)
            return net(hint)

        out = self._cache((height, width, weight.device, weight.dtype), features)
        return {key: [None if r is None else broadcast_to_batch(r, x.shape[0], batched_number) for r in rs]
                for key, rs in out.items()}


def scale_control(control: dict, strength: float) -> dict:
    return {key: [None if r is None else r * strength for r in rs] for key, rs in control.items()}


def merge_controls(own: dict, previous: dict | None) -> dict:
    """Add a previous link's residuals to this link's, list position by list position (ComfyUI's
    ``control_merge``): a None on either side takes the other, extra entries are appended."""
    out = {key: list(own.get(key, [])) for key in ("input", "middle", "output")}
    for key, theirs in (previous or {}).items():
        mine = out.setdefault(key, [])
        for i, r in enumerate(theirs):
            if i >= len(mine):
                mine.append(r)
            elif r is not None:
                mine[i] = r if mine[i] is None else r + mine[i]
    return out


def broadcast_to_batch(tensor: torch.Tensor, batch: int, batched_number: int | None) -> torch.Tensor:
    """A hint (or feature) batch for `batch` rows made of `batched_number` conditioning entries
    (ComfyUI's ``broadcast_image_to``): each entry's rows get the first images, cycled; one image is
    left to broadcast."""
    if tensor.shape[0] in (1, batch):
        return tensor
    entries = batched_number or max(1, batch // tensor.shape[0])
    per_entry = batch // entries
    tensor = tensor[:per_entry]
    if tensor.shape[0] < per_entry:
        tensor = tensor.repeat(math.ceil(per_entry / tensor.shape[0]), 1, 1, 1)[:per_entry]
    return tensor.repeat(entries, 1, 1, 1)


def control_to_uncond(positive: list, negative: list) -> list:
    """ComfyUI's ``control_apply_to_uncond`` (ControlNetApply, the old node): the controls of positive
    entries that ask for it (and cover the whole image) are given to the negative entries without an
    area, unless a negative entry already has a control. The k-th control goes to the
    (k mod n)-th such negative entry; a later control replaces an earlier one there."""
    controls = [c.control for c in positive
                if c.area is None and c.control is not None and c.control.apply_to_uncond]
    if not controls or any(c.area is None and c.control is not None for c in negative):
        return negative
    free = [i for i, c in enumerate(negative) if c.area is None]
    if not free:
        return negative
    out = list(negative)
    for k, control in enumerate(controls):
        i = free[k % len(free)]
        out[i] = negative[i].replace(control=control)
    return out
