"""One device and dtype policy for every model.

CUDA, then MPS, then CPU when the choice is ``auto``.  Compute dtype: fp16
or bf16 on GPUs, on the CPU bf16 where the CPU supports it, else fp32 — never
fp16 compute on the CPU (about 100x slower there); with ``auto`` on the CPU,
VAEs compute in fp32 (:attr:`DevicePolicy.vae_dtype`).  ``fp32`` is the
reference mode that reproduces ComfyUI's CPU pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import LoomError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """True when bf16 matmuls run natively (oneDNN reports AVX512-BF16/AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: faster than fp32 there, where emulated it is many times slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise LoomError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LoomError("--device cuda was asked for, but this PyTorch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LoomError("--device mps was asked for, but MPS is not available here")
    return torch.device(name)


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    if precision not in PRECISIONS:
        raise LoomError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device.type == "cpu":
        if precision == "fp16":
            raise LoomError("fp16 compute on the CPU is about 100x slower than fp32; use --precision bf16 or fp32")
        if precision == "auto":
            return torch.bfloat16 if supports_bf16(device) else torch.float32
        return _DTYPES[precision]
    if precision == "auto":
        if supports_bf16(device):
            return torch.bfloat16
        return torch.float16
    return _DTYPES[precision]


def resolve_vae_dtype(device: torch.device, precision: str, dtype: torch.dtype) -> torch.dtype:
    """What VAEs compute in: fp32 on the CPU unless bf16 is asked for by name (ComfyUI's CPU VAE dtype); never
    fp16, which overflows in SD VAEs (bf16 on GPUs that have it, else fp32); otherwise the compute dtype."""
    if device.type == "cpu" and precision == "auto":
        return torch.float32
    if dtype == torch.float16:
        return torch.bfloat16 if supports_bf16(device) else torch.float32
    return dtype


@dataclass
class DevicePolicy:
    device: torch.device
    dtype: torch.dtype
    # What VAEs compute in (resolve_vae_dtype). On the CPU bf16 all through a VAE (unlike autocast, which keeps
    # norms and sums in fp32) moves colours: 25 levels on average for the shipped shapes autoencoder, whose signal
    # rides next to large constant channels; and a VAE is a small share of a run.
    vae_dtype: torch.dtype

    def describe(self) -> str:
        name = f"{self.device.type} {_dtype_name(self.dtype)}"
        return name + (f" (VAE {_dtype_name(self.vae_dtype)})" if self.vae_dtype != self.dtype else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


_policy: DevicePolicy | None = None


def configure(device: str = "auto", precision: str = "auto") -> DevicePolicy:
    """Decide device and dtype once (CLI flags or editor settings)."""
    global _policy
    dev = resolve_device(device)
    dtype = resolve_dtype(dev, precision)
    _policy = DevicePolicy(dev, dtype, resolve_vae_dtype(dev, precision, dtype))
    return _policy


def policy() -> DevicePolicy:
    return _policy or configure()


# --- loaded models ------------------------------------------------------------------

def module_nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def default_budget_bytes() -> int:
    """Three quarters of the machine's RAM (or of the GPU's memory when models live there)."""
    try:
        import os

        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 1024**3
    if _policy is not None and _policy.device.type == "cuda":
        ram = torch.cuda.get_device_properties(_policy.device).total_memory
    return int(ram * 0.75)


class ModelManager:
    """Keeps loaded networks across runs and workflows; evicts the least recently used over budget.

    Values in the output cache hold :class:`ModelRef` handles, not weights, so
    evicting a network here really frees it; a later use reloads it from its file.
    """

    def __init__(self, budget_bytes: int | None = None):
        from collections import OrderedDict

        self.budget_bytes = budget_bytes
        self._models: "OrderedDict[tuple, tuple[torch.nn.Module, int]]" = OrderedDict()
        self.loads = 0
        self.log: list[str] = []

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._models.values())

    def __contains__(self, key) -> bool:
        return key in self._models

    def get(self, key: tuple, load) -> torch.nn.Module:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key][0]
        module = load()
        size = module_nbytes(module)
        self.loads += 1
        self._models[key] = (module, size)
        self.log.append(f"loaded {key[0]} ({size / 2**20:.0f} MiB)")
        self._evict(keep=key)
        return module

    def _evict(self, keep) -> None:
        budget = self.budget_bytes if self.budget_bytes is not None else default_budget_bytes()
        while self.bytes > budget and len(self._models) > 1:
            oldest = next(iter(self._models))
            if oldest == keep:
                break
            _, size = self._models.pop(oldest)
            self.log.append(f"unloaded {oldest[0]} ({size / 2**20:.0f} MiB) to stay within the memory budget")

    def clear(self) -> None:
        self._models.clear()


_manager: ModelManager | None = None


def model_manager() -> ModelManager:
    global _manager
    if _manager is None:
        _manager = ModelManager()
    return _manager


class ModelRef:
    """A handle on one network: what it is and how to load it, not the weights themselves."""

    def __init__(self, key: tuple, load):
        self.key = key
        self._load = load

    def get(self) -> torch.nn.Module:
        return model_manager().get(self.key, self._load)

    def cache_nbytes(self) -> int:
        return 0
