"""Canvas performance on a 1,000-node graph.

Run: QT_QPA_PLATFORM=offscreen python -m tests.bench.editor
Prints the time to build the scene for the graph, the first paint, and the
paint time of one frame while panning at several zoom levels (median and
95th percentile over many frames).  Target from the editor issue: under
16 ms per frame while panning on this machine's CPU.
"""
from __future__ import annotations

import os
import random
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication  # noqa: E402

from engine.graph import Graph  # noqa: E402

N = 1000
COLUMNS = 40
TYPES = [("EmptyImage", None), ("ImageBlur", "image"), ("ImageInvert", "image"), ("ImageScale", "image"),
         ("ImageScaleBy", "image"), ("MaskToImage", None), ("ImageCompositeMasked", "destination")]


def build(n: int = N, seed: int = 0) -> Graph:
    """``n`` image nodes in a grid, each fed by the node to its left (about n links)."""
    rng = random.Random(seed)
    g = Graph()
    for i in range(n):
        kind, image_input = TYPES[0] if i % COLUMNS == 0 else rng.choice(TYPES[1:])
        col, row = i % COLUMNS, i // COLUMNS
        node = g.add_node(kind, pos=(col * 300.0, row * 260.0), id=str(i + 1))
        if image_input and col > 0:
            g.connect(str(i), 0, node.id, image_input)
    return g


def frames(canvas, count: int, step: int) -> list[float]:
    """Pan by ``step`` pixels per frame and repaint synchronously; ms per frame."""
    bar = canvas.horizontalScrollBar()
    times = []
    for k in range(count):
        bar.setValue(bar.value() + (step if k % 40 < 20 else -step))
        start = time.perf_counter()
        canvas.viewport().repaint()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    from app.main_window import MainWindow
    from app.theme import apply_theme

    app = QApplication.instance() or QApplication([])
    apply_theme(app)
    window = MainWindow(config_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "loom-bench"))
    window.resize(1600, 1000)
    window.show()
    app.processEvents()
    graph = build()
    start = time.perf_counter()
    window.scene.set_graph(graph)
    load = time.perf_counter() - start
    canvas = window.canvas
    canvas.fit_view(selection_only=False)
    start = time.perf_counter()
    canvas.viewport().repaint()
    first = time.perf_counter() - start
    links = sum(1 for _ in graph.links())
    print(f"{len(graph.nodes)} nodes, {links} links, viewport {canvas.viewport().width()}x{canvas.viewport().height()}")
    print(f"build the scene: {load * 1000:.0f} ms; first paint of the whole graph: {first * 1000:.0f} ms")
    for zoom in (1.0, 0.5, 0.25, canvas.zoom()):
        canvas.zoom_by(zoom / canvas.zoom())
        canvas.centerOn(window.scene.graph_rect().center())
        frames(canvas, 5, 8)  # warm the item caches
        samples = frames(canvas, 60, 8)
        visible = len(window.scene.items(canvas.mapToScene(canvas.viewport().rect())))
        p95 = sorted(samples)[int(0.95 * len(samples)) - 1]
        print(f"pan at zoom {zoom:.3f} ({visible} items in view): median {statistics.median(samples):.1f} ms, "
              f"p95 {p95:.1f} ms per frame")
        steps = []
        for k in range(10):
            canvas.zoom_by(1.05 if k % 2 == 0 else 1 / 1.05, canvas.viewport().rect().center())
            start = time.perf_counter()
            canvas.viewport().repaint()
            steps.append((time.perf_counter() - start) * 1000)
        print(f"    one zoom step there (item caches redrawn): median {statistics.median(steps):.1f} ms")
    window.undo.setClean()
    window.close()


if __name__ == "__main__":
    main()
