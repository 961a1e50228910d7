"""Editing through the canvas: values, undo/redo, clipboard, delete and bridge, groups, modes."""
import json

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLineEdit, QPlainTextEdit

from app import theme
from app.groups import GroupItem
from engine.graph import Graph
from tests.test_editor_support import click, count_near, drag, image_chain, row_point, show, vp, window  # noqa: F401


def select(window, *ids):
    window.scene.clearSelection()
    for node_id in ids:
        window.scene.node_items[node_id].setSelected(True)


def test_dragging_a_number_is_one_undo_step(window):
    show(window, image_chain())
    start = row_point(window, "1", "width")
    drag(window.canvas, start, start + QPointF(60, 0), steps=12)    # 6 px per step: +10
    assert window.graph.nodes["1"].values["width"] == 42
    assert window.undo.count() == 1
    window.undo.undo()
    assert window.graph.nodes["1"].values["width"] == 32
    window.undo.redo()
    assert window.graph.nodes["1"].values["width"] == 42


def test_arrows_step_and_click_types_a_value(window):
    show(window, image_chain())
    canvas = window.canvas
    click(canvas, row_point(window, "1", "height", "right"))
    click(canvas, row_point(window, "1", "height", "right"))
    assert window.graph.nodes["1"].values["height"] == 34
    click(canvas, row_point(window, "1", "height", "center"))
    editor = canvas.inline.widget
    assert isinstance(editor, QLineEdit) and editor.text() == "34"
    QTest.keyClicks(editor, "64*2")
    QTest.keyClick(editor, Qt.Key_Return)
    assert window.graph.nodes["1"].values["height"] == 128
    click(canvas, row_point(window, "1", "height", "center"))
    QTest.keyClicks(canvas.inline.widget, "99999")               # clamped to the schema's max
    QTest.keyClick(canvas.inline.widget, Qt.Key_Return)
    assert window.graph.nodes["1"].values["height"] == 16384
    assert window.undo.count() == 4


def test_combo_and_boolean_rows(window):
    g = Graph()
    g.add_node("ImageScale", {"upscale_method": "nearest-exact", "width": 8, "height": 8, "crop": "disabled"})
    g.add_node("ImageCompositeMasked", {"x": 0, "y": 0, "resize_source": False}, pos=(320, 0))
    show(window, g)
    canvas = window.canvas
    click(canvas, row_point(window, "1", "upscale_method", "right"))
    assert window.graph.nodes["1"].values["upscale_method"] == "bilinear"
    click(canvas, row_point(window, "1", "crop", "center"))
    menu = canvas.popup
    assert [a.text() for a in menu.actions()] == ["disabled", "center"]
    menu.actions()[1].trigger()
    assert window.graph.nodes["1"].values["crop"] == "center"
    click(canvas, row_point(window, "2", "resize_source"))
    assert window.graph.nodes["2"].values["resize_source"] is True


def test_ctrl_z_in_a_text_field_belongs_to_the_field(window):
    g = Graph()
    g.add_node("Note", {"text": "draft"})
    show(window, g)
    canvas = window.canvas
    click(canvas, row_point(window, "1", "text"))
    editor = canvas.inline.widget
    assert isinstance(editor, QPlainTextEdit)
    QTest.keyClicks(editor, " two")
    assert editor.toPlainText() == "draft two"
    QTest.keyClick(editor, Qt.Key_Z, Qt.ControlModifier)
    assert editor.toPlainText() == "draft"          # the field's own undo
    assert window.undo.count() == 0                 # the workflow's history is untouched
    QTest.keyClicks(editor, "ed")
    canvas.inline.commit()
    assert window.graph.nodes["1"].values["text"] == "drafted"
    QTest.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)       # on the canvas: the workflow's undo
    assert window.graph.nodes["1"].values["text"] == "draft"


