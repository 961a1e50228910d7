"""Running from the editor: progress on the nodes, outputs, cache marks, cancel, errors, seeds."""
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app import theme
from engine import events as ev
from engine.graph import Graph
from tests.test_editor_support import count_near, image_chain, run_and_wait, show, window  # noqa: F401


def slow_chain(steps: int, delay: float) -> Graph:
    g = Graph()
    g.add_node("TestSlowImage", {"steps": steps, "delay": delay}, pos=(0, 0))
    g.add_node("ImageInvert", pos=(320, 0))
    g.add_node("TestSink", pos=(620, 0))
    g.connect("1", 0, "2", "image")
    g.connect("2", 0, "3", "image")
    return g


def test_ctrl_enter_runs_and_progress_reaches_the_node_items(window, qtbot):
    show(window, slow_chain(steps=5, delay=0.005))
    seen = []
    item = window.scene.node_items["1"]
    window.runner.event.connect(lambda e, _: seen.append(
        (e.kind, item.run.status, item.run.fraction, item.run.images[0].pixelColor(0, 0).red() if item.run.images else None)))
    window.canvas.setFocus()
    with qtbot.waitSignal(window.runner.run_finished, timeout=20000) as blocker:
        QTest.keyClick(window.canvas, Qt.Key_Return, Qt.ControlModifier)
    assert blocker.args[0].status == "success"
    progress = [(status, fraction, red) for kind, status, fraction, red in seen if kind == "node_progress"]
    assert [f for _, f, _ in progress] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(status == "running" for status, _, _ in progress)     # highlighted while it runs
    assert [red for *_, red in progress] == [51, 102, 153, 204, 255]  # each live preview reaches the node
    assert item.run.status == "done" and item.run.seconds > 0 and item.layout.image_rect is not None
    assert window.scene.node_items["3"].run.status == "done"
    assert window.progress_bar.value() == 100


def test_outputs_show_on_the_node_and_in_the_strip_and_cached_nodes_are_marked(window, qtbot, loom_paths):
    show(window, image_chain())
    result = run_and_wait(qtbot, window)
    assert result.status == "success"
    preview = window.scene.node_items["3"]
    assert preview.run.status == "done" and len(preview.run.images) == 1
    assert preview.layout.image_rect is not None
    assert window.outputs.count() == 1 and window.outputs.paths()[0].startswith(str(loom_paths.temp_dir))
    strip = window.outputs
    QTest.mouseClick(strip.viewport(), Qt.LeftButton, Qt.NoModifier, strip.visualItemRect(strip.item(0)).center())
    from app.outputs import ImageViewer
    viewer = window.findChildren(ImageViewer)[-1]
    assert viewer.isVisible() and viewer.windowTitle() == Path(strip.paths()[0]).name
    viewer.close()
    # What is drawn: the inverted colour 0x336699 -> (0xcc, 0x99, 0x66) fills the preview area.
    canvas = window.canvas
    canvas.centerOn(preview)
    area = canvas.mapFromScene(preview.mapRectToScene(preview.layout.image_rect)).boundingRect()
    from PySide6.QtGui import QColor
    assert count_near(canvas.viewport().grab(area).toImage(), QColor(0xcc, 0x99, 0x66), 3) > 100
    result = run_and_wait(qtbot, window)
    assert window.scene.node_items["1"].run.status == "cached"
    assert window.scene.node_items["2"].run.status == "cached"
    assert window.outputs.count() == 1 + (1 if result.executed else 0)


def test_cancel_stops_the_run_and_downstream_nodes_never_start(window, qtbot):
    show(window, slow_chain(steps=2000, delay=0.005))
    started = []

    def on_event(event, _):
        if isinstance(event, ev.NodeStarted):
            started.append(event.node_id)
        if isinstance(event, ev.NodeProgress) and event.fraction > 0.01:
            window.cancel_run()

    window.runner.event.connect(on_event)
    result = run_and_wait(qtbot, window)
    assert result.status == "cancelled"
    assert started == ["1"]
    assert all(item.run.status != "running" for item in window.scene.node_items.values())
    assert not window.runner.running
    assert window.status_label.text() == "Cancelled"


def test_a_node_error_turns_the_node_red_with_message_inputs_and_traceback(window, qtbot):
    g = Graph()
    g.add_node("EmptyImage", {"width": 8, "height": 4, "batch_size": 1, "color": 0}, pos=(0, 0))
    g.add_node("TestExplode", pos=(320, 0))
    g.connect("1", 0, "2", "image")
    show(window, g)
    result = run_and_wait(qtbot, window)
    assert result.status == "error"
    item = window.scene.node_items["2"]
    assert item.run.status == "error"
    assert item.run.error.message == "bad pixels in the input"
    assert item.run.error.inputs == {"image": "IMAGE 1x4x8x3 float32"}
    assert item.layout.error_rect is not None
    canvas = window.canvas
    canvas.centerOn(item)
    shot = canvas.viewport().grab(canvas.mapFromScene(item.sceneBoundingRect()).boundingRect()).toImage()
    assert count_near(shot, theme.ERROR_COLOR, 20) > 30               # red outline and error box
    # Clicking the error box opens the full message with the traceback behind "Show Details".
    from tests.test_editor_support import click
    click(canvas, item.mapToScene(item.layout.error_rect.center()))
    box = window.error_box
    assert "bad pixels in the input" in box.text() and "IMAGE 1x4x8x3" in box.text()
    assert "ValueError: bad pixels in the input" in box.detailedText()
    box.close()
    assert window.issues.count() == 1


def test_problems_show_on_the_nodes_and_nothing_runs(window):
    g = Graph()
    g.add_node("ImageInvert", pos=(0, 0))
    g.add_node("PreviewImage", pos=(320, 0))
    g.connect("1", 0, "2", "images")
    show(window, g)
    assert window.queue_run() is False
    assert not window.runner.running
    item = window.scene.node_items["1"]
    assert item.problems == {"image": "required input is not connected"}
    assert window.issues.count() == 1 and "not connected" in window.status_label.text()


def test_seed_control_is_applied_before_the_run_and_shown(window, qtbot):
    g = Graph()
    g.add_node("PrimitiveInt", {"value": 41}, pos=(0, 0), controls={"value": "increment"})
    g.add_node("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0}, pos=(320, 0))
    g.add_node("TestSink", pos=(640, 0))
    g.connect("1", 0, "2", "width")
    g.connect("2", 0, "3", "image")
    show(window, g)
    result = run_and_wait(qtbot, window)
    assert window.graph.nodes["1"].values["value"] == 42             # the node shows the value this run used
    assert result.ui["3"]["shape"] == [[1, 8, 42, 3]]
