"""Editor settings (model folders, device, memory, theme) and the shortcuts help panel."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QHeaderView, QInputDialog, QLabel, QListWidget, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout)

from engine.memory import DEVICES, PRECISIONS
from engine.paths import MODEL_KINDS, Paths

# Model folders of the tools users already have, relative to the install's root.
A1111_FOLDERS = {"checkpoints": "models/Stable-diffusion", "vae": "models/VAE", "loras": "models/Lora",
                 "controlnet": "models/ControlNet", "upscale_models": "models/ESRGAN", "embeddings": "embeddings"}

GESTURES = [
    ("Zoom to the cursor", "Mouse wheel"),
    ("Pan", "Middle drag, or Space + drag"),
    ("Connect", "Drag from a socket to a socket"),
    ("Move a link", "Drag from a linked input"),
    ("Add a linked node", "Drop a wire on empty canvas"),
    ("Search nodes", "Tab, or double-click the canvas"),
    ("Change a number", "Drag it sideways (Shift: ×10), or click to type"),
    ("Rename", "Double-click a title"),
    ("Select several", "Drag a rubber band; Ctrl+click adds"),
    ("Move a group with its nodes", "Drag the group's title"),
    ("Open a workflow or add an image", "Drop the file on the canvas"),
    ("Cancel a run", "Escape on the canvas"),
]


@dataclass
class Settings:
    theme: str = "dark"
    device: str = "auto"
    precision: str = "auto"
    cache_gb: float = 4.0
    model_dirs: list[tuple[str, str]] = field(default_factory=list)   # (kind, folder)
    autosave_seconds: int = 30
    model_budget_gb: float = 0.0  # loaded-model memory budget; 0 = automatic (3/4 of RAM or VRAM)

    @classmethod
    def load(cls, store: QSettings) -> "Settings":
        s = cls()
        s.theme = str(store.value("theme", s.theme))
        s.device = str(store.value("device", s.device))
        s.precision = str(store.value("precision", s.precision))
        s.cache_gb = float(store.value("cache_gb", s.cache_gb))
        s.autosave_seconds = int(store.value("autosave_seconds", s.autosave_seconds))
        s.model_budget_gb = float(store.value("model_budget_gb", s.model_budget_gb))
        raw = store.value("model_dirs", [])
        raw = [raw] if isinstance(raw, str) else list(raw or [])
        s.model_dirs = [tuple(item.split("=", 1)) for item in raw if "=" in item]
        return s

    def save(self, store: QSettings) -> None:
        for key in ("theme", "device", "precision", "cache_gb", "autosave_seconds", "model_budget_gb"):
            store.setValue(key, getattr(self, key))
        store.setValue("model_dirs", [f"{k}={d}" for k, d in self.model_dirs])

    def apply_model_dirs(self, paths: Paths) -> None:
        for kind, folder in self.model_dirs:
            paths.add_model_dir(kind, Path(folder))


def install_dirs(root: Path) -> list[tuple[str, str]]:
    """The model folders of a ComfyUI or AUTOMATIC1111/Forge install at ``root``."""
    root = Path(root)
    if (root / "models" / "Stable-diffusion").is_dir():
        return [(k, str(root / rel)) for k, rel in A1111_FOLDERS.items() if (root / rel).is_dir()]
    models = root / "models" if (root / "models").is_dir() else root
    found = [(k, str(models / k)) for k in MODEL_KINDS if (models / k).is_dir()]
    return found + [(alias, str(models / alias)) for alias in ("clip", "unet") if (models / alias).is_dir()]


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        form = QFormLayout()
        self.theme = self._combo(("dark", "light"), settings.theme)
        self.device = self._combo(DEVICES, settings.device)
        self.precision = self._combo(PRECISIONS, settings.precision)
        self.cache = QDoubleSpinBox()
        self.cache.setRange(0.25, 512.0)
        self.cache.setSuffix(" GB")
        self.cache.setValue(settings.cache_gb)
        form.addRow("Theme", self.theme)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        self.models = QDoubleSpinBox()
        self.models.setRange(0.0, 1024.0)
        self.models.setSuffix(" GB")
        self.models.setSpecialValueText("automatic")
        self.models.setValue(settings.model_budget_gb)
        form.addRow("Output cache budget", self.cache)
        form.addRow("Loaded models budget", self.models)
        self.folders = QListWidget()
        for kind, folder in settings.model_dirs:
            self.folders.addItem(f"{kind}: {folder}")
        buttons = QHBoxLayout()
        for text, slot in (("Add folder…", self._add_folder), ("Add ComfyUI / A1111 install…", self._add_install),
                           ("Remove", self._remove)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        box = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Extra model folders (used alongside models/):"))
        layout.addWidget(self.folders)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("Device and precision apply to the next run; theme applies now."))
        layout.addWidget(box)
        self.resize(620, 460)

    @staticmethod
    def _combo(options, current: str) -> QComboBox:
        combo = QComboBox()
        combo.addItems(list(options))
        combo.setCurrentText(current)
        return combo

    def _add_folder(self) -> None:
        kind, ok = QInputDialog.getItem(self, "Model kind", "Folder holds:", list(MODEL_KINDS), 0, False)
        folder = QFileDialog.getExistingDirectory(self, f"Folder of {kind}") if ok else ""
        if folder:
            self.folders.addItem(f"{kind}: {folder}")

    def _add_install(self) -> None:
        root = QFileDialog.getExistingDirectory(self, "ComfyUI or AUTOMATIC1111/Forge folder")
        for kind, folder in install_dirs(Path(root)) if root else []:
            self.folders.addItem(f"{kind}: {folder}")

    def _remove(self) -> None:
        for item in self.folders.selectedItems():
            self.folders.takeItem(self.folders.row(item))

    def result_settings(self) -> Settings:
        dirs = [tuple(self.folders.item(i).text().split(": ", 1)) for i in range(self.folders.count())]
        return Settings(self.theme.currentText(), self.device.currentText(), self.precision.currentText(),
                        self.cache.value(), dirs, self.settings.autosave_seconds, self.models.value())


class ShortcutsDialog(QDialog):
    """Every action with its shortcut, then the mouse gestures."""

    def __init__(self, actions, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = [(a.text().replace("&", ""), a.shortcut().toString()) for a in actions if not a.shortcut().isEmpty()]
        rows += GESTURES
        self.table = QTableWidget(len(rows), 2)
        self.table.setHorizontalHeaderLabels(["Action", "Keys"])
        for r, (name, keys) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(name))
            self.table.setItem(r, 1, QTableWidgetItem(keys))
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        self.resize(560, 620)
        self.setAttribute(Qt.WA_DeleteOnClose)
