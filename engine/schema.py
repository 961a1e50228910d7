"""How a node type declares itself: inputs, outputs, version, behaviour.

A node type is a subclass of :class:`Node` whose class attributes are plain data,
so the editor, the CLI, validation and the ComfyUI importer all read one
declaration.  ``execute`` is a pure function of its inputs; randomness comes
from a seed input and files outside the graph enter the cache key through
``fingerprint``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

# Socket types whose values are edited in place (widgets) rather than linked.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")


@dataclass(frozen=True)
class Input:
    """One input of a node type.

    ``options`` may be a sequence or a zero-argument callable returning one
    (model file lists are read when asked for, so new files appear without a
    restart).  ``control_after_generate`` marks seed-like INT inputs that
    carry a fixed/increment/decrement/randomize control.
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    options: Sequence[str] | Callable[[], Sequence[str]] | None = None
    optional: bool = False
    lazy: bool = False
    multiline: bool = False
    force_input: bool = False
    control_after_generate: bool = False
    upload: str | None = None
    tooltip: str = ""

    @property
    def is_widget(self) -> bool:
        """True when the value is edited on the node, not only linked."""
        return self.type in WIDGET_TYPES and not self.force_input

    def option_list(self) -> list[str]:
        opts = self.options() if callable(self.options) else self.options
        return list(opts or [])

    def default_value(self) -> Any:
        if self.default is not None:
            return self.default
        if self.type == "COMBO":
            opts = self.option_list()
            return opts[0] if opts else ""
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        for key in ("min", "max", "step", "round", "upload"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.is_widget or self.default is not None:
            d["default"] = self.default_value()
        if self.type == "COMBO":
            d["options"] = self.option_list()
        for key in ("optional", "lazy", "multiline", "force_input", "control_after_generate"):
            if getattr(self, key):
                d[key] = True
        if self.tooltip:
            d["tooltip"] = self.tooltip
        return d


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    tooltip: str = ""

    def to_json(self) -> dict:
        d = {"name": self.name, "type": self.type}
        if self.tooltip:
            d["tooltip"] = self.tooltip
        return d


@dataclass
class NodeOutput:
    """What ``execute`` may return instead of a bare tuple: values plus UI data.

    ``ui`` is shown by the editor and the CLI (e.g. ``{"images": [paths]}``).
    """

    values: tuple = ()
    ui: dict = field(default_factory=dict)


class NodeContext:
    """What a running node may ask of the engine: progress, cancellation, paths.

    The executor gives each execution its own context; nodes call
    ``self.ctx.progress(fraction)`` in long loops, which also raises
    :class:`engine.errors.Cancelled` when the run was cancelled.
    """

    def __init__(self, node_id: str = "", *, report=None, cancel=None, paths=None, run_info=None):
        self.node_id = node_id
        self._report = report
        self._cancel = cancel
        self.paths = paths
        self.run_info = run_info if run_info is not None else {}

    def check_cancelled(self) -> None:
        if self._cancel is not None:
            self._cancel.check()

    def progress(self, fraction: float, preview=None, text: str | None = None) -> None:
        self.check_cancelled()
        if self._report is not None:
            self._report(self.node_id, max(0.0, min(1.0, float(fraction))), preview, text)


class Node:
    """Base class of every node type.  Subclasses set the class attributes."""

    TYPE: ClassVar[str] = ""
    DISPLAY_NAME: ClassVar[str] = ""
    CATEGORY: ClassVar[str] = "misc"
    DESCRIPTION: ClassVar[str] = ""
    INPUTS: ClassVar[Sequence[Input]] = ()
    OUTPUTS: ClassVar[Sequence[Output]] = ()
    OUTPUT_NODE: ClassVar[bool] = False
    VERSION: ClassVar[int] = 1
    # Never served from the cache (e.g. a node that reads the clock).
    NOT_IDEMPOTENT: ClassVar[bool] = False
    # Frontend-only types (notes, reroutes) never execute.
    VIRTUAL: ClassVar[bool] = False

    def __init__(self, ctx: NodeContext | None = None):
        self.ctx = ctx or NodeContext()

    def execute(self, **inputs) -> tuple | NodeOutput:
        raise NotImplementedError(f"{self.TYPE} does not implement execute()")

    def check_lazy(self, **inputs) -> list[str]:
        """Names of lazy inputs needed, given the evaluated ones (unevaluated are None)."""
        return []

    @classmethod
    def fingerprint(cls, **literals) -> Any:
        """Extra cache-key material for inputs living outside the graph (a file's hash)."""
        return None

    @classmethod
    def validate(cls, **literals) -> str | None:
        """Return an error message for literal inputs that the declared ranges cannot express."""
        return None

    @classmethod
    def virtual_output(cls, node, slot: int):
        """For VIRTUAL types: what a link from output ``slot`` means when the graph runs.

        Return ``("link", (src_id, src_slot))`` to follow a link (a reroute),
        ``("value", v)`` to use a literal (a primitive), or ``None`` for nothing.
        """
        return None

    @classmethod
    def migrate(cls, from_version: int, values: dict) -> dict:
        """Bring the literal values saved by an older version up to ``VERSION``."""
        return values

    # --- schema helpers -------------------------------------------------
    @classmethod
    def input(cls, name: str) -> Input | None:
        for inp in cls.INPUTS:
            if inp.name == name:
                return inp
        return None

    @classmethod
    def widget_inputs(cls) -> list[Input]:
        return [i for i in cls.INPUTS if i.is_widget]

    @classmethod
    def title(cls) -> str:
        return cls.DISPLAY_NAME or cls.TYPE

    @classmethod
    def schema_json(cls) -> dict:
        return {
            "type": cls.TYPE,
            "display_name": cls.title(),
            "category": cls.CATEGORY,
            "description": cls.DESCRIPTION,
            "version": cls.VERSION,
            "output_node": cls.OUTPUT_NODE,
            "virtual": cls.VIRTUAL,
            "inputs": [i.to_json() for i in cls.INPUTS],
            "outputs": [o.to_json() for o in cls.OUTPUTS],
        }


def types_compatible(src: str, dst: str) -> bool:
    """ComfyUI's rule: equal, either side ``*``, or comma unions that intersect.

    A COMBO input accepts a STRING (a primitive feeding a dropdown).
    """
    if src == dst or src == "*" or dst == "*":
        return True
    if dst == "COMBO" and src == "STRING":
        return True
    return bool(set(src.split(",")) & set(dst.split(",")))
