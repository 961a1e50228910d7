"""Loom's own workflow file: versioned JSON, migrated on load, written atomically.

Layout of format version 1::

    {"format": "loom-workflow", "format_version": 1,
     "nodes": [{"id", "type", "version", "title", "pos", "size", "mode", "collapsed", "color",
                "values", "controls", "links": {input: [src_id, slot]}, "extra"}],
     "groups": [{"title", "bounding", "color", "extra"}],
     "extra": {...}}

Version 0, the first layout, kept every link in one top-level list
``[[src, slot, dst, input], ...]`` and a node's values under ``"widgets"``.
``MIGRATIONS[k]`` turns a version-k document into version k+1.

Each node also carries the schema version of its type; an older one is brought
up to date with the type's ``migrate``.  Unknown types load as placeholders
that keep every field, so load -> save -> load is exact.

The file helpers every format shares (JSON parsing with positions, typed
field access, atomic writes) live here too.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from ..errors import WorkflowFileError
from ..graph import MODES, Graph, GraphNode, Group
from ..registry import Registry

FORMAT = "loom-workflow"
FORMAT_VERSION = 1


# --- shared file helpers -----------------------------------------------------------------

def parse_json(data: bytes | str) -> Any:
    """Parse JSON text, reporting the line and column of a syntax error."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as exc:
        raise WorkflowFileError(f"not UTF-8 text (byte {exc.start} is invalid)") from None
    if not text.strip():
        raise WorkflowFileError("the file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(f"bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise WorkflowFileError("bad JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python parses
        raise WorkflowFileError(f"bad JSON: {exc}") from None


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` so that ``path`` is either the old file or the complete new one.

    The text goes to a temporary file in the same folder, is flushed to disk,
    then renamed over ``path`` (atomic on POSIX and Windows).  An existing
    file's permissions are kept.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WorkflowFileError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable where the OS allows it (POSIX; best effort)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the file itself is already on disk
    finally:
        os.close(fd)


def dumps(data: Any) -> str:
    try:
        return json.dumps(data, indent=1, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise WorkflowFileError(f"cannot save: {exc}") from exc


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def need(value: Any, kind: type | tuple, where: str, what: str) -> Any:
    """``value`` if it is an instance of ``kind`` (booleans never count as numbers)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise WorkflowFileError(f"{where}: expected {what}, found {_type_name(value)}")
    return value


def need_vec(value: Any, n: int, where: str) -> tuple[float, ...]:
    """A list of ``n`` numbers, as floats."""
    need(value, list, where, f"a list of {n} numbers")
    if len(value) != n:
        raise WorkflowFileError(f"{where}: expected {n} numbers, found {len(value)}")
    return tuple(float(need(v, (int, float), where, "numbers")) for v in value)


# --- migrations --------------------------------------------------------------------------

def _migrate_0_to_1(doc: dict) -> dict:
    """Version 0 -> 1: node ``widgets`` become ``values``; top-level links move onto their target."""
    nodes = need(doc.get("nodes", []), list, "nodes", "a list")
    by_id = {}
    for i, node in enumerate(nodes):
        need(node, dict, f"nodes[{i}]", "an object")
        node["values"] = node.pop("widgets", {})
        node.setdefault("links", {})
        by_id[str(node.get("id"))] = node
    for i, link in enumerate(need(doc.pop("links", []), list, "links", "a list")):
        where = f"links[{i}]"
        if not isinstance(link, list) or len(link) != 4:
            raise WorkflowFileError(f"{where}: expected [src, slot, dst, input]")
        src, slot, dst, name = link
        target = by_id.get(str(dst))
        if target is None:
            raise WorkflowFileError(f"{where}: links to node {dst}, which does not exist")
        need(target["links"], dict, f"node {dst}.links", "an object")[need(name, str, where, "an input name")] = [src, slot]
    doc["format_version"] = 1
    return doc


MIGRATIONS = [_migrate_0_to_1]  # MIGRATIONS[k]: version k -> k+1


def migrate(doc: dict) -> dict:
    """Bring a parsed native document up to :data:`FORMAT_VERSION`."""
    version = need(doc.get("format_version"), int, "format_version", "an integer")
    if version > FORMAT_VERSION:
        raise WorkflowFileError(f"written by a newer Loom (format {version}; this Loom reads up to {FORMAT_VERSION})")
    if version < 0:
        raise WorkflowFileError(f"format_version {version} is not valid")
    for step in MIGRATIONS[version:]:
        doc = step(doc)
    return doc


# --- to and from JSON --------------------------------------------------------------------

def node_to_json(node: GraphNode) -> dict:
    return {
        "id": node.id, "type": node.type, "version": node.version, "title": node.title,
        "pos": list(node.pos), "size": list(node.size) if node.size is not None else None,
        "mode": node.mode, "collapsed": node.collapsed, "color": node.color,
        "values": node.values, "controls": node.controls,
        "links": {name: [src, slot] for name, (src, slot) in node.links.items()},
        "extra": node.extra,
    }


def to_native(graph: Graph) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "nodes": [node_to_json(n) for n in graph.nodes.values()],
        "groups": [{"title": g.title, "bounding": list(g.bounding), "color": g.color, "extra": g.extra}
                   for g in graph.groups],
        "extra": graph.extra,
    }


def dumps_native(graph: Graph) -> str:
    return dumps(to_native(graph))


def save_native(graph: Graph, path: str | os.PathLike) -> None:
    write_atomic(path, dumps_native(graph))


def _optional(d: dict, key: str, kind, where: str, what: str, default=None):
    value = d.get(key, default)
    return default if value is None else need(value, kind, f"{where}.{key}", what)


def node_from_json(d: Any, where: str) -> GraphNode:
    need(d, dict, where, "an object")
    node_id = str(need(d.get("id"), (str, int), f"{where}.id", "a string id"))
    mode = _optional(d, "mode", str, where, "a mode", "normal")
    if mode not in MODES:
        raise WorkflowFileError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
    links = {}
    for name, link in _optional(d, "links", dict, where, "an object", {}).items():
        at = f"{where}.links.{name}"
        if not (isinstance(link, list) and len(link) == 2):
            raise WorkflowFileError(f"{at}: expected [source id, output slot]")
        links[name] = (str(need(link[0], (str, int), at, "a source id")), need(link[1], int, at, "an output slot"))
    controls = _optional(d, "controls", dict, where, "an object", {})
    for name, control in controls.items():
        need(control, str, f"{where}.controls.{name}", "a string")
    size = d.get("size")
    return GraphNode(
        id=node_id,
        type=need(d.get("type"), str, f"{where}.type", "a node type name"),
        values=_optional(d, "values", dict, where, "an object", {}),
        links=links,
        title=_optional(d, "title", str, where, "a string"),
        pos=need_vec(d.get("pos", [0, 0]), 2, f"{where}.pos"),
        size=None if size is None else need_vec(size, 2, f"{where}.size"),
        mode=mode,
        collapsed=_optional(d, "collapsed", bool, where, "true or false", False),
        color=_optional(d, "color", str, where, "a string"),
        controls=controls,
        version=_optional(d, "version", int, where, "an integer", 1),
        extra=_optional(d, "extra", dict, where, "an object", {}),
    )


def group_from_json(d: Any, where: str) -> Group:
    need(d, dict, where, "an object")
    return Group(title=need(d.get("title", ""), str, f"{where}.title", "a string"),
                 bounding=need_vec(d.get("bounding"), 4, f"{where}.bounding"),
                 color=_optional(d, "color", str, where, "a string"),
                 extra=_optional(d, "extra", dict, where, "an object", {}))


def _migrate_node(node: GraphNode, registry: Registry, warnings: list[str]) -> None:
    """Run the node type's own migration when the values were saved by an older version."""
    cls = registry.get(node.type)
    if cls is None:
        warnings.append(f"node {node.id}: type '{node.type}' is not installed; kept as a placeholder")
        return
    if node.version > cls.VERSION:
        warnings.append(f"node {node.id} ({node.type}): saved by a newer version ({node.version}) "
                        f"than the installed one ({cls.VERSION}); its values may not fit")
    if node.version >= cls.VERSION:
        return
    try:
        values = cls.migrate(node.version, dict(node.values))
    except Exception as exc:  # a node's migration is third-party code: report, never crash the load
        raise WorkflowFileError(f"node {node.id} ({node.type}): migrating its values from version "
                                f"{node.version} to {cls.VERSION} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(values, dict):
        raise WorkflowFileError(f"node {node.id} ({node.type}): its migration returned {_type_name(values)}, "
                                "not an object of values")
    warnings.append(f"node {node.id} ({node.type}): values upgraded from version {node.version} to {cls.VERSION}")
    node.values, node.version = values, cls.VERSION


def from_native(doc: Any, registry: Registry) -> tuple[Graph, list[str]]:
    """A Graph from a parsed native document; returns (graph, warnings)."""
    need(doc, dict, "workflow", "an object")
    if doc.get("format") != FORMAT:
        raise WorkflowFileError(f"not a Loom workflow (format is {doc.get('format')!r})")
    doc = migrate(doc)
    graph, warnings = Graph(), []
    for i, d in enumerate(need(doc.get("nodes", []), list, "nodes", "a list")):
        node = node_from_json(d, f"nodes[{i}]")
        if node.id in graph.nodes:
            raise WorkflowFileError(f"nodes[{i}]: node id {node.id!r} is used twice")
        graph.nodes[node.id] = node
    for node in graph.nodes.values():
        for name, (src, _slot) in list(node.links.items()):
            if src not in graph.nodes:
                warnings.append(f"node {node.id}: input '{name}' was linked to missing node {src}; link dropped")
                del node.links[name]
        _migrate_node(node, registry, warnings)
    graph.groups = [group_from_json(g, f"groups[{i}]")
                    for i, g in enumerate(need(doc.get("groups", []), list, "groups", "a list"))]
    graph.extra = need(doc.get("extra", {}), dict, "extra", "an object")
    return graph, warnings
