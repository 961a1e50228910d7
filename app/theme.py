"""Colours, metrics and the application palette.

Socket colours follow ComfyUI's (users recognise a LATENT wire by its pink);
unknown types get a stable colour hashed from their name.  Title bars are
coloured by the node's top-level category.
"""
from __future__ import annotations

import hashlib

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

TYPE_COLORS = {
    "MODEL": "#b39ddb", "CLIP": "#ffd500", "VAE": "#ff6e6e", "CONDITIONING": "#ffa931",
    "LATENT": "#ff9cf9", "IMAGE": "#64b5f6", "MASK": "#81c784", "CONTROL_NET": "#00d78d",
    "UPSCALE_MODEL": "#a3e635", "CLIP_VISION": "#a8dadc", "CLIP_VISION_OUTPUT": "#ad7452",
    "STYLE_MODEL": "#c2ffae", "SAMPLER": "#ecb4b4", "SIGMAS": "#cdffcd", "NOISE": "#b0b0b0",
    "GUIDER": "#66ffff", "INT": "#6ec6d0", "FLOAT": "#b8d36e", "STRING": "#9fd39c",
    "BOOLEAN": "#e0a0e0", "COMBO": "#a0a8c0", "*": "#c8c8c8",
}
CATEGORY_COLORS = {
    "loaders": "#3b4b6e", "conditioning": "#6b5330", "sampling": "#3f5c3a", "latent": "#6a3a64",
    "image": "#2f5570", "mask": "#3a5f45", "utils": "#4a4a4a", "advanced": "#5a4030",
    "model_patches": "#55406b", "_for_testing": "#603030",
}

# Node geometry (scene units).
NODE_WIDTH = 240.0
TITLE_H = 26.0
ROW_H = 22.0
TEXT_ROWS = 5            # visible lines of a multi-line text row
SOCKET_R = 5.0
SOCKET_HIT = 11.0        # hit radius for starting a wire drag
CORNER = 7.0
PAD = 8.0
IMAGE_H = 200.0          # height of the image area of preview/save/load nodes
ERROR_H = 64.0

# Canvas.
GRID_MINOR = 20
GRID_MAJOR = 100
ZOOM_MIN, ZOOM_MAX = 0.08, 4.0
LOD_TEXT = 0.45          # below this scale node text is not painted
LOD_DETAIL = 0.7         # below this, row widgets are painted as plain bars

BYPASS_COLOR = QColor("#8e44ad")
RUNNING_COLOR = QColor("#4cd964")
ERROR_COLOR = QColor("#ff4d4d")
PROBLEM_COLOR = QColor("#ffb020")
SELECT_COLOR = QColor("#f5f5f5")
CACHED_COLOR = QColor("#5fa8d3")


def _hashed(name: str) -> QColor:
    digest = hashlib.md5(name.encode()).digest()
    return QColor.fromHsv(digest[0] * 360 // 256, 110 + digest[1] % 80, 200 + digest[2] % 50)


def type_color(type_name: str) -> QColor:
    """The colour of a socket or wire of ``type_name`` (a union takes its first member)."""
    first = type_name.split(",")[0]
    return QColor(TYPE_COLORS[first]) if first in TYPE_COLORS else _hashed(first)


def category_color(category: str) -> QColor:
    top = (category or "misc").split("/")[0]
    if top in CATEGORY_COLORS:
        return QColor(CATEGORY_COLORS[top])
    color = _hashed(top)
    return QColor.fromHsv(color.hue(), 90, 95)


def ui_font(point_size: float = 9.0, bold: bool = False) -> QFont:
    font = QFont(QApplication.font())
    font.setPointSizeF(point_size)
    font.setBold(bold)
    return font


class Palette:
    """Colours the canvas paints with; one instance per theme."""

    def __init__(self, dark: bool = True):
        self.dark = dark
        if dark:
            self.background = QColor("#1e1f22")
            self.grid_minor = QColor("#26282c")
            self.grid_major = QColor("#31343a")
            self.node_body = QColor("#2b2d31")
            self.node_border = QColor("#111214")
            self.row_fill = QColor("#202226")
            self.text = QColor("#dcdcdc")
            self.text_dim = QColor("#8c9096")
            self.group_fill = QColor(120, 140, 170, 40)
        else:
            self.background = QColor("#eef0f3")
            self.grid_minor = QColor("#e2e5ea")
            self.grid_major = QColor("#d2d6dd")
            self.node_body = QColor("#fbfbfc")
            self.node_border = QColor("#9aa0a8")
            self.row_fill = QColor("#e9ecf0")
            self.text = QColor("#1d1f22")
            self.text_dim = QColor("#6a6f76")
            self.group_fill = QColor(90, 120, 170, 40)


PALETTE = Palette(dark=True)


def apply_theme(app: QApplication, dark: bool = True) -> None:
    """Fusion style with a dark (default) or light palette, for the widgets and the canvas."""
    global PALETTE
    PALETTE = Palette(dark)
    app.setStyle("Fusion")
    if not dark:
        app.setPalette(app.style().standardPalette())
        return
    p = QPalette()
    window, base, text = QColor("#2b2d31"), QColor("#1e1f22"), QColor("#dcdcdc")
    for role, color in ((QPalette.Window, window), (QPalette.WindowText, text), (QPalette.Base, base),
                        (QPalette.AlternateBase, window), (QPalette.ToolTipBase, QColor("#3a3d42")),
                        (QPalette.ToolTipText, text), (QPalette.Text, text), (QPalette.Button, window),
                        (QPalette.ButtonText, text), (QPalette.Highlight, QColor("#3d7bd9")),
                        (QPalette.HighlightedText, QColor("#ffffff")), (QPalette.Link, QColor("#6aa9ff")),
                        (QPalette.PlaceholderText, QColor("#80848a"))):
        p.setColor(role, color)
    for role in (QPalette.Text, QPalette.ButtonText, QPalette.WindowText):
        p.setColor(QPalette.Disabled, role, QColor("#6a6e74"))
    app.setPalette(p)
