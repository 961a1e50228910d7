"""The main window: canvas, output strip, history and issues panels, files, runs."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from PySide6.QtCore import QPointF, QStandardPaths, Qt, QTimer
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QListWidget, QMainWindow,
                               QMessageBox, QProgressBar, QUndoView)

from engine import events as ev
from engine import memory
from engine.errors import LoomError, WorkflowFileError
from engine.executor import resolve_seeds
from engine.graph import Graph, Group
from engine.paths import IMAGE_EXTENSIONS, default_paths
from engine.registry import Registry, default_registry
from engine.validation import validate

from . import commands as cmd
from . import files, menus, theme
from .canvas import Canvas
from .editing import Editor
from .outputs import ImageViewer, OutputStrip
from .runner import Progress, Runner, apply_event
from .scene import GraphScene
from .settings import Settings, SettingsDialog, ShortcutsDialog

NO, YES, CANCEL = QMessageBox.No, QMessageBox.Yes, QMessageBox.Cancel


def default_config_dir() -> Path:
    return Path(QStandardPaths.writableLocation(QStandardPaths.AppConfigLocation) or Path.home() / ".loom")


class MainWindow(QMainWindow):
    def __init__(self, registry: Registry | None = None, config_dir: Path | None = None):
        super().__init__()
        self.registry = registry or default_registry()
        self.config_dir = Path(config_dir or default_config_dir())
        self.store = files.config_settings(self.config_dir)
        self.settings = Settings.load(self.store)
        self.settings.apply_model_dirs(default_paths())
        self.recent = files.RecentFiles(self.store)
        self.autosave = files.Autosave(self.config_dir)
        self.path: Path | None = None
        self.format = "native"
        self.actions_by_name = {}
        self._autosaved_index = -1

        self.undo = QUndoStack(self)
        self.scene = GraphScene(self.registry, self.undo, self)
        self.editor = Editor(self.scene)
        self.canvas = Canvas(self.scene, self.editor, self)
        self.setCentralWidget(self.canvas)
        self.runner = Runner(self.registry, int(self.settings.cache_gb * 1024**3), self)
        self.progress = Progress()
        self._build_panels()
        self._build_status()
        menus.build_actions(self)
        menus.build_menus(self)
        menus.build_toolbar(self)
        self._connect()
        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_timer.start(self.settings.autosave_seconds * 1000)
        self.resize(1500, 920)
        self._update_title()
        self._configure_device()

    def _configure_device(self) -> None:
        try:
            memory.configure(self.settings.device, self.settings.precision)
        except LoomError as exc:
            self.show_message(f"{exc}; using automatic device choice")
            memory.configure()
        budget = self.settings.model_budget_gb
        memory.model_manager().budget_bytes = int(budget * 1024**3) if budget > 0 else None

    # --- construction ----------------------------------------------------------------------
    def _build_panels(self) -> None:
        self.outputs = OutputStrip()
        self.outputs.opened.connect(lambda path: ImageViewer(path, self).show())
        self.issues = QListWidget()
        self.issues.itemActivated.connect(lambda item: self.focus_node(item.data(Qt.UserRole)))
        self.docks = []
        for title, widget, area, visible in (("Outputs", self.outputs, Qt.BottomDockWidgetArea, True),
                                             ("Issues", self.issues, Qt.RightDockWidgetArea, False),
                                             ("History", QUndoView(self.undo), Qt.RightDockWidgetArea, False)):
            dock = QDockWidget(title, self)
            dock.setObjectName(title)
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            dock.setVisible(visible)
            self.docks.append(dock)
        self.issues_dock = self.docks[1]

    def _build_status(self) -> None:
        self.status_label = QLabel("Ready")
        self.progress_bar = QProgressBar()
        self.progress_bar.setFixedWidth(320)
        self.progress_bar.setFormat("idle")
        self.progress_bar.setValue(0)
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().addPermanentWidget(self.progress_bar)

    def _connect(self) -> None:
        self.canvas.message.connect(self.show_message)
        self.canvas.files_dropped.connect(self.drop_files)
        self.canvas.context_requested.connect(lambda p, g, t: menus.context_menu(self, p, g, t))
        self.canvas.error_clicked.connect(self.show_error)
        self.canvas.escape_pressed.connect(self.cancel_run)
        self.runner.event.connect(self._on_run_event)
        self.runner.run_finished.connect(self._on_run_finished)
        cancel = self.actions_by_name["cancel"]
        cancel.setEnabled(False)
        self.runner.run_started.connect(lambda: cancel.setEnabled(True))
        self.runner.run_finished.connect(lambda _: cancel.setEnabled(self.runner.running))
        self.runner.queue_changed.connect(lambda n: n and self.show_message(f"{n} run(s) queued"))
        self.undo.cleanChanged.connect(self._update_title)

    def show_message(self, text: str) -> None:
        self.status_label.setText(text)

    def ask(self, title: str, text: str, buttons=YES | NO, default=YES):
        """A question box (tests replace this)."""
        return QMessageBox.question(self, title, text, buttons, default)

    # --- documents --------------------------------------------------------------------------
    @property
    def graph(self) -> Graph:
        return self.scene.graph

    def set_graph(self, graph: Graph, path: Path | None = None, fmt: str = "native") -> None:
        self.canvas.inline.cancel()
        self.scene.set_graph(graph)
        self.undo.clear()
        self.path, self.format = (Path(path) if path else None), fmt
        self._update_title()
        QTimer.singleShot(0, lambda: self.canvas.fit_view(selection_only=False))

    def _update_title(self, clean: bool | None = None) -> None:
        clean = self.undo.isClean() if clean is None else clean
        name = self.path.name if self.path else "Untitled"
        self.setWindowTitle(f"{name}{'' if clean else ' *'} — Loom")

    def maybe_save(self) -> bool:
        """True when it is safe to drop the open workflow (saved, discarded, or unchanged)."""
        self.canvas.inline.commit()
        if self.undo.isClean():
            return True
        answer = self.ask("Unsaved changes", "Save the changes to this workflow first?", YES | NO | CANCEL, YES)
        if answer == CANCEL:
            return False
        return self.save() if answer == YES else True

    def new_workflow(self) -> None:
        if self.maybe_save():
            self.set_graph(Graph())

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open workflow", str(self.path.parent if self.path else Path.cwd()),
                                              files.OPEN_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path, ask_first: bool = True, template: bool = False) -> bool:
        """Open a workflow file; a ``template`` (an example) opens untitled so Save never overwrites it."""
        if ask_first and not self.maybe_save():
            return False
        try:
            loaded = files.open_workflow(path, self.registry)
        except WorkflowFileError as exc:
            QMessageBox.warning(self, "Cannot open workflow", f"{path}:\n{exc}")
            return False
        keeps_path = not template and loaded.format in ("native", "comfy_ui") and Path(path).suffix == ".json"
        self.set_graph(loaded.graph, path if keeps_path else None, loaded.format if keeps_path else "native")
        if not template:
            self.recent.add(path)
        self.show_issues([(w, None) for w in loaded.warnings])
        self.show_message(f"Opened {Path(path).name} ({loaded.format})"
                          + (f" with {len(loaded.warnings)} warning(s)" if loaded.warnings else ""))
        return True

    def save(self) -> bool:
        if self.path is None:
            return self.save_as_dialog()
        return self.save_to(self.path, self.format)

    def save_as_dialog(self) -> bool:
        filters = ";;".join(files.SAVE_FORMATS.values())
        path, chosen = QFileDialog.getSaveFileName(self, "Save workflow", str(self.path or "workflow.json"), filters)
        if not path:
            return False
        fmt = next((k for k, v in files.SAVE_FORMATS.items() if v == chosen), "native")
        return self.save_to(Path(path).with_suffix(".json"), fmt)

    def save_to(self, path, fmt: str = "native") -> bool:
        self.canvas.inline.commit()
        try:
            files.save_workflow(self.graph, path, self.registry, fmt)
        except (WorkflowFileError, LoomError) as exc:
            QMessageBox.warning(self, "Cannot save", str(exc))
            return False
        if fmt != "comfy_api":  # an API prompt drops the layout: keep editing the full workflow
            self.path, self.format = Path(path), fmt
            self.undo.setClean()
        self.recent.add(path)
        self._update_title()
        self.show_message(f"Saved {path}")
        return True

    def autosave_now(self) -> None:
        if self.undo.isClean() or self.undo.index() == self._autosaved_index:
            return
        try:
            self.autosave.write(self.graph, self.registry, str(self.path) if self.path else None)
            self._autosaved_index = self.undo.index()
        except (WorkflowFileError, OSError) as exc:
            self.show_message(f"Autosave failed: {exc}")

    def offer_recovery(self) -> bool:
        """After a crash: offer the autosaved workflow; True if it was restored."""
        pending = self.autosave.pending()
        if pending is None:
            return False
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(pending.get("time") or 0))
        source = pending.get("source") or "an unsaved workflow"
        if self.ask("Recover work", f"Loom did not close cleanly. Recover {source} as autosaved at {when}?") != YES:
            self.autosave.discard()
            return False
        try:
            graph = self.autosave.recover(self.registry)
        except WorkflowFileError as exc:
            self.show_message(f"The autosave could not be read: {exc}")
            return False
        self.set_graph(graph, pending.get("source"))
        self.undo.resetClean()  # recovered work is unsaved until saved
        self._update_title()
        return True

    def closeEvent(self, event):
        if not self.maybe_save():
            event.ignore()
            return
        self.runner.cancel()
        self.runner.wait()
        self.autosave.discard()
        self.settings.save(self.store)
        event.accept()

    def drop_files(self, paths: list[str], pos: QPointF) -> None:
        """A workflow opens; an image goes into LoadImage (under the cursor, else a new one)."""
        for path in map(Path, paths):
            if path.suffix.lower() in IMAGE_EXTENSIONS and self._drop_image(path, pos):
                continue
            if path.suffix.lower() in files.WORKFLOW_SUFFIXES:
                self.open_path(path)
                return

    def _drop_image(self, path: Path, pos: QPointF) -> bool:
        item, _ = self.canvas.node_at(pos)
        target = item if item is not None and any(i.upload == "image" for i in item.spec.inputs) else None
        if target is None and path.suffix.lower() == ".png":
            try:
                files.open_workflow(path, self.registry)
                return False  # a PNG with a workflow opens as a workflow
            except WorkflowFileError:
                pass
        name = self.import_image(path)
        if target is not None:
            upload = next(i for i in target.spec.inputs if i.upload == "image")
            self.editor.set_value(target.node_id, upload.name, name)
        elif "LoadImage" in self.registry:
            node_id = self.editor.add_node("LoadImage", pos)
            self.editor.set_value(node_id, "image", name)
        return True

    def import_image(self, path: Path) -> str:
        """Copy an image into the input folder (unless it is there already); its name there."""
        input_dir = default_paths().input_dir
        input_dir.mkdir(parents=True, exist_ok=True)
        if path.resolve().parent == input_dir.resolve():
            return path.name
        target = input_dir / path.name
        counter = 1
        while target.exists() and target.read_bytes() != path.read_bytes():
            target = input_dir / f"{path.stem}_{counter}{path.suffix}"
            counter += 1
        if not target.exists():
            shutil.copy2(path, target)
        return target.name

    # --- editing commands that need the clipboard or dialogs ---------------------------------------
    def copy(self) -> bool:
        ids, groups = self.scene.selected_node_ids(), self.scene.selected_groups()
        if not ids and not groups:
            return False
        QApplication.clipboard().setText(files.graph_to_text(self.editor.clipboard_graph(ids, groups)))
        self.show_message(f"Copied {len(ids)} node(s)")
        return True

    def cut(self) -> None:
        if self.copy():
            self.delete()

    def paste(self) -> list[str]:
        text = QApplication.clipboard().text()
        if not text.strip():
            return []
        try:
            graph = files.graph_from_text(text, self.registry)
        except WorkflowFileError as exc:
            self.show_message(f"Nothing to paste: the clipboard holds no workflow ({exc})")
            return []
        return self._select(self.editor.paste(graph, self.canvas.cursor_scene_pos()))

    def duplicate(self) -> list[str]:
        ids, groups = self.scene.selected_node_ids(), self.scene.selected_groups()
        return self._select(self.editor.paste(self.editor.clipboard_graph(ids, groups)))

    def _select(self, ids: list[str]) -> list[str]:
        self.scene.clearSelection()
        for node_id in ids:
            self.scene.node_items[node_id].setSelected(True)
        return ids

    def delete(self, bridge: bool = False) -> None:
        self.editor.delete(self.scene.selected_node_ids(), self.scene.selected_groups(),
                           self.scene.selected_wires(), bridge)

    def group_selection(self) -> None:
        self.editor.group(self.scene.selected_node_ids())

    def add_empty_group(self, pos: QPointF) -> None:
        self.undo.push(cmd.AddGroup(self.graph, Group("Group", (pos.x(), pos.y(), 400.0, 300.0))))

    def set_color(self, ids, color: str | None) -> None:
        self.undo.push(cmd.UpdateNodes(self.graph, {i: {"color": color} for i in ids}, "Colour"))

    def focus_node(self, node_id: str | None) -> None:
        item = self.scene.node_items.get(node_id or "")
        if item is not None:
            self.scene.clearSelection()
            item.setSelected(True)
            self.canvas.centerOn(item)

    def show_issues(self, issues: list[tuple[str, str | None]]) -> None:
        """Problems and warnings in the Issues panel (double-click one to go to its node)."""
        self.issues.clear()
        for text, node_id in issues:
            self.issues.addItem(text)
            self.issues.item(self.issues.count() - 1).setData(Qt.UserRole, node_id)
        self.issues_dock.setVisible(bool(issues))

    def choose_image(self, node_id: str) -> None:
        """LoadImage's upload: pick a picture anywhere; it is copied into the input folder."""
        path, _ = QFileDialog.getOpenFileName(self, "Choose image", str(Path.home()),
                                              "Images (" + " ".join(f"*{e}" for e in sorted(IMAGE_EXTENSIONS)) + ")")
        if path:
            upload = next(i for i in self.scene.node_items[node_id].spec.inputs if i.upload == "image")
            self.editor.set_value(node_id, upload.name, self.import_image(Path(path)))

    def open_mask_editor(self, node_id: str) -> None:
        from .mask_editor import open_for_node

        open_for_node(self, node_id)

    # --- running ------------------------------------------------------------------------------------
    def queue_run(self, targets=None) -> bool:
        """Validate, resolve seeds (shown on the nodes), then queue a snapshot of the workflow."""
        self.canvas.inline.commit()
        plan = validate(self.graph, self.registry, targets)
        self.scene.set_problems(plan.problems)
        if plan.problems:
            self.show_issues([(str(p), p.node_id) for p in plan.problems])
            self.show_message(f"Not run: {len(plan.problems)} problem(s) — {plan.problems[0]}")
            return False
        self.show_issues([])
        seeds = resolve_seeds(self.graph)
        if seeds:
            used = "; ".join(f"#{n} " + ", ".join(f"{k}={v}" for k, v in s.items()) for n, s in seeds.items())
            self.show_message(f"Queued (seeds: {used})")
        self.runner.queue(self.graph, targets, force=targets or ())
        return True

    def cancel_run(self) -> None:
        if self.runner.running or self.runner.pending:
            self.runner.cancel()
            self.show_message("Cancelling after the current step…")

    def _on_run_event(self, event: ev.Event, images: list) -> None:
        apply_event(self.scene, event, images)
        self.progress.update(event)
        if isinstance(event, ev.NodeStarted):
            self.show_message(f"Running #{event.node_id} {event.title}")
        elif isinstance(event, ev.NodeFinished) and images:
            for info, image in zip(event.ui.get("images", []), images):
                item = self.scene.node_items.get(event.node_id)
                self.outputs.add(info["path"], image, item.title() if item else f"#{event.node_id}")
        elif isinstance(event, ev.NodeError):
            self.show_issues([(str(event), event.node_id)])
            self.show_message(f"Error in #{event.node_id} {event.title}: {event.message}")
        self._show_progress(event)

    def _show_progress(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunFinished):
            self.progress_bar.setValue(100 if event.status == "success" else 0)
            self.progress_bar.setFormat(f"{event.status} · {event.seconds:.2f} s")
            return
        eta = self.progress.eta()
        self.progress_bar.setValue(int(100 * self.progress.overall()))
        self.progress_bar.setFormat(f"{self.progress.done}/{self.progress.total} · %p%"
                                    + (f" · ETA {eta:.0f} s" if eta is not None else ""))

    def _on_run_finished(self, result) -> None:
        if result is None:
            QMessageBox.critical(self, "Run failed", "The run stopped on an internal error:\n\n" + self.runner.crash_trace)
            return
        if result.status == "success":
            self.show_message(f"Done in {result.seconds:.2f} s: {len(result.executed)} ran, {len(result.cached)} cached")
        elif result.status == "cancelled":
            self.show_message("Cancelled")

    def show_error(self, node_id: str) -> None:
        item = self.scene.node_items.get(node_id)
        if item is None or item.run.error is None:
            return
        error = item.run.error
        box = QMessageBox(QMessageBox.Critical, f"{error.title} failed", str(error), QMessageBox.Ok, self)
        box.setDetailedText(error.traceback)
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.show()
        self.error_box = box

    # --- settings and help -------------------------------------------------------------------------------
    def settings_dialog(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.apply_settings(dialog.result_settings())

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        settings.save(self.store)
        settings.apply_model_dirs(default_paths())
        theme.apply_theme(QApplication.instance(), settings.theme == "dark")
        self.canvas.resetCachedContent()
        for item in self.scene.items():
            item.update()
        self.runner.executor.cache.max_bytes = int(settings.cache_gb * 1024**3)
        self._configure_device()

    def shortcuts_dialog(self) -> None:
        self.shortcuts = ShortcutsDialog(self.actions_by_name.values(), self)
        self.shortcuts.show()
