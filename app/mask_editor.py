"""The mask editor: paint a float mask over an image, never into it.

The mask is its own layer (float32, 1 = change this pixel) saved next to the
image as ``<stem>.mask.png`` (8-bit grey, what ComfyUI's mask loaders read);
the image file is only read.  Brush and eraser have a size and a hardness
(soft edges fall off linearly from the hard core), strokes may start or run
outside the picture so the edges are easy to cover, and every stroke, invert,
clear or feather is one step of the editor's own undo.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QKeySequence, QPainter, QPen
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QPushButton, QSlider, QSpinBox, QVBoxLayout, QWidget)

from engine import imageops
from engine.errors import LoomError
from engine.paths import default_paths

from . import commands as cmd

MAX_UNDO = 50
OVERLAY_RGB = (255, 48, 48)
OVERLAY_ALPHA = 0.55


def sidecar_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}.mask.png")


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A saved mask as float32 [H, W] in 0..1, or zeros of ``size`` (w, h) when absent or mismatched."""
    if path.is_file():
        with Image.open(path) as img:
            if img.size == size:
                return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.zeros((size[1], size[0]), dtype=np.float32)


def save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(np.round(mask * 255.0), 0, 255).astype(np.uint8), mode="L").save(path)


@dataclass
class Brush:
    size: float = 48.0        # diameter in image pixels
    hardness: float = 0.6     # 1: hard edge; 0: falls off from the centre
    erase: bool = False


