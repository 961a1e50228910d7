"""Loom's native workflow file: round trips, migrations, placeholders, atomic saves, clear errors."""
import json
import os
from pathlib import Path

import pytest

from engine.errors import WorkflowFileError
from engine.graph import Graph, Group
from engine.schema import Input
from engine.workflow import load_workflow, save_workflow
from engine.workflow import native
from tests.fixtures.workflows.comfy_nodes import KSampler, comfy_registry

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


@pytest.fixture
def registry():
    return comfy_registry()


def sample_graph() -> Graph:
    g = Graph()
    g.add_node("EmptyLatentImage", {"width": 640, "height": 384, "batch_size": 2}, id="1", pos=(0.0, 10.0))
    g.add_node("KSampler", {"seed": 2**63 + 5, "steps": 12, "cfg": 6.5, "sampler_name": "heun",
                            "scheduler": "karras", "denoise": 0.6}, id="2", title="sampler", size=(315.0, 262.0),
               mode="bypassed", collapsed=True, color="#223", controls={"seed": "increment"})
    g.add_node("Note", {"text": "ünïcode ✓\nline two"}, id="n1")
    g.connect("1", 0, "2", "latent_image")
    g.add_group(Group("stage", (0.0, 0.0, 800.0, 400.0), "#3f789e", {"font_size": 24}))
    g.extra["author"] = "test"
    return g


def test_round_trip_is_exact(tmp_path, registry):
    g = sample_graph()
    path = tmp_path / "wf.json"
    native.save_native(g, path)
    loaded = load_workflow(path, registry)
    assert loaded.format == "native" and loaded.warnings == []
    assert loaded.graph == g
    native.save_native(loaded.graph, path)
    assert load_workflow(path, registry).graph == g
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "loom-workflow" and doc["format_version"] == native.FORMAT_VERSION
    assert doc["nodes"][1]["links"] == {"latent_image": ["1", 0]}


def test_version_0_file_is_migrated(registry):
    loaded = load_workflow(FIXTURES / "native_v0.json", registry)
    g = loaded.graph
    assert g.nodes["1"].values == {"width": 640, "height": 384, "batch_size": 2}
    assert g.nodes["2"].links == {"latent_image": ("1", 0)}
    assert g.nodes["2"].mode == "bypassed" and g.nodes["2"].controls == {"seed": "fixed"}
    assert g.groups[0].title == "G" and g.extra == {"note": "saved by Loom 0"}
    assert native.to_native(g)["format_version"] == 1


def test_migrations_chain_covers_every_version():
    assert len(native.MIGRATIONS) == native.FORMAT_VERSION
    doc = {"format": "loom-workflow", "format_version": 0, "nodes": [{"id": "a", "type": "T", "widgets": {"x": 1}}],
           "links": [["a", 0, "a", "self"]]}
    out = native.migrate(doc)
    assert out["format_version"] == 1 and out["nodes"][0]["values"] == {"x": 1}
    assert out["nodes"][0]["links"] == {"self": ["a", 0]} and "links" not in out


def test_newer_format_is_refused_with_a_clear_message(tmp_path, registry):
    path = tmp_path / "future.json"
    path.write_text(json.dumps({"format": "loom-workflow", "format_version": 3, "nodes": []}))
    with pytest.raises(WorkflowFileError, match=r"future\.json: written by a newer Loom \(format 3; "
                                                r"this Loom reads up to 1\)"):
        load_workflow(path, registry)


class KSamplerV2(KSampler):
    """KSampler whose version 2 renamed ``cfg`` to ``guidance``."""
    VERSION = 2
    INPUTS = tuple(Input("guidance", "FLOAT", default=8.0) if i.name == "cfg" else i for i in KSampler.INPUTS)

    @classmethod
    def migrate(cls, from_version, values):
        values = dict(values)
        if from_version < 2 and "cfg" in values:
            values["guidance"] = values.pop("cfg")
        return values


def test_node_values_are_migrated_by_their_type():
    registry = comfy_registry(KSamplerV2)
    loaded = load_workflow(FIXTURES / "native_v0.json", registry)
    node = loaded.graph.nodes["2"]
    assert node.version == 2 and node.values["guidance"] == 6.5 and "cfg" not in node.values
    assert any("upgraded from version 1 to 2" in w for w in loaded.warnings)


def test_failing_node_migration_is_a_workflow_error():
    class Broken(KSampler):
        VERSION = 3

        @classmethod
        def migrate(cls, from_version, values):
            raise KeyError("denoise")

    with pytest.raises(WorkflowFileError, match="node 2 \\(KSampler\\): migrating its values from version 1 to 3"):
        load_workflow(FIXTURES / "native_v0.json", comfy_registry(Broken))


