"""Classifier-free guidance over a list of conditions: the x0 denoiser samplers call.

For each model call (ComfyUI's ``calc_cond_batch`` and ``cfg_function``):
every active entry of the positive and negative conditioning is evaluated on
its area (crop of x) with its weight (strength × mask, feathered area edges);
entries are batched into one network forward; the x0 predictions of each side
are averaged by weight; then ``uncond + (cond − uncond)·cfg``.  At cfg = 1
the negative side is not evaluated at all.  As in ComfyUI's ``process_conds``,
an entry with an area gets an opposite of the same area on the other side
(:func:`_add_same_area_opposites`), so both sides of the guidance see that crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..models.unet import sdxl_adm, sdxl_refiner_adm
from ..sd.control import control_to_uncond

AREA_FUZZ = 8  # latent px of linear feather at an area's inner edges
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)  # a black image in SD's latent space (ComfyUI)


@dataclass
class _Prepared:
    """One conditioning entry made ready for a given latent size."""

    context: torch.Tensor
    y: torch.Tensor | None
    area: tuple[int, int, int, int] | None
    weight: torch.Tensor  # [1, 1, h, w] strength × mask (× fuzz) over the area
    sigma_start: float
    sigma_end: float
    control: object
    concat: torch.Tensor | None


def _area_weight(cond, latent_hw, device) -> tuple[tuple | None, torch.Tensor]:
    h, w = latent_hw
    area = cond.area
    if area is not None and area[0] == "percentage":  # fractions of the latent (ConditioningSetAreaPercentage)
        _, ph, pw, py, px = area
        area = (max(1, round(ph * h)), max(1, round(pw * w)), round(py * h), round(px * w))
    if cond.mask is not None:
        mask = cond.mask.reshape(-1, *cond.mask.shape[-2:])[:1].to(device, torch.float32)
        mask = F.interpolate(mask[:, None], size=(h, w), mode="bilinear")[:, 0]
        if cond.set_area_to_bounds:
            nz = torch.nonzero(mask[0] > 0.5)
            if len(nz):
                y0, x0 = nz.min(0).values.tolist()
                y1, x1 = nz.max(0).values.tolist()
                area = (y1 - y0 + 1, x1 - x0 + 1, y0, x0)
    if area is not None:
        ah, aw, ay, ax = area
        ah, aw = min(h - ay, ah), min(w - ax, aw)
        area = (ah, aw, ay, ax)
    region_h, region_w = (area[0], area[1]) if area else (h, w)
    if cond.mask is not None:
        m = mask[:, area[2]:area[2] + area[0], area[3]:area[3] + area[1]] if area else mask
        weight = (m * cond.mask_strength)[:, None] * cond.strength
    else:
        weight = torch.full((1, 1, region_h, region_w), float(cond.strength), device=device)
        if area is not None:
            weight = _fuzz_edges(weight, area, (h, w))
    return area, weight


def _fuzz_edges(weight, area, full_hw):
    """Feather an area's edges that lie inside the image (ComfyUI: up to 8 px, at most a quarter)."""
    ah, aw, ay, ax = area
    for dim, (start, size, full) in enumerate(((ay, ah, full_hw[0]), (ax, aw, full_hw[1]))):
        axis = dim + 2
        rr = min(AREA_FUZZ, weight.shape[axis] // 4)
        for t in range(rr):
            factor = (t + 1) / rr
            if start != 0:
                weight.narrow(axis, t, 1).mul_(factor)
            if start + size < full:
                weight.narrow(axis, size - 1 - t, 1).mul_(factor)
    return weight


def _add_same_area_opposites(sides: list[list[_Prepared]]) -> None:
    """ComfyUI's ``create_cond_with_same_area_if_none``, for every entry with an area, positive then negative:
    unless the other side has an entry of exactly that area, append to it a copy of the entry whose prompt
    (context, pooled ``y``, concat) is that of the other side's entry that best encloses the area (the smallest
    enclosing area, else the first entry without one); area, weight, timestep range and ControlNet stay the
    entry's own. Without it the negative of an area is only the whole-latent prediction, and CFG amplifies
    the difference between a crop's prediction and the whole image's (noise in the area)."""
    for k, side in enumerate(sides):
        for entry in (e for e in side if e.area is not None):
            for other in sides[:k] + sides[k + 1:]:
                best = None
                for candidate in other:
                    if candidate.area is None:
                        best = candidate if best is None else best
                    elif _inside(entry.area, candidate.area) and (best is None or best.area is None or
                                                                 math.prod(best.area[:2]) > math.prod(candidate.area[:2])):
                        best = candidate
                if best is not None and best.area != entry.area:
                    other.append(replace(entry, context=best.context, y=best.y, concat=best.concat))


def _inside(area, outer) -> bool:
    """Whether ``area`` (h, w, y, x) lies within ``outer``."""
    h, w, y, x = area
    oh, ow, oy, ox = outer
    return y + h <= oy + oh and x + w <= ox + ow and y >= oy and x >= ox


class CFGDenoiser:
    """``D(x, sigma) -> x0`` with guidance, for a DiffusionModel and positive/negative conditioning."""

    def __init__(self, model, positive, negative, cfg: float, latent_shape, concat_latent=None, concat_mask=None):
        self.model = model
        self.prediction = model.prediction
        self.schedule = model.schedule
        self.cfg = float(cfg)
        self.options = model.options
        self.skip_uncond = math.isclose(self.cfg, 1.0) and not self.options.get("disable_cfg1_optimization")
        hw = tuple(latent_shape[-2:])
        self.sides = [self._prepare(positive, hw, "positive", concat_latent, concat_mask)]
        if not self.skip_uncond:
            negative = control_to_uncond(positive, negative)  # the old ControlNetApply guides the uncond too
            self.sides.append(self._prepare(negative, hw, "negative", concat_latent, concat_mask))
            _add_same_area_opposites(self.sides)

    def _prepare(self, conds, hw, prompt_type, concat_latent, concat_mask) -> list[_Prepared]:
        device = self.model.device
        out = []
        for cond in conds:
            area, weight = _area_weight(cond, hw, device)
            y = self._adm(cond, hw, prompt_type) if self.model.config.adm_in_channels else None
            concat = self._concat(cond, hw, concat_latent, concat_mask)
            out.append(_Prepared(cond.cross_attn.to(device), y, area, weight,
                                 self.schedule.percent_to_sigma(cond.start_percent),
                                 self.schedule.percent_to_sigma(cond.end_percent), cond.control, concat))
        return out

    def _adm(self, cond, hw, prompt_type):
        """SDXL's vector input: pooled text + size/crop (defaults: the latent's size in pixels)."""
        size = cond.size
        width, height = size.get("width", hw[1] * 8), size.get("height", hw[0] * 8)
        pooled = cond.pooled if cond.pooled is not None else torch.zeros(1, self.model.config.adm_in_channels)
        if self.model.family == "sdxl_refiner":
            score = size.get("aesthetic_score", 2.5 if prompt_type == "negative" else 6.0)
            return sdxl_refiner_adm(pooled, width, height, size.get("crop_w", 0), size.get("crop_h", 0), score)
        return sdxl_adm(pooled, width, height, size.get("crop_w", 0), size.get("crop_h", 0),
                        size.get("target_width", width), size.get("target_height", height))

    def _concat(self, cond, hw, concat_latent, concat_mask):
        """Extra input channels of inpainting models: the mask, then the masked image's latent.

        Without any mask ComfyUI feeds a mask of ones and the latent of a blank image.
        """
        if not self.model.is_inpaint:
            return None
        device = self.model.device
        mask = cond.concat_mask if cond.concat_mask is not None else concat_mask
        if mask is None:
            blank = torch.tensor(BLANK_INPAINT_LATENT).view(1, 4, 1, 1).expand(1, 4, *hw)
            return torch.cat([torch.ones(1, 1, *hw), blank], dim=1).to(device)
        mask = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=hw, mode="bilinear").round()
        latent = cond.concat_latent if cond.concat_latent is not None else concat_latent
        latent = self.model.latent_format.process_in(latent.float())
        if latent.shape[-2:] != hw:
            latent = F.interpolate(latent, size=hw, mode="bilinear")
        return torch.cat([mask[:1].expand(latent.shape[0], -1, -1, -1), latent], dim=1).to(device)

    # --- one model call -------------------------------------------------------
    def __call__(self, x, sigma, seed=None, **_):
        net = self.model.network()
        outs, counts = [], []
        jobs = []
        for side_index, side in enumerate(self.sides):
            outs.append(torch.zeros_like(x))
            counts.append(torch.full_like(x, 1e-37))
            s = float(sigma.reshape(-1)[0])
            for entry in side:
                if s > entry.sigma_start or s < entry.sigma_end:
                    continue
                jobs.append((side_index, entry))
        for group in _batches(jobs):
            self._run(net, x, sigma, group, outs, counts)
        denoised = [o / c for o, c in zip(outs, counts)]
        cond = denoised[0]
        uncond = denoised[1] if len(denoised) > 1 else None
        return self._combine(x, sigma, cond, uncond)

    def _run(self, net, x, sigma, group, outs, counts):
        pieces, contexts, ys, concats = [], [], [], []
        for _, entry in group:
            a = entry.area
            piece = x if a is None else x[:, :, a[2]:a[2] + a[0], a[3]:a[3] + a[1]]
            pieces.append(piece)
            contexts.append(entry.context.expand(piece.shape[0], -1, -1))
            if entry.y is not None:
                ys.append(entry.y.to(x.device).expand(piece.shape[0], -1))
            if entry.concat is not None:
                c = entry.concat
                c = c if a is None else c[:, :, a[2]:a[2] + a[0], a[3]:a[3] + a[1]]
                concats.append(c.expand(piece.shape[0], -1, -1, -1))
        x_in = torch.cat(pieces)
        sigma_in = sigma.reshape(-1).expand(x.shape[0]).repeat(len(group))
        context = _cat_contexts(contexts)
        net_in = self.prediction.calculate_input(sigma_in, x_in)
        if concats:
            net_in = torch.cat([net_in, torch.cat(concats).to(net_in)], dim=1)
        t = self.schedule.timestep(sigma_in).float()
        control = self._control(group, x_in, sigma_in, context, ys)
        dtype = self.model.dtype
        out = net(net_in.to(dtype), t, context.to(dtype), y=torch.cat(ys).to(dtype) if ys else None,
                  control=control).float()
        denoised = self.prediction.calculate_denoised(sigma_in, out, x_in)
        for (side_index, entry), d in zip(group, denoised.split([p.shape[0] for p in pieces])):
            w = entry.weight.to(d)
            a = entry.area
            if a is None:
                outs[side_index] += d * w
                counts[side_index] += w
            else:
                region = (slice(None), slice(None), slice(a[2], a[2] + a[0]), slice(a[3], a[3] + a[1]))
                outs[side_index][region] += d * w
                counts[side_index][region] += w

    def _control(self, group, x_in, sigma_in, context, ys):
        control = group[0][1].control  # a batch shares one ControlNet chain (see _batches)
        if control is None:
            return None
        return control.get_control(x_in, sigma_in, context, torch.cat(ys) if ys else None, self,
                                   batched_number=len(group))

    def _combine(self, x, sigma, cond, uncond):
        if uncond is None:
            result = cond
        elif "sampler_cfg_function" in self.options:
            args = {"cond": x - cond, "uncond": x - uncond, "cond_scale": self.cfg, "sigma": sigma, "input": x,
                    "cond_denoised": cond, "uncond_denoised": uncond}
            result = x - self.options["sampler_cfg_function"](args)
        else:
            result = uncond + (cond - uncond) * self.cfg
        for fn in self.options.get("sampler_post_cfg_function", ()):
            result = fn({"denoised": result, "cond_denoised": cond, "uncond_denoised": uncond,
                         "cond_scale": self.cfg, "sigma": sigma, "input": x})
        return result


def _batches(jobs):
    """Group entries that can share one forward: same area shape and the same ControlNet chain."""
    groups: list[list] = []
    for job in jobs:
        area = job[1].area
        shape = (area[0], area[1]) if area else None
        for group in groups:
            other = group[0][1].area
            if ((other[0], other[1]) if other else None) == shape and group[0][1].control is job[1].control:
                group.append(job)
                break
        else:
            groups.append([job])
    return groups


def _cat_contexts(contexts):
    """Concatenate cross-attention contexts of different token counts by repeating each to the lcm
    (repeating keys leaves attention unchanged), as ComfyUI does."""
    lengths = {c.shape[1] for c in contexts}
    if len(lengths) > 1:
        target = math.lcm(*lengths)
        contexts = [c.repeat(1, target // c.shape[1], 1) for c in contexts]
    return torch.cat(contexts)
