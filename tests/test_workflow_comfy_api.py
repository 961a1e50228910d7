"""ComfyUI API prompt format: import (links, wrapped lists, titles, layout, placeholders) and export."""
import json
from pathlib import Path

import pytest

from engine.errors import WorkflowFileError
from engine.graph import Graph
from engine.validation import validate
from engine.workflow import load_workflow, save_workflow, to_api
from engine.workflow.comfy_api import COLUMN_WIDTH, ROW_HEIGHT, from_api, is_link
from tests.fixtures.workflows.comfy_nodes import comfy_registry

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


@pytest.fixture
def registry():
    return comfy_registry()


def api_fixture() -> dict:
    return json.loads((FIXTURES / "api_default.json").read_text())


def test_load_maps_inputs_links_titles(registry):
    loaded = load_workflow(FIXTURES / "api_default.json", registry)
    g = loaded.graph
    assert loaded.format == "comfy_api"
    ks = g.nodes["3"]
    assert ks.values == {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1}
    assert ks.links == {"model": ("4", 0), "positive": ("6", 0), "negative": ("7", 0), "latent_image": ("5", 0)}
    assert g.nodes["6"].title == "Positive" and g.nodes["4"].title == "Load Checkpoint"
    # an undeclared literal is ignored for running but kept
    assert "choose file to upload" not in g.nodes["9"].values
    assert g.nodes["9"].extra["api_inputs"] == {"choose file to upload": "image"}
    # a wrapped list is a value, not a link
    assert g.nodes["10"].values["weights"] == [0.5, 1.0, 0.25]


def test_unknown_class_is_a_placeholder_with_inferred_sockets(registry):
    loaded = load_workflow(FIXTURES / "api_default.json", registry)
    node = loaded.graph.nodes["10"]
    assert node.type == "CustomListNode"
    assert node.values == {"weights": [0.5, 1.0, 0.25], "mode": "tile"} and node.links == {"image": ("8", 0)}
    assert node.extra["inputs"] == [{"name": "image", "type": "IMAGE"}]
    # slot 1 is used by a SaveImage.images input, so its type is known; slot 0 is not used
    assert node.extra["outputs"] == [{"name": "output 0", "type": "*"}, {"name": "output 1", "type": "IMAGE"}]
    assert any("CustomListNode" in w for w in loaded.warnings)


def test_layout_is_columns_by_depth(registry):
    g = load_workflow(FIXTURES / "api_default.json", registry).graph
    column = {node_id: node.pos[0] / COLUMN_WIDTH for node_id, node in g.nodes.items()}
    assert column == {"4": 0, "5": 0, "6": 1, "7": 1, "3": 2, "8": 3, "9": 4, "10": 4, "11": 5}
    assert g.nodes["5"].pos[1] == ROW_HEIGHT and g.nodes["10"].pos[1] == ROW_HEIGHT
    assert len({n.pos for n in g.nodes.values()}) == len(g.nodes)


def test_export_reproduces_the_prompt(registry):
    original = api_fixture()
    g, _ = from_api(api_fixture(), registry)
    assert to_api(g, registry) == original


def test_exported_graph_validates(registry):
    g = load_workflow(FIXTURES / "api_default.json", registry).graph
    del g.nodes["10"], g.nodes["11"]
    _, needed, problems = validate(g, registry)
    assert problems == [] and set(needed) == {"3", "4", "5", "6", "7", "8", "9"}


def test_export_resolves_muted_bypassed_virtual_like_graph_to_prompt(registry):
    g = Graph()
    g.add_node("LoadImage", {"image": "example.png"}, id="1")
    g.add_node("ImageScaleToTotalPixels", {"upscale_method": "area", "megapixels": 1.0, "resolution_steps": 1},
               id="2", mode="bypassed")
    g.add_node("Reroute", id="3")
    g.add_node("SaveImage", {"filename_prefix": "a"}, id="4", title="kept")
    g.add_node("SaveImage", {"filename_prefix": "b"}, id="5", mode="muted")
    g.add_node("PrimitiveNode", {"value": "from primitive"}, id="6")
    g.add_node("SaveImage", {"filename_prefix": "c"}, id="7")
    g.add_node("Note", {"text": "hi"}, id="8")
    g.connect("1", 0, "2", "image")
    g.connect("2", 0, "3", "input")
    g.connect("3", 0, "4", "images")
    g.connect("1", 0, "5", "images")
    g.connect("5", 0, "7", "images")  # from a muted node: the input disappears
    g.connect("6", 0, "7", "filename_prefix")
    assert to_api(g, registry) == {
        "1": {"inputs": {"image": "example.png"}, "class_type": "LoadImage", "_meta": {"title": "LoadImage"}},
        "4": {"inputs": {"images": ["1", 0], "filename_prefix": "a"}, "class_type": "SaveImage",
              "_meta": {"title": "kept"}},
        "7": {"inputs": {"filename_prefix": "from primitive"}, "class_type": "SaveImage",
              "_meta": {"title": "Save Image"}},
    }


def test_list_values_are_wrapped_on_export(registry, tmp_path):
    g = Graph()
    g.add_node("Custom", {"sizes": [512, 768], "pair": (1, 2)}, id="1")
    prompt = to_api(g, registry)
    assert prompt["1"]["inputs"] == {"sizes": {"__value__": [512, 768]}, "pair": {"__value__": [1, 2]}}
    save_workflow(g, tmp_path / "p.json", registry, format="comfy_api")
    assert load_workflow(tmp_path / "p.json", registry).graph.nodes["1"].values == {"sizes": [512, 768],
                                                                                    "pair": [1, 2]}


def test_link_rule_is_exact():
    assert is_link(["4", 0]) and is_link(["4", 2.0])
    assert not is_link([4, 0]) and not is_link(["4", "0"]) and not is_link(["4", True])
    assert not is_link(["4", 0, 1]) and not is_link(["4", -1]) and not is_link(["4", 0.5])


def test_bad_links_are_dropped_not_fatal(registry):
    prompt = {"1": {"class_type": "VAEDecode", "inputs": {"samples": ["99", 0], "vae": ["2", 5]}},
              "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": [1, 0], "filename_prefix": "x"}}}
    g, warnings = from_api(prompt, registry)
    assert g.nodes["1"].links == {}
    assert any("node 99" in w for w in warnings) and any("output 5 of node 2" in w for w in warnings)
    assert g.nodes["3"].values["images"] == [1, 0] and any("not a link" in w for w in warnings)


def test_node_without_class_type_is_an_error(registry):
    with pytest.raises(WorkflowFileError, match=r"<text>: node 7 has no class_type"):
        load_workflow('{"1": {"class_type": "SaveImage", "inputs": {}}, "7": {"inputs": {}}}', registry)
