"""Parameter rows painted on a node, and the value arithmetic behind them.

Rows are painted, not embedded widgets (one ``QGraphicsProxyWidget`` per
parameter does not scale to large graphs); a real editor opens only when a
row is clicked (``editors``).  Numbers change by dragging sideways or with
the arrows, and take typed entry on a click.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPainterPath, QPen

from engine.schema import SEED_CONTROLS, Input

from . import theme

ARROW_W = 14.0
DRAG_PIXELS_PER_STEP = 6.0
INT_LIMIT = 2**64 - 1


# --- values --------------------------------------------------------------------------

def decimals(inp: Input) -> int:
    step = inp.round or inp.step or 0.01
    if step >= 1:
        return 0
    return min(6, max(1, -math.floor(math.log10(step) + 1e-9)))


def format_value(inp: Input, value: Any) -> str:
    if value is None:
        return "—"
    if inp.type == "BOOLEAN":
        return "true" if value else "false"
    if inp.type == "FLOAT" and isinstance(value, (int, float)):
        text = f"{value:.{decimals(inp)}f}"
        return text if float(text) == value else f"{value:.6g}"   # never hide precision the value has
    return str(value)


def clamp(inp: Input, value: float) -> float:
    if inp.min is not None:
        value = max(inp.min, value)
    if inp.max is not None:
        value = min(inp.max, value)
    return value


def number_step(inp: Input) -> float:
    if inp.step:
        return inp.step
    return 1 if inp.type == "INT" else 0.01


def stepped(inp: Input, value: Any, steps: float) -> int | float:
    """``value`` moved by ``steps`` steps, clamped to the input's range."""
    base = value if isinstance(value, (int, float)) and not isinstance(value, bool) else inp.default_value() or 0
    if inp.type == "INT":
        return int(clamp(inp, int(base) + int(round(steps)) * int(max(1, number_step(inp)))))
    new = clamp(inp, float(base) + steps * number_step(inp))
    return round(new, decimals(inp) + 2)


def parse_value(inp: Input, text: str) -> tuple[Any, str | None]:
    """(value, error message) for typed entry; numbers accept simple arithmetic like ``512*2``."""
    text = text.strip()
    if inp.type in ("INT", "FLOAT"):
        try:
            number = float(_arithmetic(text))
        except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
            return None, f"'{text}' is not a number"
        if not math.isfinite(number):
            return None, f"'{text}' is not a finite number"
        value = int(round(number)) if inp.type == "INT" else number
        return clamp(inp, value) if inp.type == "FLOAT" else int(clamp(inp, value)), None
    if inp.type == "BOOLEAN":
        if text.lower() in ("true", "1", "yes", "on"):
            return True, None
        if text.lower() in ("false", "0", "no", "off"):
            return False, None
        return None, f"'{text}' is not true or false"
    return text, None


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arithmetic(text: str) -> float:
    """Evaluate + - * / and parentheses over numbers, nothing else."""

    def walk(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.UnaryOp) and type(n.op) in _OPERATORS:
            return _OPERATORS[type(n.op)](walk(n.operand))
        if isinstance(n, ast.BinOp) and type(n.op) in _OPERATORS:
            return _OPERATORS[type(n.op)](walk(n.left), walk(n.right))
        raise ValueError(text)

    return walk(ast.parse(text, mode="eval").body)


def cycle_option(options: list[str], value: Any, direction: int) -> Any:
    if not options:
        return value
    index = options.index(value) if value in options else -1
    return options[(index + direction) % len(options)]


def row_part(inp: Input, rect: QRectF, x: float, control: bool = False) -> str:
    """Which part of a row ``x`` falls on: "dec", "inc" (arrows) or "body"."""
    if control or inp.multiline or inp.type in ("BOOLEAN", "STRING"):
        return "body"
    if x < rect.left() + ARROW_W:
        return "dec"
    if x > rect.right() - ARROW_W:
        return "inc"
    return "body"


# --- painting --------------------------------------------------------------------------

