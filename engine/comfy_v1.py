"""Run node classes written for ComfyUI's classic (V1) API.

A V1 class declares ``INPUT_TYPES()``, ``RETURN_TYPES``, ``FUNCTION`` and
friends (comfyui.md §2.1).  :func:`adapt_v1_class` turns one into a Loom
:class:`~engine.schema.Node` so simple custom nodes from a ComfyUI install run
unchanged.  Hidden inputs (PROMPT, UNIQUE_ID ...) are not provided.
"""
from __future__ import annotations

import math

from .schema import Input, Node, NodeOutput, Output

_OPTION_KEYS = {"default": "default", "min": "min", "max": "max", "step": "step", "round": "round",
                "multiline": "multiline", "forceInput": "force_input", "lazy": "lazy", "tooltip": "tooltip",
                "control_after_generate": "control_after_generate", "image_upload": "upload"}


def input_from_spec(name: str, spec, optional: bool) -> Input:
    """One ``(TYPE, options)`` entry of ``INPUT_TYPES`` as an :class:`Input`."""
    spec = tuple(spec) if isinstance(spec, (list, tuple)) else (spec,)
    type_, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    kwargs = {}
    if isinstance(type_, (list, tuple)):
        kwargs["options"] = tuple(str(o) for o in type_)
        type_ = "COMBO"
    elif type_ == "COMBO":
        kwargs["options"] = tuple(str(o) for o in opts.get("options", ()))
    for key, field_name in _OPTION_KEYS.items():
        if key in opts:
            value = opts[key]
            if field_name == "upload":
                value = "image" if value else None
            elif field_name == "control_after_generate":
                value = bool(value)
            kwargs[field_name] = value
    if type_ == "INT" and name in ("seed", "noise_seed") and "control_after_generate" not in kwargs:
        kwargs["control_after_generate"] = True
    return Input(name=name, type=str(type_), optional=optional, **kwargs)


def adapt_v1_class(type_name: str, cls, display_name: str | None = None) -> type[Node]:
    spec = cls.INPUT_TYPES()
    inputs = [input_from_spec(n, s, False) for n, s in (spec.get("required") or {}).items()]
    inputs += [input_from_spec(n, s, True) for n, s in (spec.get("optional") or {}).items()]
    return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
    return_names = tuple(getattr(cls, "RETURN_NAMES", None) or return_types)
    outputs = [Output(name=str(n), type=str(t)) for n, t in zip(return_names, return_types)]

    def execute(self, **kwargs):
        instance = cls()
        result = getattr(instance, cls.FUNCTION)(**kwargs)
        if isinstance(result, dict):
            return NodeOutput(tuple(result.get("result") or ()), result.get("ui") or {})
        return tuple(result)

    def check_lazy(self, **kwargs):
        instance = cls()
        if hasattr(instance, "check_lazy_status"):
            return list(instance.check_lazy_status(**kwargs) or [])
        return []

    def fingerprint(inner_cls, **literals):
        if not hasattr(cls, "IS_CHANGED"):
            return None
        value = cls.IS_CHANGED(**literals)
        if isinstance(value, float) and math.isnan(value):
            return object()  # never equal: always re-run, as in ComfyUI
        return repr(value)

    def validate(inner_cls, **literals):
        if not hasattr(cls, "VALIDATE_INPUTS"):
            return None
        try:
            outcome = cls.VALIDATE_INPUTS(**literals)
        except TypeError:
            return None  # validators taking linked inputs or input_types are not supported
        return None if outcome is True else str(outcome)

    attrs = {
        "TYPE": type_name,
        "DISPLAY_NAME": display_name or type_name,
        "CATEGORY": getattr(cls, "CATEGORY", "custom"),
        "DESCRIPTION": getattr(cls, "DESCRIPTION", ""),
        "INPUTS": tuple(inputs),
        "OUTPUTS": tuple(outputs),
        "OUTPUT_NODE": bool(getattr(cls, "OUTPUT_NODE", False)),
        "NOT_IDEMPOTENT": bool(getattr(cls, "NOT_IDEMPOTENT", False)),
        "execute": execute,
        "check_lazy": check_lazy,
        "fingerprint": classmethod(fingerprint),
        "validate": classmethod(validate),
        "__module__": cls.__module__,
    }
    return type(f"V1_{type_name}", (Node,), attrs)
