"""Shared fixtures and user-like input helpers for the editor tests (no tests here).

The editor is driven the way a user drives it: mouse presses, moves and
releases on the canvas viewport, keys on the focused widget.
"""
import time

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QMessageBox

from engine.graph import Graph
from engine.registry import Registry
from engine.schema import Input, Node, NodeOutput, Output


class SlowImage(Node):
    """An image made in ``steps`` steps, reporting progress (and checking cancel) at each."""

    TYPE = "TestSlowImage"
    CATEGORY = "testing"
    DESCRIPTION = "Makes a grey image slowly, for progress and cancel tests."
    INPUTS = (Input("steps", "INT", default=5, min=1, max=10000),
              Input("delay", "FLOAT", default=0.01, min=0.0, max=1.0, step=0.001))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)
    NOT_IDEMPOTENT = True

    def execute(self, steps, delay):
        for i in range(steps):
            time.sleep(delay)
            preview = Image.new("RGB", (8, 8), (255 * (i + 1) // steps, 0, 0))   # like a sampler's latent preview
            self.ctx.progress((i + 1) / steps, preview)
        return (torch.full((1, 16, 16, 3), 0.5),)


class Explode(Node):
    TYPE = "TestExplode"
    CATEGORY = "testing"
    INPUTS = (Input("image", "IMAGE"),)
    OUTPUT_NODE = True

    def execute(self, image):
        raise ValueError("bad pixels in the input")


class Sink(Node):
    TYPE = "TestSink"
    CATEGORY = "testing"
    INPUTS = (Input("image", "IMAGE"),)
    OUTPUT_NODE = True

    def execute(self, image):
        return NodeOutput((), {"shape": [list(image.shape)]})


def registry() -> Registry:
    reg = Registry()
    reg.load_builtin()
    for cls in (SlowImage, Explode, Sink):
        reg.register(cls, "test")
    return reg


@pytest.fixture
def window(qtbot, tmp_path, loom_paths):
    from app.main_window import MainWindow
    from app.theme import apply_theme

    apply_theme(QApplication.instance(), dark=True)
    w = MainWindow(registry(), config_dir=tmp_path / "config")
    w.ask = lambda *a, **k: QMessageBox.No  # a test never blocks on a question
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.runner.cancel()
    w.runner.wait()
    w.undo.setClean()


def image_chain() -> Graph:
    """EmptyImage -> ImageInvert -> PreviewImage, laid out left to right."""
    g = Graph()
    g.add_node("EmptyImage", {"width": 32, "height": 32, "batch_size": 1, "color": 0x336699}, pos=(0.0, 0.0))
    g.add_node("ImageInvert", pos=(320.0, 0.0))
    g.add_node("PreviewImage", pos=(620.0, 0.0))
    g.connect("1", 0, "2", "image")
    g.connect("2", 0, "3", "images")
    return g


def show(window, graph: Graph, zoom: float = 1.0) -> None:
    """Open ``graph`` in the window at ``zoom`` with its left-top node in view."""
    window.set_graph(graph)
    QApplication.processEvents()
    canvas = window.canvas
    canvas.resetTransform()
    canvas.scale(zoom, zoom)
    rect = window.scene.graph_rect()
    canvas.centerOn(rect.center())
    QApplication.processEvents()


def vp(canvas, scene_point: QPointF) -> QPoint:
    """A scene point in viewport pixels."""
    return canvas.mapFromScene(scene_point)


def socket_point(window, node_id: str, name=None, slot=None) -> QPointF:
    item = window.scene.node_items[node_id]
    socket = item.output_socket(slot) if slot is not None else item.input_socket(name)
    return item.socket_pos(socket)


def row_point(window, node_id: str, name: str, where: str = "center", control: bool = False) -> QPointF:
    item = window.scene.node_items[node_id]
    row = next(r for r in item.layout.rows if r.input.name == name and r.control == control)
    rect = row.rect
    x = {"left": rect.left() + 5, "right": rect.right() - 5, "center": rect.center().x()}[where]
    return item.mapToScene(QPointF(x, rect.center().y()))


def drag(canvas, start: QPointF, end: QPointF, steps: int = 6, button=Qt.LeftButton, modifiers=Qt.NoModifier,
         before_release=None):
    """Press at ``start``, move in ``steps`` to ``end``, release (scene coordinates)."""
    viewport = canvas.viewport()
    a, b = vp(canvas, start), vp(canvas, end)
    QTest.mousePress(viewport, button, modifiers, a)
    for k in range(1, steps + 1):
        p = a + (b - a) * (k / steps)
        QTest.mouseMove(viewport, QPoint(round(p.x()), round(p.y())))
    if before_release is not None:
        before_release()
    QTest.mouseRelease(viewport, button, modifiers, b)


def click(canvas, point: QPointF, button=Qt.LeftButton, modifiers=Qt.NoModifier) -> None:
    QTest.mouseClick(canvas.viewport(), button, modifiers, vp(canvas, point))


def count_near(image: QImage, color, tolerance: int = 40) -> int:
    """How many pixels of ``image`` are within ``tolerance`` of ``color`` in every channel."""
    image = image.convertToFormat(QImage.Format_RGB32)
    w, h = image.width(), image.height()
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(h, image.bytesPerLine())
    bgr = rows[:, : 4 * w].reshape(h, w, 4)[..., :3].astype(int)
    target = np.array([color.blue(), color.green(), color.red()])
    return int(np.all(np.abs(bgr - target) <= tolerance, axis=-1).sum())


def run_and_wait(qtbot, window, timeout: int = 20000, **kwargs):
    """Queue a run like Ctrl+Enter does and wait for it to finish; returns the RunResult."""
    with qtbot.waitSignal(window.runner.run_finished, timeout=timeout) as blocker:
        assert window.queue_run(**kwargs)
    return blocker.args[0]
