"""Real editor widgets opened over a painted row: typed entry and multi-line text.

At most one is open.  It sits on the view's viewport over the row it edits,
commits on Enter or when focus leaves, and cancels on Escape.  While it has
focus, Ctrl+Z and friends belong to it (Qt gives a focused text widget the
standard editing shortcuts before any window action).
"""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QEvent, QObject, QRectF, Qt
from PySide6.QtWidgets import QGraphicsView, QLineEdit, QPlainTextEdit, QWidget


class InlineEditor(QObject):
    def __init__(self, view: QGraphicsView):
        super().__init__(view)
        self.view = view
        self.widget: QWidget | None = None
        self._on_commit: Callable[[str], None] | None = None

    @property
    def is_open(self) -> bool:
        return self.widget is not None

    def open_line(self, scene_rect: QRectF, text: str, on_commit: Callable[[str], None]) -> QLineEdit:
        editor = QLineEdit(self.view.viewport())
        editor.setText(text)
        editor.selectAll()
        editor.returnPressed.connect(lambda: self.commit(refocus=True))
        self._show(editor, scene_rect, on_commit)
        return editor

    def open_text(self, scene_rect: QRectF, text: str, on_commit: Callable[[str], None]) -> QPlainTextEdit:
        editor = QPlainTextEdit(self.view.viewport())
        editor.setPlainText(text)
        editor.moveCursor(editor.textCursor().MoveOperation.End)
        self._show(editor, scene_rect, on_commit)
        return editor

    def _show(self, editor: QWidget, scene_rect: QRectF, on_commit) -> None:
        self.commit()
        self.widget, self._on_commit = editor, on_commit
        rect = self.view.mapFromScene(scene_rect).boundingRect()
        # Zoomed far out a row is a few pixels tall: the editor stays usable.
        rect.setWidth(max(rect.width(), 200))
        rect.setHeight(max(rect.height(), 26 if isinstance(editor, QLineEdit) else 120))
        editor.setGeometry(rect)
        editor.installEventFilter(self)
        editor.show()
        editor.setFocus(Qt.OtherFocusReason)

    def text(self) -> str:
        if isinstance(self.widget, QLineEdit):
            return self.widget.text()
        return self.widget.toPlainText() if self.widget is not None else ""

    def commit(self, refocus: bool = False) -> None:
        """Apply the text (Enter, focus out, or before a run/save) and close."""
        if self.widget is None:
            return
        text, on_commit = self.text(), self._on_commit
        self._close(refocus)
        on_commit(text)

    def cancel(self) -> None:
        if self.widget is not None:
            self._close(refocus=True)

    def _close(self, refocus: bool) -> None:
        widget, self.widget, self._on_commit = self.widget, None, None
        widget.removeEventFilter(self)
        widget.hide()
        widget.deleteLater()
        if refocus:
            self.view.setFocus(Qt.OtherFocusReason)

    def eventFilter(self, obj, event):
        if obj is self.widget:
            if event.type() == QEvent.KeyPress and event.key() == Qt.Key_Escape:
                self.cancel()
                return True
            if event.type() == QEvent.FocusOut and event.reason() != Qt.PopupFocusReason:
                self.commit()
        return False