def test_copy_paste_a_subgraph_and_paste_comfyui_json(window):
    show(window, image_chain())
    select(window, "1", "2")
    assert window.copy()
    doc = json.loads(QApplication.clipboard().text())
    assert doc["format"] == "loom-workflow" and [n["id"] for n in doc["nodes"]] == ["1", "2"]
    new = window.paste()
    assert len(new) == 2 and set(new).isdisjoint({"1", "2", "3"})
    a, b = (window.graph.nodes[i] for i in new)
    assert (a.type, b.type) == ("EmptyImage", "ImageInvert")
    assert b.links == {"image": (a.id, 0)} and a.values == window.graph.nodes["1"].values
    assert set(window.scene.selected_node_ids()) == set(new)
    window.undo.undo()                               # the paste is one step
    assert sorted(window.graph.nodes) == ["1", "2", "3"]
    api = {"7": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 16, "height": 16}},
           "8": {"class_type": "InvertMask", "inputs": {"mask": ["7", 0]}}}
    QApplication.clipboard().setText(json.dumps(api))
    new = window.paste()
    types = {window.graph.nodes[i].type: window.graph.nodes[i] for i in new}
    assert set(types) == {"SolidMask", "InvertMask"}
    assert types["InvertMask"].links == {"mask": (types["SolidMask"].id, 0)}
    assert types["SolidMask"].values["value"] == 0.5


def test_duplicate_and_delete_with_reconnect(window):
    show(window, image_chain())
    before = window.graph.copy()
    select(window, "2")
    window.actions_by_name["delete_bridge"].trigger()
    assert "2" not in window.graph.nodes
    assert window.graph.nodes["3"].links == {"images": ("1", 0)}       # bridged over the deleted node
    assert ("3", "images") in window.scene.wire_items
    window.undo.undo()
    assert window.graph == before
    select(window, "2")
    ids = window.duplicate()
    assert window.graph.nodes[ids[0]].type == "ImageInvert"
    assert window.graph.nodes[ids[0]].pos == (350, 30)
    select(window, "2")
    QTest.keyClick(window.canvas, Qt.Key_Delete)
    assert "2" not in window.graph.nodes and window.graph.nodes["3"].links == {}


def test_group_moves_its_nodes_in_one_step(window):
    show(window, image_chain(), zoom=0.8)
    select(window, "1", "2")
    window.group_selection()
    assert len(window.graph.groups) == 1
    group = window.graph.groups[0]
    item = next(iter(window.scene.group_items.values()))
    assert isinstance(item, GroupItem)
    for node_id in ("1", "2"):
        assert item.sceneBoundingRect().contains(window.scene.node_items[node_id].sceneBoundingRect())
    old_bounds, old_3 = group.bounding, window.graph.nodes["3"].pos
    title = item.mapToScene(QPointF(60, 12))
    drag(window.canvas, title, title + QPointF(100, 50))
    assert group.bounding[:2] == (old_bounds[0] + 100, old_bounds[1] + 50)
    assert window.graph.nodes["1"].pos == (100, 50) and window.graph.nodes["2"].pos == (420, 50)
    assert window.graph.nodes["3"].pos == old_3                      # outside the group: stays
    assert window.scene.node_items["1"].pos() == QPointF(100, 50)
    window.undo.undo()
    assert group.bounding == old_bounds and window.graph.nodes["1"].pos == (0, 0)
    assert item.pos() == QPointF(old_bounds[0], old_bounds[1])


