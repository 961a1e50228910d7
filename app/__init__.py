"""The PySide6 editor: a view of engine.graph that edits through a QUndoStack and runs on a worker thread."""
