"""Noise from seeds, as ComfyUI draws it.

- `prepare_noise`: the initial noise of a KSampler, always drawn on the CPU in float32 from a
  generator seeded with the node's seed (ComfyUI reseeds the global CPU generator; a dedicated
  generator with the same seed gives the same stream).
- `default_noise_sampler`: the fresh noise of ancestral samplers, drawn on x's device.
- `BrownianTreeNoiseSampler`: the Brownian-motion increments of the SDE samplers (torchsde's tree,
  seeded as ComfyUI seeds it), consistent across queries of nested intervals.
"""

import warnings

import torch


def prepare_noise(latent, seed, batch_index=None):
    """The KSampler's initial noise for `latent` [B, C, H, W] (ComfyUI `comfy/sample.py`).

    One float32 draw of the latent's full shape on the CPU, cast to the latent's dtype; the shape
    decides the stream, so batch element k gets the numbers after those of elements 0..k-1.
    With `batch_index` (LatentFromBatch, RepeatLatentBatch) noise is drawn one [1, C, H, W] slice at
    a time for positions 0..max(batch_index), and element k gets the slice of its original position.
    """
    generator = torch.Generator("cpu").manual_seed(seed)

    def draw(shape):
        return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu").to(latent.dtype)

    if batch_index is None:
        return draw(latent.shape)
    slices = [draw((1,) + tuple(latent.shape[1:])) for _ in range(max(batch_index) + 1)]
    return torch.cat([slices[i] for i in batch_index], dim=0)


def inpaint_noise(noise, seed):
    """The noise ComfyUI's `ddim` sampler re-noises the kept region of an inpainted latent with:
    a fresh CPU draw seeded with seed + 1 (other samplers reuse the initial noise)."""
    seed = 41 if seed is None else seed
    generator = torch.Generator("cpu").manual_seed(seed + 1)
    return torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)


def default_noise_sampler(x, seed=None):
    """Fresh N(0, I) noise shaped like x for each ancestral step, from a generator on x.device.

    On the CPU the seed is offset by 1 so that it does not repeat the initial noise's stream
    (ComfyUI's rule). Without a seed it draws from torch's global generator.
    """
    generator = None
    if seed is not None:
        if x.device.type == "cpu":
            seed += 1
        generator = torch.Generator(device=x.device).manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


class BrownianTreeNoiseSampler:
    """Normalised Brownian increments (W(t_next) - W(t)) / sqrt(|t_next - t|) with time t = sigma,
    for the SDE samplers (k-diffusion's BrownianTreeNoiseSampler, which ComfyUI uses).

    The path is torchsde's BrownianTree (Li et al. 2020, "Scalable Gradients for SDEs", the
    Brownian-interval/tree construction), built on the CPU over [smallest nonzero sigma, largest
    sigma] with the seed as its entropy — exactly as ComfyUI builds it — so SDE samplers reproduce
    ComfyUI's pixels, and any query order sees the same path.
    """

    def __init__(self, x, sigma_min, sigma_max, seed=None):
        import torchsde

        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, ()).item())
        self.device, self.dtype = x.device, x.dtype
        t0, t1 = torch.as_tensor(sigma_min).cpu(), torch.as_tensor(sigma_max).cpu()
        t0, t1, self.sign = (t0, t1, 1.0) if t0 < t1 else (t1, t0, -1.0)
        self.tree = torchsde.BrownianTree(t0, torch.zeros(x.shape, dtype=x.dtype), t1, entropy=seed)

    def __call__(self, sigma, sigma_next):
        t0, t1 = torch.as_tensor(sigma).cpu().float(), torch.as_tensor(sigma_next).cpu().float()
        t0, t1, sign = (t0, t1, 1.0) if t0 < t1 else (t1, t0, -1.0)
        with warnings.catch_warnings():  # float32 queries at the interval ends trip torchsde's range check
            warnings.filterwarnings("ignore", message="Should have", module="torchsde")
            w = self.tree(t0, t1).to(self.device, self.dtype) * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt().to(self.device)