def test_unknown_type_is_a_placeholder_that_keeps_everything(tmp_path, registry):
    g = Graph()
    g.add_node("LoadImage", {"image": "cat.png"}, id="1")
    g.add_node("FancyUpscaler", {"scale": 2.0, "mode": [1, {"a": None}]}, id="2", title="fancy",
               extra={"inputs": [{"name": "image", "type": "IMAGE"}], "outputs": [{"name": "IMAGE", "type": "IMAGE"}],
                      "properties": {"cnr_id": "fancy"}, "widgets_values": [2.0, "lanczos"]})
    g.add_node("SaveImage", {"filename_prefix": "x"}, id="3")
    g.connect("1", 0, "2", "image")
    g.connect("2", 0, "3", "images")
    path = tmp_path / "p.json"
    save_workflow(g, path, registry)
    first = load_workflow(path, registry)
    assert any("FancyUpscaler" in w and "placeholder" in w for w in first.warnings)
    save_workflow(first.graph, path, registry)
    assert load_workflow(path, registry).graph == g


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, registry, monkeypatch):
    path = tmp_path / "wf.json"
    save_workflow(sample_graph(), path, registry)
    before = path.read_bytes()
    os.chmod(path, 0o640)

    bad = sample_graph()
    bad.nodes["1"].values["width"] = object()  # not JSON
    with pytest.raises(WorkflowFileError, match="cannot save"):
        save_workflow(bad, path, registry)
    assert path.read_bytes() == before

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(native.os, "replace", failing_replace)
    with pytest.raises(WorkflowFileError, match="No space left on device"):
        save_workflow(sample_graph(), path, registry, format="comfy_ui")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wf.json"]  # no temp file left behind
    monkeypatch.undo()

    save_workflow(sample_graph(), path, registry, format="comfy_api")
    assert load_workflow(path, registry).format == "comfy_api"
    assert (path.stat().st_mode & 0o777) == 0o640  # permissions of the replaced file kept


@pytest.mark.parametrize("text, message", [
    ('{"format": "loom-workflow",\n "format_version": 1,\n "nodes": [}', r"bad JSON at line 3, column 12"),
    ('{"format": "loom-workflow", "format_version": "1"}', r"format_version: expected an integer, found a string"),
    ('{"format": "loom-workflow", "format_version": 1, "nodes": {}}', r"nodes: expected a list"),
    ('{"format": "loom-workflow", "format_version": 1, "nodes": [{"id": "1", "type": "X", "pos": [1]}]}',
     r"nodes\[0\]\.pos: expected 2 numbers, found 1"),
    ('{"format": "loom-workflow", "format_version": 1, "nodes": [{"id": "1", "type": "X", "mode": "off"}]}',
     r"nodes\[0\]\.mode: 'off' is not one of normal, muted, bypassed"),
    ('{"format": "loom-workflow", "format_version": 1, "nodes": [{"id": "1", "type": 5}]}',
     r"nodes\[0\]\.type: expected a node type name, found a number"),
    ('{"format": "loom-workflow", "format_version": 1, "nodes": [{"id": "1", "type": "X", "links": {"a": [1]}}]}',
     r"nodes\[0\]\.links\.a: expected \[source id, output slot\]"),
    ('{"format": "loom-workflow", "format_version": 1, "nodes": [{"id": "1", "type": "X"}, {"id": "1", "type": "Y"}]}',
     r"nodes\[1\]: node id '1' is used twice"),
    ('{"format": "other-app", "format_version": 1}', r"not a Loom workflow \(format is 'other-app'\)"),
    ('[1, 2, 3]', r"not a workflow: the JSON is list"),
    ('{"hello": "world"}', r"not a workflow: expected Loom's format"),
    ('   ', r"the file is empty"),
])
def test_errors_name_the_file_and_the_problem(tmp_path, registry, text, message):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(WorkflowFileError, match=r"broken\.json: " + message):
        load_workflow(path, registry)


def test_sources_other_than_a_json_file(tmp_path, registry):
    text = native.dumps_native(sample_graph())
    assert load_workflow(text, registry).graph == sample_graph()
    assert load_workflow(text.encode("utf-8"), registry).graph == sample_graph()
    with pytest.raises(WorkflowFileError, match="no such file"):
        load_workflow(tmp_path / "missing.json", registry)
    with pytest.raises(WorkflowFileError, match="not a file"):
        load_workflow(tmp_path, registry)
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(WorkflowFileError, match="latin.json: not UTF-8 text"):
        load_workflow(tmp_path / "latin.json", registry)


def test_links_to_missing_nodes_are_dropped_with_a_warning(registry):
    doc = {"format": "loom-workflow", "format_version": 1,
           "nodes": [{"id": "1", "type": "SaveImage", "links": {"images": ["7", 0]}}]}
    loaded = load_workflow(json.dumps(doc), registry)
    assert loaded.graph.nodes["1"].links == {}
    assert any("missing node 7" in w for w in loaded.warnings)


def test_save_workflow_rejects_unknown_formats(tmp_path, registry):
    with pytest.raises(WorkflowFileError, match="unknown workflow format 'yaml'"):
        save_workflow(sample_graph(), tmp_path / "x", registry, format="yaml")
    assert not (tmp_path / "x").exists()

