"""Finding nodes: a fuzzy search popup and the categorised add-node menu.

The search ranks every node type by how well the query matches its display
name, type name, category and description; every word of the query must
match somewhere.  Opened from a dragged wire, it lists only the types that
have a socket the wire could connect to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtWidgets import QFrame, QLineEdit, QListWidget, QListWidgetItem, QMenu, QVBoxLayout

from engine.registry import Registry
from engine.schema import types_compatible

from .layout import Socket


@dataclass(frozen=True)
class Entry:
    type: str
    title: str
    category: str
    description: str


def entries(registry: Registry, socket: Socket | None = None, src_type: str | None = None) -> list[Entry]:
    """Every node type, or only those that could link to ``socket`` (of effective type ``src_type``)."""
    found = []
    for name in registry:
        cls = registry.get(name)
        if socket is not None:
            wire_type = src_type or socket.type
            if socket.is_output and not any(types_compatible(wire_type, i.type) for i in cls.INPUTS):
                continue
            if not socket.is_output and not any(types_compatible(o.type, socket.type) for o in cls.OUTPUTS):
                continue
        found.append(Entry(name, cls.title(), cls.CATEGORY, cls.DESCRIPTION))
    return found


def word_score(word: str, text: str) -> float:
    """How well ``word`` matches ``text``: substring beats subsequence; starts beat middles. 0: no match."""
    text = text.lower()
    if not word:
        return 1.0
    at = text.find(word)
    if at >= 0:
        starts_word = at == 0 or not text[at - 1].isalnum()
        return 100.0 - min(at, 40) + (40.0 if at == 0 else 20.0 if starts_word else 0.0) + 2.0 * len(word)
    # Subsequence: every letter in order; fewer and shorter gaps score higher.
    score, pos, previous = 30.0, 0, -2
    for ch in word:
        found = text.find(ch, pos)
        if found < 0:
            return 0.0
        if found != previous + 1:
            score -= 1.0 + 0.1 * (found - pos)
        previous, pos = found, found + 1
    return max(score, 1.0)


def rank(query: str, items: list[Entry]) -> list[Entry]:
    words = query.lower().split()
    if not words:
        return sorted(items, key=lambda e: (e.category, e.title.lower()))
    scored = []
    for entry in items:
        total = 0.0
        for word in words:
            best = max(3.0 * word_score(word, entry.title), 3.0 * word_score(word, entry.type),
                       1.0 * word_score(word, entry.category), 0.4 * word_score(word, entry.description))
            if best <= 0:
                break
            total += best
        else:
            scored.append((-total, entry.title.lower(), entry))
    return [e for *_, e in sorted(scored, key=lambda t: (t[0], t[1]))]


class SearchPopup(QFrame):
    """A search field over a ranked list; ``chosen`` carries the node type."""

    chosen = Signal(str)

    def __init__(self, items: list[Entry], parent=None, hint: str = ""):
        super().__init__(parent, Qt.Popup)
        self.setFrameShape(QFrame.StyledPanel)
        self.items = items
        self.line = QLineEdit(self)
        self.line.setPlaceholderText(hint or "Search nodes…")
        self.list = QListWidget(self)
        self.list.setMinimumWidth(380)
        self.list.setMinimumHeight(300)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.line)
        layout.addWidget(self.list)
        self.line.textChanged.connect(self.refresh)
        self.line.returnPressed.connect(self.accept_current)
        self.list.itemActivated.connect(lambda _: self.accept_current())
        self.list.itemClicked.connect(lambda _: self.accept_current())
        self.line.installEventFilter(self)
        self.refresh("")

    def refresh(self, query: str) -> None:
        self.list.clear()
        for entry in rank(query, self.items)[:200]:
            item = QListWidgetItem(f"{entry.title}    ·  {entry.category}")
            item.setData(Qt.UserRole, entry.type)
            item.setToolTip(entry.description or entry.type)
            self.list.addItem(item)
        if self.list.count():
            self.list.setCurrentRow(0)

    def current_type(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.UserRole) if item else None

    def accept_current(self) -> None:
        if not self.isVisible():  # a click and an activation may both arrive
            return
        type_name = self.current_type()
        self.close()
        if type_name:
            self.chosen.emit(type_name)

    def eventFilter(self, obj, event):
        if obj is self.line and event.type() == event.Type.KeyPress and event.key() in (Qt.Key_Up, Qt.Key_Down):
            row = self.list.currentRow() + (1 if event.key() == Qt.Key_Down else -1)
            self.list.setCurrentRow(max(0, min(self.list.count() - 1, row)))
            return True
        return False

    def open_at(self, global_pos: QPoint) -> None:
        self.move(global_pos)
        self.show()
        self.line.setFocus()


def category_menu(registry: Registry, on_choose: Callable[[str], None], parent=None) -> QMenu:
    """"Add Node" with a submenu per category level, tooltips from the schemas."""
    root = QMenu("Add Node", parent)
    root.setToolTipsVisible(True)
    menus: dict[str, QMenu] = {"": root}
    for entry in sorted(entries(registry), key=lambda e: (e.category, e.title.lower())):
        path = ""
        for part in [p for p in entry.category.split("/") if p]:
            child = f"{path}/{part}"
            if child not in menus:
                menus[child] = menus[path].addMenu(part)
                menus[child].setToolTipsVisible(True)
            path = child
        action = menus[path].addAction(entry.title)
        action.setToolTip(entry.description or entry.type)
        action.triggered.connect(lambda _=False, t=entry.type: on_choose(t))
    return root
