"""Events a run reports, as plain objects delivered to a callback.

The CLI prints them (or writes them as JSON lines); the editor turns them into
Qt signals.  ``to_json`` gives the machine-readable form (``--events json``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Event:
    kind = "event"

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "preview"}
        return {"event": self.kind, **data}


@dataclass
class RunStarted(Event):
    kind = "run_started"
    nodes: list[str]
    cached: list[str]


@dataclass
class SeedsResolved(Event):
    kind = "seeds_resolved"
    seeds: dict[str, dict[str, int]]


@dataclass
class NodeStarted(Event):
    kind = "node_started"
    node_id: str
    node_type: str
    title: str


@dataclass
class NodeProgress(Event):
    kind = "node_progress"
    node_id: str
    fraction: float
    preview: Any = None  # a PIL image, when the node has one
    text: str | None = None


@dataclass
class NodeCached(Event):
    kind = "node_cached"
    node_id: str
    ui: dict = field(default_factory=dict)


@dataclass
class NodeFinished(Event):
    kind = "node_finished"
    node_id: str
    seconds: float
    ui: dict = field(default_factory=dict)


@dataclass
class NodeError(Event):
    """A node failed: who, why, with what, and the traceback for a details view."""

    kind = "node_error"
    node_id: str
    node_type: str
    title: str
    message: str
    exception_type: str
    inputs: dict[str, str]
    traceback: str

    def __str__(self) -> str:
        summary = ", ".join(f"{k}={v}" for k, v in self.inputs.items())
        return (f"node {self.node_id} ({self.title}, {self.node_type}) failed: {self.message}"
                + (f"\n  inputs: {summary}" if summary else ""))


@dataclass
class RunFinished(Event):
    kind = "run_finished"
    status: str  # success | error | cancelled | invalid
    seconds: float
    executed: list[str]
    cached: list[str]
