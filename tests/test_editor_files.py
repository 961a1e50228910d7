"""Files from the editor: save and reopen, ComfyUI files, drops, unsaved changes, autosave recovery."""
import json

from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QMessageBox

from app.main_window import MainWindow
from engine.graph import Group
from tests.test_editor_support import image_chain, registry, row_point, click, show, window  # noqa: F401

COMFY_UI = {
    "last_node_id": 4, "last_link_id": 3, "version": 0.4,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [10, 20], "size": [315, 130], "flags": {}, "order": 0, "mode": 0,
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
         "properties": {}, "widgets_values": [64, 48, 1, 255]},
        {"id": 2, "type": "ImageBlur", "pos": [400, 20], "size": [315, 82], "flags": {}, "order": 1, "mode": 4,
         "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2, 3], "slot_index": 0}],
         "properties": {}, "widgets_values": [3, 1.5], "color": "#223", "title": "Soften"},
        {"id": 3, "type": "SaveImage", "pos": [800, 20], "size": [315, 270], "flags": {}, "order": 2, "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "properties": {}, "widgets_values": ["ComfyUI"]},
        {"id": 4, "type": "SomeCustomNode", "pos": [800, 400], "size": [200, 100], "flags": {}, "order": 3,
         "mode": 0, "inputs": [{"name": "pixels", "type": "IMAGE", "link": 3}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
         "properties": {"Node name for S&R": "SomeCustomNode"}, "widgets_values": [7, "keep me"]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 2, 0, 4, 0, "IMAGE"]],
    "groups": [{"title": "Inputs", "bounding": [0, -40, 360, 220], "color": "#3f789e"}],
    "config": {}, "extra": {},
}


def test_save_and_reopen_is_identical(window, tmp_path, qtbot):
    show(window, image_chain())
    click(window.canvas, row_point(window, "1", "width", "right"))        # an edit: the title gets a star
    window.graph.add_group(Group("Frame", (-20.0, -60.0, 700.0, 260.0), "#3f789e"))
    window.editor.toggle_mode(["2"], "bypassed")
    assert window.windowTitle().startswith("Untitled *")
    path = tmp_path / "flow.json"
    assert window.save_to(path)
    assert window.windowTitle().startswith("flow.json —") and window.undo.isClean()
    other = MainWindow(registry(), config_dir=tmp_path / "other")
    qtbot.addWidget(other)
    assert other.open_path(path)
    assert other.graph == window.graph
    assert set(other.scene.node_items) == {"1", "2", "3"} and len(other.scene.wire_items) == 2
    assert len(other.scene.group_items) == 1
    other.save_to(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()
    assert str(path.resolve()) in window.recent.paths()


def test_open_a_comfyui_ui_file_with_a_missing_node_type(window, tmp_path):
    path = tmp_path / "comfy.json"
    path.write_text(json.dumps(COMFY_UI))
    assert window.open_path(path)
    g = window.graph
    assert g.nodes["1"].values == {"width": 64, "height": 48, "batch_size": 1, "color": 255}
    assert g.nodes["2"].mode == "bypassed" and g.nodes["2"].title == "Soften"
    assert g.nodes["3"].links == {"images": ("2", 0)}
    assert len(window.scene.wire_items) == 3 and len(window.scene.group_items) == 1
    placeholder = window.scene.node_items["4"]
    assert placeholder.spec.placeholder
    assert placeholder.input_socket("pixels").type == "IMAGE"
    assert [o.type for o in placeholder.spec.outputs] == ["LATENT"]
    assert window.issues.count() >= 1 and "SomeCustomNode" in window.issues.item(0).text()
    # Saving writes ComfyUI's format back, keeping the unknown node's data.
    assert window.format == "comfy_ui"
    window.save()
    saved = json.loads(path.read_text())
    custom = next(n for n in saved["nodes"] if n["type"] == "SomeCustomNode")
    assert custom["widgets_values"] == [7, "keep me"]


def drop(window, paths, scene_point):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = window.canvas.mapFromScene(scene_point)
    enter = QDragEnterEvent(pos, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(window.canvas.viewport(), enter)
    event = QDropEvent(QPointF(pos), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(window.canvas.viewport(), event)
    assert enter.isAccepted() and event.isAccepted()


def test_dropped_files_open_workflows_and_load_images(window, tmp_path, loom_paths):
    show(window, image_chain())
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photo)
    drop(window, [photo], QPointF(100, 600))                       # on empty canvas: a new LoadImage
    node = next(n for n in window.graph.nodes.values() if n.type == "LoadImage")
    assert node.values["image"] == "photo.png" and (loom_paths.input_dir / "photo.png").is_file()
    item = window.scene.node_items[node.id]
    assert item.thumbnail is not None and item.thumbnail.width() == 40 and item.layout.image_rect is not None
    other = tmp_path / "other.png"
    Image.new("RGB", (8, 8), (0, 200, 0)).save(other)
    drop(window, [other], item.mapToScene(QPointF(100, 60)))       # on the LoadImage: replaces its image
    assert window.graph.nodes[node.id].values["image"] == "other.png"
    flow = tmp_path / "dropped.json"
    flow.write_text(json.dumps(COMFY_UI))
    drop(window, [flow], QPointF(0, 0))
    assert window.graph.nodes["2"].title == "Soften"


def test_unsaved_changes_prompt(window):
    show(window, image_chain())
    click(window.canvas, row_point(window, "1", "width", "right"))
    window.ask = lambda *a, **k: QMessageBox.Cancel
    window.new_workflow()
    assert len(window.graph.nodes) == 3                            # cancelled: nothing lost
    asked = []
    window.ask = lambda *a, **k: asked.append(a) or QMessageBox.No
    window.new_workflow()
    assert asked and not window.graph.nodes                        # discarded after asking


def test_autosave_is_offered_back_after_a_crash(window, tmp_path, qtbot):
    show(window, image_chain())
    click(window.canvas, row_point(window, "1", "width", "right"))
    window.autosave_now()
    assert window.autosave.path.is_file()
    expected = window.graph.copy()
    # The process dies here (no closeEvent): the next window offers the autosave.
    reborn = MainWindow(registry(), config_dir=tmp_path / "config")
    qtbot.addWidget(reborn)
    reborn.ask = lambda *a, **k: QMessageBox.Yes
    assert reborn.offer_recovery()
    assert reborn.graph == expected and not reborn.undo.isClean()
    reborn.ask = lambda *a, **k: QMessageBox.No
    reborn.close()                                                 # a clean exit removes the autosave
    assert not reborn.autosave.path.exists()


def test_a_missing_file_is_highlighted_and_the_available_ones_offered(window, loom_paths):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(loom_paths.input_dir / name)
    from engine.graph import Graph
    g = Graph()
    g.add_node("LoadImage", {"image": "gone.png"}, pos=(0.0, 0.0))
    show(window, g)
    item = window.scene.node_items["1"]
    assert item.missing == {"image"}
    from app import theme
    from tests.test_editor_support import count_near
    canvas = window.canvas
    row = next(r for r in item.layout.rows if r.input.name == "image")
    shot = canvas.viewport().grab(canvas.mapFromScene(item.mapRectToScene(row.rect)).boundingRect()).toImage()
    assert count_near(shot, theme.ERROR_COLOR, 40) > 10                   # the value is drawn in red
    click(canvas, row_point(window, "1", "image"))
    menu = canvas.popup
    assert [a.text() for a in menu.actions()] == ["a.png", "b.png"]
    menu.actions()[1].trigger()
    menu.close()
    assert window.graph.nodes["1"].values["image"] == "b.png" and item.missing == set()
    assert item.thumbnail is not None
