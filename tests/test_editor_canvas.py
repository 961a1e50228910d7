"""The canvas, driven with the mouse and keyboard: search, wires, refusals, navigation."""
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app import theme
from app.search import rank, entries
from app.wires import WireItem
from engine.graph import Graph
from engine.schema import types_compatible
from tests.test_editor_support import click, count_near, drag, image_chain, show, socket_point, vp, window  # noqa: F401


def test_tab_search_adds_the_chosen_node(window, qtbot):
    show(window, Graph())
    canvas = window.canvas
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key_Tab)
    popup = canvas.popup
    assert popup is not None and popup.isVisible()
    QTest.keyClicks(popup.line, "blur")
    assert popup.current_type() == "ImageBlur"
    QTest.keyClick(popup.line, Qt.Key_Return)
    nodes = list(window.graph.nodes.values())
    assert [n.type for n in nodes] == ["ImageBlur"]
    assert nodes[0].values == {"blur_radius": 1, "sigma": 1.0}   # schema defaults
    assert nodes[0].id in window.scene.node_items
    window.undo.undo()
    assert not window.graph.nodes and not window.scene.node_items


def test_fuzzy_search_matches_names_categories_and_descriptions(window):
    items = entries(window.registry)
    assert rank("invrt img", items)[0].type == "ImageInvert"        # subsequence over two words
    assert window.registry.get(rank("upscaling", items)[0].type).CATEGORY == "image/upscaling"   # category
    assert "SaveImage" in [e.type for e in rank("workflow embedded", items)[:3]]  # description


