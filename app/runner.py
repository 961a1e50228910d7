"""Running workflows on a worker thread; events come back to the GUI as signals.

The live graph is never touched by the worker: seeds are resolved on the
GUI thread before queueing (so the node shows the seed this run uses) and the
worker runs a copy.  Images (previews and saved outputs) are decoded into
thumbnails on the worker so the GUI thread only paints them.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, QThread, Signal
from PySide6.QtGui import QImage

from engine import events as ev
from engine.cache import OutputCache
from engine.errors import CancelToken
from engine.executor import Executor, RunResult
from engine.graph import Graph
from engine.registry import Registry

from .scene import GraphScene, load_thumbnail


def pil_to_qimage(image) -> QImage:
    rgba = image.convert("RGBA")
    data = rgba.tobytes()
    return QImage(data, rgba.width, rgba.height, 4 * rgba.width, QImage.Format_RGBA8888).copy()


def event_images(event: ev.Event) -> list[QImage]:
    """Thumbnails an event carries: a live preview, or the images a node wrote."""
    if isinstance(event, ev.NodeProgress) and event.preview is not None:
        return [pil_to_qimage(event.preview)]
    if isinstance(event, (ev.NodeFinished, ev.NodeCached)):
        images = (load_thumbnail(i["path"]) for i in event.ui.get("images", []) if i.get("path"))
        return [i for i in images if i is not None]
    return []


@dataclass
class Job:
    graph: Graph
    targets: list[str] | None = None
    force: tuple[str, ...] = ()


class RunWorker(QThread):
    event = Signal(object, list)    # engine event, thumbnails
    done = Signal(object)           # RunResult
    crashed = Signal(str)           # a bug outside any node (the app keeps working)

    def __init__(self, executor: Executor, job: Job, token: CancelToken, parent=None):
        super().__init__(parent)
        self.executor, self.job, self.token = executor, job, token

    def run(self):
        job = self.job
        try:
            result = self.executor.run(job.graph, targets=job.targets, force=job.force, cancel=self.token,
                                       on_event=lambda e: self.event.emit(e, event_images(e)),
                                       apply_seed_controls=False)
        except Exception:  # report and recover; never take the editor down
            self.crashed.emit(traceback.format_exc())
            return
        self.done.emit(result)


class Runner(QObject):
    """A queue of runs, one at a time; cancel stops the current one and drops the queue."""

    event = Signal(object, list)
    run_started = Signal()
    run_finished = Signal(object)       # RunResult or None after a crash
    queue_changed = Signal(int)

    def __init__(self, registry: Registry, cache_bytes: int, parent=None):
        super().__init__(parent)
        self.executor = Executor(registry, cache=OutputCache(cache_bytes))
        self.pending: list[Job] = []
        self.worker: RunWorker | None = None
        self.token: CancelToken | None = None
        self.last_result: RunResult | None = None
        self.crash_trace = ""

    @property
    def running(self) -> bool:
        return self.worker is not None

    def queue(self, graph: Graph, targets=None, force=()) -> None:
        """Run a snapshot of ``graph`` after the runs already queued."""
        self.pending.append(Job(graph.copy(), list(targets) if targets else None, tuple(force)))
        self.queue_changed.emit(len(self.pending))
        if not self.running:
            self._start_next()

    def cancel(self) -> None:
        self.pending.clear()
        self.queue_changed.emit(0)
        if self.token is not None:
            self.token.cancel()

    def _start_next(self) -> None:
        if not self.pending:
            return
        job = self.pending.pop(0)
        self.queue_changed.emit(len(self.pending))
        self.token = CancelToken()
        self.worker = RunWorker(self.executor, job, self.token, self)
        self.worker.event.connect(self.event, Qt.QueuedConnection)
        self.worker.done.connect(self._finished, Qt.QueuedConnection)
        self.worker.crashed.connect(self._crashed, Qt.QueuedConnection)
        self.run_started.emit()
        self.worker.start()

    def _finished(self, result: RunResult | None) -> None:
        worker, self.worker, self.token = self.worker, None, None
        worker.wait()
        worker.deleteLater()
        self.last_result = result
        self.run_finished.emit(result)
        self._start_next()

    def _crashed(self, trace: str) -> None:
        self.crash_trace = trace
        self._finished(None)

    def wait(self, timeout_ms: int = 30000) -> bool:
        """Block until the worker is done (tests and shutdown); signals still need the event loop."""
        return self.worker.wait(timeout_ms) if self.worker is not None else True


class Progress:
    """Whole-run progress and ETA from the node events."""

    def __init__(self):
        self.total = 0
        self.done = 0
        self.fraction = 0.0
        self.start = time.monotonic()

    def update(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.total, self.done, self.fraction, self.start = len(event.nodes), 0, 0.0, time.monotonic()
        elif isinstance(event, ev.NodeStarted):
            self.fraction = 0.0
        elif isinstance(event, ev.NodeProgress):
            self.fraction = event.fraction
        elif isinstance(event, (ev.NodeFinished, ev.NodeCached)):
            self.done, self.fraction = self.done + 1, 0.0

    def overall(self) -> float:
        return (self.done + self.fraction) / self.total if self.total else 0.0

    def eta(self) -> float | None:
        done = self.overall()
        if done <= 0.02:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed * (1 - done) / done


def apply_event(scene: GraphScene, event: ev.Event, images: list[QImage]) -> None:
    """Show a run event on the node items: running highlight, progress, cached, wall time, error."""
    items = scene.node_items
    if isinstance(event, ev.RunStarted):
        scene.clear_run_state()
        for node_id in event.nodes:
            if node_id in items:
                items[node_id].set_run(status="queued")
        return
    item = items.get(getattr(event, "node_id", None))
    if isinstance(event, ev.RunFinished):
        for item in items.values():
            if item.run.status in ("queued", "running"):
                item.set_run(status="", fraction=0.0)
        return
    if item is None:
        return
    if isinstance(event, ev.NodeStarted):
        item.set_run(status="running", fraction=0.0)
    elif isinstance(event, ev.NodeProgress):
        item.set_run(fraction=event.fraction, **({"images": images} if images else {}))
    elif isinstance(event, ev.NodeCached):
        item.set_run(status="cached", **({"images": images} if images else {}))
    elif isinstance(event, ev.NodeFinished):
        item.set_run(status="done", seconds=event.seconds, fraction=1.0, **({"images": images} if images else {}))
    elif isinstance(event, ev.NodeError):
        item.set_run(status="error", error=event)
