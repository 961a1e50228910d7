"""Noise from seeds, as ComfyUI draws it.

- `prepare_noise`: the initial noise of a KSampler, always drawn on the CPU in float32 from a
  generator seeded with the node's seed (ComfyUI reseeds the global CPU generator; a dedicated
  generator with the same seed gives the same stream).
- `default_noise_sampler`: the fresh noise of ancestral samplers, drawn on x's device.
- `BrownianTreeNoiseSampler`: the Brownian-motion increments of the SDE samplers, consistent
  across queries of nested intervals (so step size changes keep the same path).
"""

import math

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


_MASK64 = (1 << 64) - 1


def _splitmix64(state):
    """One SplitMix64 output (Steele et al. 2014): a well-mixed 64-bit hash of `state`."""
    z = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class BrownianTree:
    """A Brownian motion W on [t0, t1] with W(t0) = 0, reproducible from a seed.

    W is defined by recursive bisection (Lévy's construction): W(t1) ~ N(0, t1 - t0), and the
    midpoint of an interval whose ends are known is their mean plus N(0, width / 4). Each node of the
    bisection tree draws its normal from its own generator, seeded by hashing the parent's seed (with
    distinct hashes for the root's end point and for each bridge), so W(t) is a fixed function of
    (seed, t): any query, in any order, sees the same path. Below `tol` the value inside the last
    interval is a Brownian bridge sample seeded the same way.
    Nothing is cached, so memory stays at one tensor per level. Values are float32 on the CPU.

    This has the same law as torchsde's BrownianTree but not its random numbers.
    """

    def __init__(self, t0, t1, shape, seed, tol=1e-6):
        self.t0, self.t1 = float(t0), float(t1)
        self.shape, self.tol = tuple(shape), tol
        self.root_seed = _splitmix64(seed & _MASK64)
        self.w1 = self._normal(_splitmix64(self.root_seed ^ 4)) * math.sqrt(self.t1 - self.t0)

    def _normal(self, node_seed):
        generator = torch.Generator("cpu").manual_seed(node_seed & ((1 << 63) - 1))
        return torch.randn(self.shape, generator=generator)

    def __call__(self, t):
        """W(t) for t0 <= t <= t1 (clamped into the interval)."""
        t = min(max(float(t), self.t0), self.t1)
        a, b, w_a, w_b, node = self.t0, self.t1, torch.zeros(self.shape), self.w1, self.root_seed
        while b - a > self.tol:
            if t == a:
                return w_a
            if t == b:
                return w_b
            m = 0.5 * (a + b)
            w_m = 0.5 * (w_a + w_b) + self._normal(node) * math.sqrt((b - a) / 4)
            if t < m:
                b, w_b, node = m, w_m, _splitmix64(node ^ 1)
            else:
                a, w_a, node = m, w_m, _splitmix64(node ^ 2)
        if b <= a:  # a single-point interval
            return w_a
        # Brownian bridge from (a, w_a) to (b, w_b), evaluated at t
        u = (t - a) / (b - a)
        return w_a + u * (w_b - w_a) + self._normal(_splitmix64(node ^ 3)) * math.sqrt((b - a) * u * (1 - u))


class BrownianTreeNoiseSampler:
    """Normalised Brownian increments (W(t_next) - W(t)) / sqrt(|t_next - t|) with time t = sigma,
    for the SDE samplers (k-diffusion's BrownianTreeNoiseSampler; ComfyUI builds the tree on the CPU
    over [smallest nonzero sigma, largest sigma]).

    The tree is reproducible per seed, but its numbers differ from torchsde's, so SDE samplers do
    not reproduce ComfyUI's pixels bit for bit (same distribution, different draw).
    """

    def __init__(self, x, sigma_min, sigma_max, seed=None):
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, ()).item())
        self.device, self.dtype = x.device, x.dtype
        self.tree = BrownianTree(float(sigma_min), float(sigma_max), x.shape, seed)

    def __call__(self, sigma, sigma_next):
        t0, t1 = float(sigma), float(sigma_next)
        dw = self.tree(t1) - self.tree(t0)
        return (dw / math.sqrt(abs(t1 - t0))).to(self.device, self.dtype)
