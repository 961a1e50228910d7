"""The output strip: every image the runs produced, newest first; a click opens it large."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QDialog, QLabel, QListView, QListWidget, QListWidgetItem, QScrollArea, QVBoxLayout

MAX_HISTORY = 300
ICON = 96


class OutputStrip(QListWidget):
    opened = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.IconMode)
        self.setFlow(QListView.LeftToRight)
        self.setWrapping(False)
        self.setIconSize(QSize(ICON, ICON))
        self.setMovement(QListView.Static)
        self.setHorizontalScrollMode(QListView.ScrollPerPixel)
        self.setFixedHeight(ICON + 34)
        self.itemClicked.connect(lambda item: self.opened.emit(item.data(Qt.UserRole)))

    def add(self, path: str, thumbnail: QImage, caption: str) -> None:
        item = QListWidgetItem(QIcon(QPixmap.fromImage(thumbnail)), caption)
        item.setData(Qt.UserRole, path)
        item.setToolTip(path)
        self.insertItem(0, item)
        while self.count() > MAX_HISTORY:
            self.takeItem(self.count() - 1)

    def paths(self) -> list[str]:
        return [self.item(i).data(Qt.UserRole) for i in range(self.count())]


class ImageViewer(QDialog):
    """An output at full size (scrollable), titled with its file name."""

    def __init__(self, path: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle(Path(path).name)
        label = QLabel()
        label.setPixmap(QPixmap(path))
        label.setAlignment(Qt.AlignCenter)
        area = QScrollArea()
        area.setWidget(label)
        area.setWidgetResizable(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(area)
        size = label.pixmap().size()
        self.resize(min(size.width() + 24, 1400), min(size.height() + 24, 1000))