def paint_row(painter: QPainter, inp: Input, rect: QRectF, value: Any, *, control_value: str | None = None,
              linked: bool = False, problem: bool = False, missing: bool = False, detail: bool = True) -> None:
    pal = theme.PALETTE
    path = QPainterPath()
    radius = min(rect.height() / 2, 8.0) if not inp.multiline or control_value is not None else 5.0
    path.addRoundedRect(rect, radius, radius)
    painter.setPen(QPen(theme.PROBLEM_COLOR if problem else QColor(0, 0, 0, 0), 1.2))
    painter.setBrush(pal.row_fill)
    painter.drawPath(path)
    if not detail:
        return
    inner = rect.adjusted(ARROW_W, 0, -ARROW_W, 0)
    if control_value is not None:
        _label_value(painter, inner, "control after run", control_value + " ▾", pal.text_dim)
        return
    if linked:
        painter.setPen(pal.text_dim)
        painter.drawText(inner, Qt.AlignVCenter | Qt.AlignLeft, f"{inp.name}  ← linked")
        return
    if inp.multiline:
        _paint_text_box(painter, rect, inp, value)
        return
    if inp.type == "BOOLEAN":
        painter.setPen(pal.text_dim)
        painter.drawText(inner, Qt.AlignVCenter | Qt.AlignLeft, inp.name)
        _paint_toggle(painter, QRectF(inner.right() - 26, rect.center().y() - 6, 24, 12), bool(value))
        return
    text = format_value(inp, value)
    value_color = theme.ERROR_COLOR if missing else pal.text
    if inp.type == "COMBO":
        text += " ▾"
    elif inp.type in ("INT", "FLOAT"):
        _paint_arrows(painter, rect)
    _label_value(painter, inner, inp.name, text, value_color)


def _label_value(painter: QPainter, rect: QRectF, label: str, value: str, value_color: QColor) -> None:
    metrics = QFontMetricsF(painter.font())
    value_w = min(metrics.horizontalAdvance(value) + 2, rect.width() * 0.62)
    painter.setPen(theme.PALETTE.text_dim)
    label_rect = rect.adjusted(0, 0, -value_w - 6, 0)
    painter.drawText(label_rect, Qt.AlignVCenter | Qt.AlignLeft,
                     metrics.elidedText(label, Qt.ElideRight, label_rect.width()))
    painter.setPen(value_color)
    painter.drawText(rect, Qt.AlignVCenter | Qt.AlignRight, metrics.elidedText(value, Qt.ElideMiddle, value_w))


def _paint_arrows(painter: QPainter, rect: QRectF) -> None:
    painter.setPen(Qt.NoPen)
    painter.setBrush(theme.PALETTE.text_dim)
    cy = rect.center().y()
    for x, sign in ((rect.left() + 7, -1), (rect.right() - 7, 1)):
        painter.drawPolygon([QPointF(x + 3 * sign, cy), QPointF(x - 2 * sign, cy - 4), QPointF(x - 2 * sign, cy + 4)])


def _paint_toggle(painter: QPainter, rect: QRectF, on: bool) -> None:
    painter.setPen(Qt.NoPen)
    painter.setBrush(QColor("#3d7bd9") if on else QColor("#55585e"))
    painter.drawRoundedRect(rect, 6, 6)
    painter.setBrush(QColor("#f0f0f0"))
    knob = rect.height() - 4
    x = rect.right() - knob - 2 if on else rect.left() + 2
    painter.drawEllipse(QRectF(x, rect.top() + 2, knob, knob))


def _paint_text_box(painter: QPainter, rect: QRectF, inp: Input, value: Any) -> None:
    text = str(value or "")
    inner = rect.adjusted(6, 4, -6, -4)
    if not text:
        painter.setPen(theme.PALETTE.text_dim)
        painter.drawText(inner, Qt.AlignTop | Qt.AlignLeft, inp.name)
        return
    painter.setPen(theme.PALETTE.text)
    painter.drawText(inner, Qt.AlignTop | Qt.AlignLeft | Qt.TextWordWrap, text)


def control_text(controls: dict[str, str], name: str) -> str:
    value = controls.get(name, "fixed")
    return value if value in SEED_CONTROLS else "fixed"
