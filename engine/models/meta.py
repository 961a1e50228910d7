"""Building a network on the meta device (shapes only, no memory) for weights that come from a file."""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_init = torch.nn.init
_INITIALISERS = frozenset((
    _init.uniform_, _init.normal_, _init.trunc_normal_, _init.constant_, _init.ones_, _init.zeros_, _init.eye_,
    _init.dirac_, _init.xavier_uniform_, _init.xavier_normal_, _init.kaiming_uniform_, _init.kaiming_normal_,
    _init.orthogonal_, _init.sparse_, torch.Tensor.normal_, torch.Tensor.uniform_))


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
