"""Renders the main window with the default workflow (after a run) to tests/artifacts/editor.png."""
from pathlib import Path

from PySide6.QtGui import QImage

from app import theme
from app.main import DEFAULT_WORKFLOW
from tests.test_editor_support import count_near, run_and_wait, window  # noqa: F401

ARTIFACT = Path(__file__).parent / "artifacts" / "editor.png"


def test_screenshot_of_the_default_workflow(window, qtbot):
    assert window.open_path(DEFAULT_WORKFLOW, template=True)
    result = run_and_wait(qtbot, window)
    assert result.status == "success"
    qtbot.wait(50)
    window.canvas.fit_view(selection_only=False)
    ARTIFACT.parent.mkdir(exist_ok=True)
    shot = window.grab().toImage()
    assert shot.save(str(ARTIFACT))
    image = QImage(str(ARTIFACT))
    assert (image.width(), image.height()) == (window.width(), window.height())
    assert count_near(image, theme.category_color("image"), 4) > 500          # node title bars
    saved = [i for i in window.scene.node_items.values() if i.node.type == "SaveImage"]
    assert saved and all(i.run.status == "done" and i.run.images for i in saved)
    assert window.outputs.count() == len(saved)
