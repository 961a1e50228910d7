"""The mask editor: a separate float layer painted over the image, saved beside it, wired in."""
import hashlib

import numpy as np
from PIL import Image
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest

from app.mask_editor import Brush, MaskEditor, feathered, sidecar_path, stamp, use_mask
from engine.graph import Graph
from tests.test_editor_support import show, window  # noqa: F401


def test_brush_hardness_eraser_and_edges():
    mask = np.zeros((40, 40), np.float32)
    stamp(mask, 20, 20, Brush(size=20, hardness=1.0))
    assert mask[20, 20] == 1.0 and mask[20, 29] == 1.0 and mask[20, 31] == 0.0    # hard edge at r=10
    soft = np.zeros((40, 40), np.float32)
    stamp(soft, 20, 20, Brush(size=20, hardness=0.0))
    assert 0.0 < soft[20, 25] < soft[20, 22] < 1.0                                 # falls off from the centre
    stamp(mask, 20, 20, Brush(size=8, hardness=1.0, erase=True))
    assert mask[20, 20] == 0.0 and mask[20, 28] == 1.0
    corner = np.zeros((40, 40), np.float32)
    assert stamp(corner, -3, -3, Brush(size=16, hardness=1.0)) == (0, 0, 6, 6)     # a dab outside still reaches in
    assert corner[0, 0] == 1.0
    assert stamp(corner, -30, -30, Brush(size=10)) is None
    blurred = feathered(mask, 4)
    assert blurred.shape == mask.shape and 0.0 < blurred[20, 30] < 1.0


def test_painting_saves_a_separate_mask_and_never_touches_the_image(qtbot, loom_paths):
    photo = loom_paths.input_dir / "cat.png"
    Image.new("RGB", (64, 48), (90, 120, 150)).save(photo)
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    editor = MaskEditor(photo)
    qtbot.addWidget(editor)
    editor.show()
    qtbot.waitExposed(editor)
    view = editor.view
    editor.size_box.setValue(10)
    editor.hardness.setValue(100)
    a, b = view.to_widget(QPointF(10, 24)).toPoint(), view.to_widget(QPointF(54, 24)).toPoint()
    QTest.mousePress(view, Qt.LeftButton, Qt.NoModifier, a)
    for k in range(1, 9):
        QTest.mouseMove(view, a + (b - a) * (k / 8))
    QTest.mouseRelease(view, Qt.LeftButton, Qt.NoModifier, b)
    assert view.mask[24, 10:55].min() == 1.0 and view.mask[5, 30] == 0.0      # a stroke across the image
    painted = view.mask.copy()
    editor.invert()
    assert np.array_equal(view.mask, 1.0 - painted)
    QTest.keyClick(view, Qt.Key_Z, Qt.ControlModifier)                         # the editor's own undo
    assert np.array_equal(view.mask, painted)
    editor.save()
    saved = np.asarray(Image.open(sidecar_path(photo)), np.float32) / 255
    assert saved.shape == (48, 64) and np.abs(saved - painted).max() < 1 / 255
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == digest            # the image is untouched
    reopened = MaskEditor(photo)
    qtbot.addWidget(reopened)
    assert np.abs(reopened.view.mask - painted).max() < 1 / 255


def test_the_saved_mask_feeds_the_nodes_that_used_the_image_mask(window, loom_paths):
    Image.new("RGB", (16, 16), (0, 0, 0)).save(loom_paths.input_dir / "pic.png")
    Image.new("L", (16, 16), 255).save(loom_paths.input_dir / "pic.mask.png")
    g = Graph()
    g.add_node("LoadImage", {"image": "pic.png"}, pos=(0.0, 0.0))
    g.add_node("InvertMask", pos=(320.0, 0.0))
    g.connect("1", 1, "2", "mask")
    show(window, g)
    mask_id = use_mask(window, "1", "pic.mask.png")
    assert window.graph.nodes[mask_id].type == "LoadImageMask"
    assert window.graph.nodes[mask_id].values == {"image": "pic.mask.png", "channel": "red"}
    assert window.graph.nodes["2"].links == {"mask": (mask_id, 0)}
    assert window.scene.node_items[mask_id].thumbnail is not None
    window.undo.undo()
    assert window.graph.nodes["2"].links == {"mask": ("1", 1)} and mask_id not in window.graph.nodes