def test_dragging_socket_to_socket_connects_and_draws_a_wire(window, qtbot):
    g = Graph()
    g.add_node("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0}, pos=(0, 0))
    g.add_node("ImageBlur", {"blur_radius": 1, "sigma": 1.0}, pos=(360, 40))
    show(window, g)
    drag(window.canvas, socket_point(window, "1", slot=0), socket_point(window, "2", name="image"))
    assert window.graph.nodes["2"].links == {"image": ("1", 0)}
    wire = window.scene.wire_items[("2", "image")]
    assert isinstance(wire, WireItem) and wire.type_name == "IMAGE"
    path = wire.path()
    assert (path.pointAtPercent(0) - socket_point(window, "1", slot=0)).manhattanLength() < 0.5
    assert (path.pointAtPercent(1) - socket_point(window, "2", name="image")).manhattanLength() < 0.5
    # Moving a node by dragging its title moves the wire's end with it; one undo step.
    item = window.scene.node_items["2"]
    title = item.mapToScene(QPointF(120, 12))
    drag(window.canvas, title, title + QPointF(50, 30))
    assert window.graph.nodes["2"].pos == (410, 70)
    assert (wire.path().pointAtPercent(1) - socket_point(window, "2", name="image")).manhattanLength() < 0.5
    window.undo.undo()
    assert window.graph.nodes["2"].pos == (360, 40) and window.graph.nodes["2"].links


def test_incompatible_wire_is_refused_with_a_visible_reason(window, qtbot):
    g = Graph()
    g.add_node("SolidMask", {"value": 1.0, "width": 8, "height": 8}, pos=(0, 0))
    g.add_node("ImageInvert", pos=(360, 0))
    show(window, g)
    canvas = window.canvas
    seen = {}

    def look():
        seen["reason"] = canvas._wire.wire.reason
        seen["red"] = count_near(canvas.viewport().grab().toImage(), theme.ERROR_COLOR, 30)

    drag(canvas, socket_point(window, "1", slot=0), socket_point(window, "2", name="image"), before_release=look)
    assert seen["reason"] == "MASK cannot connect to IMAGE input 'image'"
    assert seen["red"] > 20                     # the red dashed wire is on screen
    assert window.graph.nodes["2"].links == {}
    assert window.undo.count() == 0
    assert "Not connected: MASK cannot connect to IMAGE" in window.status_label.text()


def test_wire_dropped_on_empty_canvas_opens_search_filtered_by_type(window, qtbot):
    g = Graph()
    g.add_node("SolidMask", {"value": 1.0, "width": 8, "height": 8}, pos=(0, 0))
    show(window, g)
    canvas = window.canvas
    drop = socket_point(window, "1", slot=0) + QPointF(250, 60)
    drag(canvas, socket_point(window, "1", slot=0), drop)
    popup = canvas.popup
    assert popup.isVisible()
    offered = [popup.list.item(i).data(Qt.UserRole) for i in range(popup.list.count())]
    assert "InvertMask" in offered and "ImageCompositeMasked" in offered
    assert "ImageBlur" not in offered and "EmptyImage" not in offered
    for name in offered:
        assert any(types_compatible("MASK", i.type) for i in window.registry.get(name).INPUTS)
    QTest.keyClicks(popup.line, "invertmask")
    QTest.keyClick(popup.line, Qt.Key_Return)
    new = next(n for n in window.graph.nodes.values() if n.type == "InvertMask")
    assert new.links == {"mask": ("1", 0)}
    assert abs(new.pos[0] - drop.x()) < 1 and abs(new.pos[1] - drop.y()) < 1
    window.undo.undo()                          # one step removes the node and its link
    assert list(window.graph.nodes) == ["1"]


def test_dragging_a_linked_input_moves_or_removes_the_link(window, qtbot):
    show(window, image_chain())
    canvas = window.canvas
    # Picked up from ImageInvert's input and dropped on empty canvas: the link goes.
    drag(canvas, socket_point(window, "2", name="image"), socket_point(window, "2", name="image") + QPointF(-120, 200))
    assert window.graph.nodes["2"].links == {}
    window.undo.undo()
    assert window.graph.nodes["2"].links == {"image": ("1", 0)}
    # Dropped on a node's body: the first input that fits gets it.
    preview = window.scene.node_items["3"]
    drag(canvas, socket_point(window, "2", name="image"), preview.mapToScene(QPointF(120, 40)))
    assert window.graph.nodes["3"].links == {"images": ("1", 0)} and window.graph.nodes["2"].links == {}


def test_zoom_keeps_the_point_under_the_cursor_and_fit_frames_the_graph(window):
    show(window, image_chain())
    canvas = window.canvas
    at = QPoint(300, 200)
    before = canvas.mapToScene(at)
    for _ in range(3):
        event = QWheelEvent(QPointF(at), QPointF(canvas.viewport().mapToGlobal(at)), QPoint(0, 0), QPoint(0, 120),
                            Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False)
        QApplication.sendEvent(canvas.viewport(), event)
    assert abs(canvas.zoom() - 1.0015 ** 360) < 1e-6
    after = canvas.mapToScene(at)
    assert (after - before).manhattanLength() < 2.0
    canvas.fit_view(selection_only=False)
    visible = canvas.mapToScene(canvas.viewport().rect()).boundingRect()
    for item in window.scene.node_items.values():
        assert visible.contains(item.sceneBoundingRect())


def test_zoomed_out_nodes_paint_without_text(window):
    show(window, image_chain(), zoom=1.0)
    canvas = window.canvas
    item = window.scene.node_items["1"]
    near = canvas.viewport().grab(canvas.mapFromScene(item.sceneBoundingRect()).boundingRect()).toImage()
    text = theme.PALETTE.text
    assert count_near(near, text, 25) > 20            # titles and values are readable at 100 %
    canvas.resetTransform()
    canvas.scale(0.3, 0.3)
    canvas.centerOn(item)
    far = canvas.viewport().grab(canvas.mapFromScene(item.sceneBoundingRect()).boundingRect()).toImage()
    assert count_near(far, text, 25) == 0              # level of detail: a coloured block
    assert count_near(far, theme.category_color("image"), 8) > 20


def test_right_click_menu_adds_by_category_and_wires_select_and_delete(window, qtbot):
    show(window, image_chain())
    canvas = window.canvas
    spot = QPointF(100, 400)
    from PySide6.QtGui import QContextMenuEvent
    at = vp(canvas, spot)
    QApplication.sendEvent(canvas.viewport(), QContextMenuEvent(QContextMenuEvent.Mouse, at,
                                                                canvas.viewport().mapToGlobal(at), Qt.NoModifier))
    menu = canvas.popup
    add = next(a.menu() for a in menu.actions() if a.text() == "Add Node")
    mask_menu = next(a.menu() for a in add.actions() if a.text() == "mask")
    action = next(a for a in mask_menu.actions() if a.text() == "SolidMask")
    assert action.toolTip() == "SolidMask"                     # no description: the type name
    action.trigger()
    menu.close()
    new = max(window.graph.nodes, key=int)
    assert window.graph.nodes[new].type == "SolidMask" and window.graph.nodes[new].pos == (100.0, 400.0)
    wire = window.scene.wire_items[("2", "image")]
    click(canvas, wire.path().pointAtPercent(0.5))
    assert window.scene.selected_wires() == [wire] and wire.pen().widthF() > 4
    QTest.keyClick(canvas, Qt.Key_Delete)
    assert window.graph.nodes["2"].links == {} and ("2", "image") not in window.scene.wire_items


def test_tooltips_come_from_the_schemas(window):
    show(window, image_chain())
    item = window.scene.node_items["1"]
    row = next(r for r in item.layout.rows if r.input.name == "color")
    from PySide6.QtWidgets import QGraphicsSceneHoverEvent
    event = QGraphicsSceneHoverEvent(QGraphicsSceneHoverEvent.GraphicsSceneHoverMove)
    event.setPos(row.rect.center())
    item.hoverMoveEvent(event)
    assert item.toolTip() == "0xRRGGBB"
    event.setPos(QPointF(item.layout.width / 2, 8))
    item.hoverMoveEvent(event)
    assert item.toolTip() == window.registry.get("EmptyImage").DESCRIPTION


def test_dragging_back_from_an_input_checks_the_output_it_reaches(window):
    g = Graph()
    g.add_node("SolidMask", {"value": 1.0, "width": 8, "height": 8}, pos=(0.0, 0.0))
    g.add_node("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0}, pos=(0.0, 200.0))
    g.add_node("ImageInvert", pos=(360.0, 100.0))
    show(window, g)
    canvas = window.canvas
    seen = {}
    drag(canvas, socket_point(window, "3", name="image"), socket_point(window, "1", slot=0),
         before_release=lambda: seen.update(reason=canvas._wire.wire.reason))
    assert seen["reason"] == "MASK cannot connect to IMAGE input 'image'" and window.graph.nodes["3"].links == {}
    drag(canvas, socket_point(window, "3", name="image"), socket_point(window, "2", slot=0))
    assert window.graph.nodes["3"].links == {"image": ("2", 0)}
