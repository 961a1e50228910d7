"""The window's actions (with shortcuts), its menu bar and the canvas context menus."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from PySide6.QtCore import QPoint, QPointF
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu

from engine.paths import ROOT

from .groups import GroupItem
from .node_item import NodeItem
from .search import category_menu
from .wires import WireItem

COLORS = {"Red": "#6b2f2f", "Brown": "#593f24", "Green": "#2f5a35", "Blue": "#2b4a6b", "Pale blue": "#3e5a73",
          "Cyan": "#2b5a5a", "Purple": "#503264", "Yellow": "#6b6425", "Black": "#222222"}


def _action(window, name: str, text: str, slot, shortcut=None, tip: str = "") -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        keys = shortcut if isinstance(shortcut, list) else [shortcut]
        action.setShortcuts([QKeySequence(k) for k in keys])
    if tip:
        action.setStatusTip(tip)
    action.triggered.connect(lambda _=False: slot())
    window.addAction(action)
    window.actions_by_name[name] = action
    return action


def build_actions(w) -> None:
    """Every command of the window, by name, in ``w.actions_by_name``."""
    e, s = w.editor, w.scene
    undo = w.undo.createUndoAction(w, "&Undo")
    undo.setShortcut(QKeySequence.Undo)
    redo = w.undo.createRedoAction(w, "&Redo")
    redo.setShortcuts([QKeySequence.Redo, QKeySequence("Ctrl+Y")])
    w.addAction(undo)
    w.addAction(redo)
    w.actions_by_name.update(undo=undo, redo=redo)
    specs = [
        ("new", "&New", w.new_workflow, QKeySequence.New),
        ("open", "&Open…", w.open_dialog, QKeySequence.Open),
        ("save", "&Save", w.save, QKeySequence.Save),
        ("save_as", "Save &As…", w.save_as_dialog, QKeySequence("Ctrl+Shift+S")),
        ("quit", "&Quit", w.close, QKeySequence("Ctrl+Q")),
        ("copy", "&Copy", w.copy, QKeySequence.Copy),
        ("cut", "Cu&t", w.cut, QKeySequence.Cut),
        ("paste", "&Paste", w.paste, QKeySequence.Paste),
        ("duplicate", "&Duplicate", w.duplicate, QKeySequence("Ctrl+D")),
        ("delete", "De&lete", w.delete, [QKeySequence.Delete, QKeySequence("Backspace")]),
        ("delete_bridge", "Delete and &reconnect", partial(w.delete, True), QKeySequence("Ctrl+Delete")),
        ("select_all", "Select &all", lambda: [i.setSelected(True) for i in s.node_items.values()], QKeySequence.SelectAll),
        ("group", "&Group selection", w.group_selection, QKeySequence("Ctrl+G")),
        ("bypass", "&Bypass", lambda: e.toggle_mode(s.selected_node_ids(), "bypassed"), QKeySequence("Ctrl+B")),
        ("mute", "&Mute", lambda: e.toggle_mode(s.selected_node_ids(), "muted"), QKeySequence("Ctrl+M")),
        ("collapse", "C&ollapse", lambda: e.toggle_collapse(s.selected_node_ids()), QKeySequence("Alt+C")),
        ("search", "Add node (search)…", lambda: w.canvas.open_search(w.canvas.cursor_scene_pos()), None),
        ("fit", "&Fit view", lambda: w.canvas.fit_view(), [QKeySequence("."), QKeySequence("F")]),
        ("zoom_in", "Zoom &in", lambda: w.canvas.zoom_by(1.25), QKeySequence.ZoomIn),
        ("zoom_out", "Zoom &out", lambda: w.canvas.zoom_by(0.8), QKeySequence.ZoomOut),
        ("queue", "&Queue run", w.queue_run, [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")]),
        ("cancel", "&Cancel run", w.cancel_run, None),
        ("settings", "&Settings…", w.settings_dialog, QKeySequence.Preferences),
        ("shortcuts", "&Keyboard shortcuts", w.shortcuts_dialog, QKeySequence("F1")),
    ]
    for name, text, slot, keys in specs:
        _action(w, name, text, slot, keys)
    for edge, text in (("left", "Align left"), ("right", "Align right"), ("top", "Align top"),
                       ("bottom", "Align bottom"), ("h", "Distribute horizontally"), ("v", "Distribute vertically")):
        _action(w, f"align_{edge}", text, partial(lambda edge: e.align(s.selected_node_ids(), edge), edge))


def build_menus(w) -> None:
    a = w.actions_by_name
    bar = w.menuBar()
    file = bar.addMenu("&File")
    for name in ("new", "open"):
        file.addAction(a[name])
    w.recent_menu = file.addMenu("Open &recent")
    w.recent_menu.aboutToShow.connect(lambda: _fill_recent(w))
    examples = file.addMenu("&Examples")
    for path in sorted((ROOT / "workflows").glob("*.json")):
        examples.addAction(path.stem.replace("_", " "), partial(w.open_path, path, template=True))
    if examples.isEmpty():
        examples.addAction("(no example workflows)").setEnabled(False)
    file.addSeparator()
    for name in ("save", "save_as"):
        file.addAction(a[name])
    file.addSeparator()
    file.addAction(a["settings"])
    file.addAction(a["quit"])
    edit = bar.addMenu("&Edit")
    for name in ("undo", "redo", None, "cut", "copy", "paste", "duplicate", "delete", "delete_bridge", None,
                 "select_all", "group", "bypass", "mute", "collapse"):
        edit.addAction(a[name]) if name else edit.addSeparator()
    arrange = edit.addMenu("&Arrange")
    for edge in ("left", "right", "top", "bottom", "h", "v"):
        arrange.addAction(a[f"align_{edge}"])
    nodes = bar.addMenu("&Nodes")
    nodes.addAction(a["search"])
    nodes.addMenu(category_menu(w.registry, lambda t: w.editor.add_node(t, w.canvas.cursor_scene_pos()), nodes))
    view = bar.addMenu("&View")
    for name in ("fit", "zoom_in", "zoom_out"):
        view.addAction(a[name])
    view.addSeparator()
    for dock in w.docks:
        view.addAction(dock.toggleViewAction())
    run = bar.addMenu("&Run")
    run.addAction(a["queue"])
    run.addAction(a["cancel"])
    help_menu = bar.addMenu("&Help")
    help_menu.addAction(a["shortcuts"])


def build_toolbar(w) -> None:
    a = w.actions_by_name
    bar = w.addToolBar("Run")
    bar.setObjectName("toolbar")
    bar.setMovable(False)
    for name, label in (("queue", "▶  Queue  (Ctrl+Enter)"), ("cancel", "■  Cancel"), (None, None), ("undo", None),
                        ("redo", None), (None, None), ("fit", "Fit"), ("search", "+ Node")):
        if name is None:
            bar.addSeparator()
            continue
        if label:
            a[name].setIconText(label)  # toolbar wording; menus keep the action's text
        bar.addAction(a[name])


def _fill_recent(w) -> None:
    w.recent_menu.clear()
    for path in w.recent.paths():
        w.recent_menu.addAction(Path(path).name, partial(w.open_path, path)).setToolTip(path)
    if w.recent_menu.isEmpty():
        w.recent_menu.addAction("(none yet)").setEnabled(False)


def context_menu(w, scene_pos: QPointF, global_pos: QPoint, target) -> QMenu:
    """The right-click menu for a node, a wire, a group or the empty canvas (shown without blocking)."""
    a, e, s = w.actions_by_name, w.editor, w.scene
    menu = QMenu(w.canvas)
    menu.setToolTipsVisible(True)
    if isinstance(target, NodeItem):
        ids = s.selected_node_ids()
        for name in ("bypass", "mute", "collapse", "duplicate", "copy", "delete", "delete_bridge", "group"):
            menu.addAction(a[name])
        colors = menu.addMenu("Colour")
        for label, color in [("Default", None), *COLORS.items()]:
            colors.addAction(label, partial(lambda c: w.set_color(ids, c), color))
        if any(i.upload == "image" for i in target.spec.inputs):
            menu.addSeparator()
            menu.addAction("Choose image file…", partial(w.choose_image, target.node_id))
            if any(o.type == "IMAGE" for o in target.spec.outputs):
                menu.addAction("Open in mask editor…", partial(w.open_mask_editor, target.node_id))
        menu.addAction("Run this node's branch (force re-run)", partial(w.queue_run, [target.node_id]))
    elif isinstance(target, WireItem):
        link = target.link
        menu.addAction("Delete link", lambda: e.disconnect(link.dst, link.input))
        menu.addAction("Add reroute here", lambda: e.insert_reroute(link, scene_pos))
    elif isinstance(target, GroupItem):
        menu.addAction("Delete group (keep nodes)", lambda: e.delete(groups=[target.group]))
        menu.addAction("Select its nodes", lambda: [i.setSelected(True) for i in s.nodes_in(target.sceneBoundingRect())])
    else:
        menu.addMenu(category_menu(w.registry, lambda t: e.add_node(t, scene_pos), menu))
        menu.addAction("Search nodes…", lambda: w.canvas.open_search(scene_pos))
        menu.addAction("Add group here", partial(w.add_empty_group, scene_pos))
        menu.addAction(a["paste"])
        menu.addSeparator()
        menu.addAction(a["fit"])
    menu.popup(global_pos)
    w.canvas.popup = menu
    return menu