def stamp(mask: np.ndarray, cx: float, cy: float, brush: Brush) -> tuple[int, int, int, int] | None:
    """Apply one brush dab at (cx, cy); returns the touched box (x0, y0, x1, y1) or None if outside."""
    r = brush.size / 2
    h, w = mask.shape
    x0, y0 = max(0, int(np.floor(cx - r))), max(0, int(np.floor(cy - r)))
    x1, y1 = min(w, int(np.ceil(cx + r)) + 1), min(h, int(np.ceil(cy + r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.ogrid[y0:y1, x0:x1]
    distance = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) / max(r, 0.5)
    falloff = np.clip((1.0 - distance) / max(1e-3, 1.0 - brush.hardness), 0.0, 1.0).astype(np.float32)
    region = mask[y0:y1, x0:x1]
    if brush.erase:
        np.minimum(region, 1.0 - falloff, out=region)
    else:
        np.maximum(region, falloff, out=region)
    return x0, y0, x1, y1


def feathered(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask blurred with a Gaussian of ``radius`` pixels (soft transitions for inpainting)."""
    if radius <= 0:
        return mask
    blurred = imageops.gaussian_blur(torch.from_numpy(mask)[None, :, :, None], radius, max(radius / 2, 0.5))
    return blurred[0, :, :, 0].numpy().copy()


class MaskView(QWidget):
    """The image with the mask over it in red; paints with the left button, pans with the middle one."""

    def __init__(self, image: QImage, mask: np.ndarray, parent=None):
        super().__init__(parent)
        self.image = image.convertToFormat(QImage.Format_RGB32)
        self.mask = mask
        self.brush = Brush()
        self.history: list[np.ndarray] = []
        self.scale, self.offset = 1.0, QPointF(40, 40)
        self._overlay = np.zeros((*mask.shape, 4), dtype=np.uint8)
        self._overlay[..., :3] = OVERLAY_RGB
        self._last: QPointF | None = None
        self._pan: QPointF | None = None
        self._cursor = QPointF(-100, -100)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)   # after a stroke, Ctrl+Z undoes the stroke, not a spin box
        self.setMinimumSize(480, 360)
        self.refresh()

    # --- coordinates ----------------------------------------------------------------------
    def to_image(self, p: QPointF) -> QPointF:
        return (p - self.offset) / self.scale

    def to_widget(self, p: QPointF) -> QPointF:
        return p * self.scale + self.offset

    def fit(self) -> None:
        w, h = self.image.width(), self.image.height()
        self.scale = min((self.width() - 80) / w, (self.height() - 80) / h)
        self.offset = QPointF((self.width() - w * self.scale) / 2, (self.height() - h * self.scale) / 2)
        self.update()

    # --- edits --------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        self.history.append(self.mask.copy())
        del self.history[:-MAX_UNDO]

    def undo(self) -> None:
        if self.history:
            self.mask[:] = self.history.pop()
            self.refresh()

    def replace(self, new: np.ndarray) -> None:
        self.checkpoint()
        self.mask[:] = new
        self.refresh()

    def refresh(self, box=None) -> None:
        x0, y0, x1, y1 = box or (0, 0, self.mask.shape[1], self.mask.shape[0])
        self._overlay[y0:y1, x0:x1, 3] = (self.mask[y0:y1, x0:x1] * (255 * OVERLAY_ALPHA)).astype(np.uint8)
        self.update()

    def dab_line(self, a: QPointF, b: QPointF) -> None:
        """Dabs every ~15% of the brush size from ``a`` to ``b`` (image coordinates)."""
        spacing = max(1.0, self.brush.size * 0.15)
        steps = max(1, int(np.hypot(b.x() - a.x(), b.y() - a.y()) / spacing))
        for k in range(1, steps + 1):
            p = a + (b - a) * (k / steps)
            box = stamp(self.mask, p.x(), p.y(), self.brush)
            if box is not None:
                self.refresh(box)

    # --- events ----------------------------------------------------------------------------------
    def paintEvent(self, event):
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#1b1c1f"))
        painter.translate(self.offset)
        painter.scale(self.scale, self.scale)
        painter.drawImage(0, 0, self.image)
        h, w = self.mask.shape
        overlay = QImage(self._overlay.data, w, h, 4 * w, QImage.Format_RGBA8888)
        painter.drawImage(0, 0, overlay)
        painter.setPen(QPen(QColor("#888"), 0))
        painter.drawRect(QRectF(0, 0, w, h))
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(QPen(QColor("#ffffff"), 0, Qt.DashLine if self.brush.erase else Qt.SolidLine))
        r = self.brush.size / 2
        painter.drawEllipse(self.to_image(self._cursor), r, r)

    def mousePressEvent(self, event):
        pos = event.position()
        if event.button() == Qt.MiddleButton:
            self._pan = pos
        elif event.button() == Qt.LeftButton:
            self.checkpoint()
            self._last = self.to_image(pos)
            self.dab_line(self._last, self._last)

    def mouseMoveEvent(self, event):
        pos = event.position()
        self._cursor = pos
        if self._pan is not None:
            self.offset += pos - self._pan
            self._pan = pos
            self.update()
        elif self._last is not None:
            point = self.to_image(pos)
            self.dab_line(self._last, point)
            self._last = point
        else:
            self.update()

    def mouseReleaseEvent(self, event):
        self._last = self._pan = None

    def wheelEvent(self, event):
        at = event.position()
        fixed = self.to_image(at)
        self.scale = min(32.0, max(0.05, self.scale * 1.0015 ** event.angleDelta().y()))
        self.offset = at - fixed * self.scale
        self.update()


class MaskEditor(QDialog):
    def __init__(self, image_path: Path, parent=None):
        super().__init__(parent)
        self.image_path = Path(image_path)
        self.mask_path = sidecar_path(self.image_path)
        self.setWindowTitle(f"Mask — {self.image_path.name}")
        image = QImage(str(self.image_path))
        if image.isNull():
            raise LoomError(f"cannot read the image {self.image_path}")
        self.view = MaskView(image, load_mask(self.mask_path, (image.width(), image.height())), self)
        self.size_box = self._spin("Size", 1, 1000, int(self.view.brush.size), self._set_size)
        self.hardness = QSlider(Qt.Horizontal)
        self.hardness.setRange(0, 100)
        self.hardness.setValue(int(self.view.brush.hardness * 100))
        self.hardness.valueChanged.connect(lambda v: setattr(self.view.brush, "hardness", v / 100))
        self.feather_box = self._spin("Feather", 1, 200, 8, None)
        self.erase_button = QPushButton("Eraser")
        self.erase_button.setCheckable(True)
        self.erase_button.toggled.connect(self._set_erase)
        tools = QHBoxLayout()
        tools.addWidget(self.erase_button)
        for label, widget in (("Size", self.size_box), ("Hardness", self.hardness), ("Feather px", self.feather_box)):
            tools.addWidget(QLabel(label))
            tools.addWidget(widget)
        for text, slot in (("Feather", self.feather), ("Invert", self.invert), ("Clear", self.clear),
                           ("Undo", self.view.undo), ("Fit", self.view.fit)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            tools.addWidget(button)
        actions = QHBoxLayout()
        actions.addStretch(1)
        for text, slot in (("Cancel", self.reject), ("Save mask", self.save)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            actions.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(tools)
        layout.addWidget(self.view, 1)
        layout.addLayout(actions)
        self.resize(1000, 780)

    @staticmethod
    def _spin(name: str, lo: int, hi: int, value: int, slot) -> QSpinBox:
        box = QSpinBox()
        box.setRange(lo, hi)
        box.setValue(value)
        box.setToolTip(name)
        if slot is not None:
            box.valueChanged.connect(slot)
        return box

    def _set_size(self, value: int) -> None:
        self.view.brush.size = float(value)
        self.view.update()

    def _set_erase(self, on: bool) -> None:
        self.view.brush.erase = on
        self.view.update()

    def showEvent(self, event):
        super().showEvent(event)
        self.view.fit()
        self.view.setFocus()

    def keyPressEvent(self, event):
        """Ctrl+Z undoes a stroke, E toggles the eraser, [ and ] change the brush size."""
        if event.matches(QKeySequence.Undo):
            self.view.undo()
        elif event.key() == Qt.Key_E:
            self.erase_button.toggle()
        elif event.key() in (Qt.Key_BracketLeft, Qt.Key_BracketRight):
            size = self.size_box.value()
            self.size_box.setValue(int(size / 1.25) if event.key() == Qt.Key_BracketLeft else int(size * 1.25) + 1)
        else:
            super().keyPressEvent(event)

    def invert(self) -> None:
        self.view.replace(1.0 - self.view.mask)

    def clear(self) -> None:
        self.view.replace(np.zeros_like(self.view.mask))

    def feather(self) -> None:
        self.view.replace(feathered(self.view.mask, self.feather_box.value()))

    def save(self) -> None:
        save_mask(self.view.mask, self.mask_path)
        self.accept()


def use_mask(window, node_id: str, mask_name: str) -> str:
    """Feed what used the node's MASK output from a LoadImageMask of ``mask_name`` (added if missing).

    One undo step; returns the mask node's id.
    """
    graph, editor = window.graph, window.editor
    existing = next((n for n in graph.nodes.values()
                     if n.type == "LoadImageMask" and n.values.get("image") == mask_name), None)
    commands = []
    if existing is None:
        item = window.scene.node_items[node_id]
        pos = item.pos() + QPointF(0, item.layout.height + 30)
        node = editor.new_node("LoadImageMask", pos)
        node.values.update(image=mask_name, channel="red")
        commands.append(cmd.AddNodes(graph, [node], "Add mask"))
        mask_id = node.id
    else:
        mask_id = existing.id
    mask_slot = next(k for k, o in enumerate(window.scene.node_items[node_id].spec.outputs) if o.type == "MASK")
    commands += [cmd.Connect(graph, mask_id, 0, link.dst, link.input) for link in graph.consumers(node_id)
                 if link.slot == mask_slot]
    if commands:
        editor.push_all("Use painted mask", commands)
    window.scene.refresh_thumbnail(mask_id)
    return mask_id


def open_for_node(window, node_id: str) -> None:
    """Open the mask editor on a LoadImage node's picture; on save, wire the mask in."""
    node = window.graph.nodes[node_id]
    try:
        path = default_paths().find_input(node.values.get("image", ""))
        dialog = MaskEditor(path, window)
    except LoomError as exc:
        window.show_message(str(exc))
        return
    if dialog.exec():
        use_mask(window, node_id, dialog.mask_path.relative_to(default_paths().input_dir).as_posix())
        window.show_message(f"Mask saved to {dialog.mask_path}")
