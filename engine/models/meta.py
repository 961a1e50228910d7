"""Building a network on the meta device (shapes only, no memory) for weights that come from a file."""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_INITIALISERS = frozenset(
    [getattr(torch.nn.init, name) for name in (
        "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
        "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_") if hasattr(torch.nn.init, name)]
    + [torch.Tensor.normal_, torch.Tensor.uniform_])


class _SkipInitialisers(TorchFunctionMode):
    """Parameter initialisers return their tensor untouched (torch function modes are per thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device():
    """Modules built inside have their parameters on the meta device, and their initialisers are skipped: random
    values mean nothing there, and torch's meta ``normal_`` (every ``nn.Embedding``'s) imports ``torch._dynamo`` on
    first use, which was 2-3 s of the first text encode in a cold run."""
    with torch.device("meta"), _SkipInitialisers():
        yield