def test_bypass_mute_and_collapse_change_the_model_and_the_drawing(window):
    show(window, image_chain())
    canvas = window.canvas
    item = window.scene.node_items["2"]
    rect = canvas.mapFromScene(item.sceneBoundingRect()).boundingRect()
    body, tint = theme.PALETTE.node_body, theme.BYPASS_COLOR
    a = 90 / 255                                     # the bypass tint over the node's body
    purple = QColor(*(round(x * (1 - a) + y * a) for x, y in zip(body.getRgb()[:3], tint.getRgb()[:3])))
    before = count_near(canvas.viewport().grab(rect).toImage(), purple, 6)
    select(window, "2")
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key_B, Qt.ControlModifier)
    assert window.graph.nodes["2"].mode == "bypassed"
    assert count_near(canvas.viewport().grab(rect).toImage(), purple, 6) > before + 100
    QTest.keyClick(canvas, Qt.Key_M, Qt.ControlModifier)
    assert window.graph.nodes["2"].mode == "muted" and item.opacity() < 0.5
    QTest.keyClick(canvas, Qt.Key_M, Qt.ControlModifier)
    assert window.graph.nodes["2"].mode == "normal" and item.opacity() == 1.0
    click(canvas, item.mapToScene(QPointF(13, 13)))                   # the title's triangle
    assert window.graph.nodes["2"].collapsed and item.layout.height == theme.TITLE_H
    wire = window.scene.wire_items[("3", "images")]
    assert (wire.path().pointAtPercent(0) - item.mapToScene(QPointF(item.layout.width, theme.TITLE_H / 2))).manhattanLength() < 0.5
    window.undo.undo()
    assert not window.graph.nodes["2"].collapsed


def test_reroute_on_a_wire_keeps_the_type(window):
    show(window, image_chain())
    wire = window.scene.wire_items[("2", "image")]
    reroute = window.editor.insert_reroute(wire.link, wire.path().pointAtPercent(0.5))
    assert window.graph.nodes[reroute].links == {"input": ("1", 0)}
    assert window.graph.nodes["2"].links == {"image": (reroute, 0)}
    assert window.scene.wire_items[("2", "image")].type_name == "IMAGE"
    # A reroute carrying IMAGE refuses a MASK input.
    window.editor.add_node("InvertMask", QPointF(300, 300))
    mask_node = max(window.graph.nodes, key=int)
    out = window.scene.node_items[reroute].output_socket(0)
    inp = window.scene.node_items[mask_node].input_socket("mask")
    assert window.editor.connect(out, inp) == "IMAGE cannot connect to MASK input 'mask'"
    window.undo.undo()
    window.undo.undo()
    assert window.graph.nodes["2"].links == {"image": ("1", 0)} and reroute not in window.graph.nodes


def test_rubber_band_selects_and_align_lines_up(window):
    g = Graph()
    for i, (x, y) in enumerate([(0, 0), (37, 260), (-21, 520)], start=1):
        g.add_node("InvertMask", pos=(x, y))
    show(window, g, zoom=0.6)
    rect = window.scene.graph_rect()
    drag(window.canvas, rect.topLeft() - QPointF(30, 30), rect.bottomRight() + QPointF(30, 30))
    assert sorted(window.scene.selected_node_ids()) == ["1", "2", "3"]
    window.actions_by_name["align_left"].trigger()
    assert {window.graph.nodes[i].pos[0] for i in "123"} == {-21}
    assert window.undo.count() == 1


def test_undo_keeps_previews(window):
    show(window, image_chain())
    item = window.scene.node_items["3"]
    from PySide6.QtGui import QImage
    preview = QImage(8, 8, QImage.Format_RGB32)
    item.set_run(status="done", images=[preview], seconds=0.1)
    click(window.canvas, row_point(window, "1", "width", "right"))
    window.undo.undo()
    assert item.run.images == [preview] and item.run.status == "done"
    select(window, "3")
    window.delete()
    window.undo.undo()                               # a deleted node comes back with its preview
    restored = window.scene.node_items["3"]
    assert restored is not item and restored.run.images == [preview] and restored.layout.image_rect is not None


def test_double_click_a_title_renames_the_node(window):
    show(window, image_chain())
    item = window.scene.node_items["2"]
    QTest.mouseDClick(window.canvas.viewport(), Qt.LeftButton, Qt.NoModifier, vp(window.canvas, item.mapToScene(QPointF(90, 12))))
    editor = window.canvas.inline.widget
    assert isinstance(editor, QLineEdit) and editor.text() == "Invert Image"
    editor.setText("Negative")
    QTest.keyClick(editor, Qt.Key_Return)
    assert window.graph.nodes["2"].title == "Negative" and item.title() == "Negative"
    window.undo.undo()
    assert window.graph.nodes["2"].title is None
