"""``python main.py``: the editor, with ``workflows/default.json`` when it exists."""
from __future__ import annotations

import sys

from engine.paths import ROOT

DEFAULT_WORKFLOW = ROOT / "workflows" / "default.json"


def main(argv=None) -> int:
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .theme import apply_theme

    app = QApplication.instance() or QApplication(list(argv if argv is not None else sys.argv))
    app.setApplicationName("Loom")
    app.setOrganizationName("Loom")
    window = MainWindow()
    apply_theme(app, window.settings.theme == "dark")
    window.show()
    if not window.offer_recovery() and DEFAULT_WORKFLOW.is_file():
        window.open_path(DEFAULT_WORKFLOW, ask_first=False, template=True)
    return app.exec()
