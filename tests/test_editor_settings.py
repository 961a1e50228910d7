"""Settings (model folders of other tools, device, cache budget, theme) and the shortcuts panel."""
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app import theme
from app.files import config_settings
from app.settings import Settings, ShortcutsDialog, install_dirs
from engine.graph import Graph
from tests.test_editor_support import row_point, click, show, window  # noqa: F401


def test_model_folders_of_comfyui_and_a1111_installs(tmp_path):
    comfy = tmp_path / "ComfyUI"
    for kind in ("checkpoints", "loras", "clip"):
        (comfy / "models" / kind).mkdir(parents=True)
    a1111 = tmp_path / "webui"
    for rel in ("models/Stable-diffusion", "models/Lora", "embeddings"):
        (a1111 / rel).mkdir(parents=True)
    assert install_dirs(comfy) == [("checkpoints", str(comfy / "models/checkpoints")),
                                   ("loras", str(comfy / "models/loras")), ("clip", str(comfy / "models/clip"))]
    assert install_dirs(a1111) == [("checkpoints", str(a1111 / "models/Stable-diffusion")),
                                   ("loras", str(a1111 / "models/Lora")), ("embeddings", str(a1111 / "embeddings"))]


def test_settings_persist_and_apply(window, tmp_path, loom_paths):
    folder = tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "model.safetensors").write_bytes(b"x")
    settings = Settings(theme="light", device="cpu", precision="fp32", cache_gb=0.5,
                        model_dirs=[("checkpoints", str(folder))], model_budget_gb=3.0)
    window.apply_settings(settings)
    assert Settings.load(config_settings(window.config_dir)) == settings
    # the added folder's model is offered beside the checkpoint Loom ships
    assert loom_paths.list_models("checkpoints") == ["loom-shapes.safetensors", "sub/model.safetensors"]
    assert window.runner.executor.cache.max_bytes == 512 * 1024**2
    assert not theme.PALETTE.dark
    from engine import memory
    assert memory.policy().describe() == "cpu float32"
    assert memory.model_manager().budget_bytes == 3 * 1024**3
    window.apply_settings(Settings())
    assert memory.model_manager().budget_bytes is None
    assert theme.PALETTE.dark


def test_shortcuts_panel_and_ctrl_enter_from_a_prompt(window, qtbot):
    dialog = ShortcutsDialog(window.actions_by_name.values(), window)
    rows = {dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())}
    assert rows["Queue run"].startswith("Ctrl+Return") and rows["Delete and reconnect"] == "Ctrl+Del"
    assert rows["Pan"] == "Middle drag, or Space + drag"
    dialog.close()
    g = Graph()
    g.add_node("PrimitiveStringMultiline", {"value": ""}, pos=(0.0, 0.0))
    g.add_node("TestSlowImage", {"steps": 1, "delay": 0.0}, pos=(0.0, 200.0))
    g.add_node("TestSink", pos=(300.0, 200.0))
    g.connect("2", 0, "3", "image")
    show(window, g)
    click(window.canvas, row_point(window, "1", "value"))
    editor = window.canvas.inline.widget
    QTest.keyClicks(editor, "a castle")
    with qtbot.waitSignal(window.runner.run_finished, timeout=20000):
        QTest.keyClick(editor, Qt.Key_Return, Qt.ControlModifier)      # commits the text, then queues
    assert window.graph.nodes["1"].values["value"] == "a castle"
    assert not window.canvas.inline.is_open
