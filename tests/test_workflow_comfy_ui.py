"""ComfyUI UI workflow import/export: one hand-written fixture per quirk, and round trips."""
import copy
import json
from pathlib import Path

import pytest

from engine.graph import Graph
from engine.validation import validate
from engine.workflow import load_workflow, save_workflow, to_api, to_ui
from engine.workflow.comfy_ui import from_ui, widget_slots
from tests.fixtures.workflows.comfy_nodes import KSampler, LoadImageMask, comfy_registry

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
UI_FIXTURES = sorted(p.name for p in FIXTURES.glob("ui_*.json"))


@pytest.fixture
def registry():
    return comfy_registry()


def load(name, registry):
    loaded = load_workflow(FIXTURES / name, registry)
    assert loaded.format == "comfy_ui"
    return loaded


@pytest.mark.parametrize("name", UI_FIXTURES)
def test_ui_graph_ui_graph_is_identical(name, registry, tmp_path):
    first = load(name, registry).graph
    save_workflow(first, tmp_path / "out.json", registry, format="comfy_ui")
    second = load_workflow(tmp_path / "out.json", registry).graph
    assert second == first
    assert from_ui(to_ui(second, registry), registry)[0] == first


def test_default_graph(registry):
    g = load("ui_default.json", registry).graph
    ks = g.nodes["3"]
    assert ks.values == {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1}
    assert ks.controls == {"seed": "randomize"}
    assert ks.links == {"model": ("4", 0), "positive": ("6", 0), "negative": ("7", 0), "latent_image": ("5", 0)}
    assert ks.pos == (863.0, 186.0) and ks.size == (315.0, 262.0)
    assert g.groups[0].title == "Prompt" and g.groups[0].bounding == (400.0, 100.0, 450.0, 500.0)
    assert g.groups[0].extra == {"font_size": 24}
    _, _, problems = validate(g, registry)
    assert problems == []


def test_widget_layout_matches_comfyui():
    assert [(kind, inp.name) for kind, inp in widget_slots(KSampler)] == [
        ("value", "seed"), ("control", "seed"), ("value", "steps"), ("value", "cfg"),
        ("value", "sampler_name"), ("value", "scheduler"), ("value", "denoise")]
    assert [(kind, inp.name) for kind, inp in widget_slots(LoadImageMask)] == [
        ("value", "image"), ("upload", "image"), ("value", "channel")]


def test_export_writes_comfyui_widgets_values(registry):
    ui = to_ui(load("ui_default.json", registry).graph, registry)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[3]["widgets_values"] == [156680208700286, "randomize", 20, 8, "euler", "normal", 1]
    assert [(e["name"], e["type"]) for e in nodes[3]["inputs"]] == [
        ("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")]
    assert "widgets_values" not in nodes[8]  # VAEDecode has no widgets
    rows = {l[0]: l[1:] for l in ui["links"]}
    assert len(rows) == 9 and sorted(rows) == list(range(1, 10))
    for slot, source in enumerate([(4, 0, "MODEL"), (6, 0, "CONDITIONING"), (7, 0, "CONDITIONING"), (5, 0, "LATENT")]):
        link_id = nodes[3]["inputs"][slot]["link"]
        assert rows[link_id] == [source[0], source[1], 3, slot, source[2]]
        assert link_id in nodes[source[0]]["outputs"][source[1]]["links"]
    assert ui["version"] == 0.4 and ui["last_node_id"] == 9 and ui["last_link_id"] == 9
    assert [n["order"] for n in ui["nodes"]] == [0, 1, 2, 3, 4, 5, 6]


def test_seed_controls_including_legacy_booleans(registry):
    g = load("ui_seed_controls.json", registry).graph
    assert g.nodes["1"].controls == {"seed": "increment"}
    assert g.nodes["2"].controls == {"seed": "randomize"}  # legacy true: "Random seed after every gen" on
    assert g.nodes["3"].controls == {"seed": "fixed"}  # legacy false: off
    assert g.nodes["2"].values == {"seed": 222, "steps": 25, "cfg": 7.5, "sampler_name": "heun",
                                   "scheduler": "karras", "denoise": 0.8}
    assert to_ui(g, registry)["nodes"][1]["widgets_values"][:2] == [222, "randomize"]


def test_upload_slot(registry):
    g = load("ui_load_image.json", registry).graph
    assert g.nodes["1"].values == {"image": "example.png"}
    assert g.nodes["2"].values == {"image": "cat.png", "channel": "red"}
    assert g.nodes["3"].values == {"image": "cat.png"}  # older file without the upload value
    assert g.nodes["4"].values == {"image": "example.png", "channel": "green"}
    nodes = to_ui(g, registry)["nodes"]
    assert nodes[0]["widgets_values"] == ["example.png", "image"]
    assert nodes[3]["widgets_values"] == ["example.png", "image", "green"]


def test_short_widgets_values_get_defaults(registry):
    loaded = load("ui_short_widgets.json", registry)
    g = loaded.graph
    assert g.nodes["1"].values == {"upscale_method": "nearest-exact", "megapixels": 0.25, "resolution_steps": 1}
    assert g.nodes["2"].values == {"filename_prefix": "ComfyUI"}
    assert g.nodes["3"].values == {"seed": 5, "steps": 20, "cfg": 8.0, "sampler_name": "euler",
                                   "scheduler": "normal", "denoise": 1.0}
    assert g.nodes["4"].values == {"width": 768, "height": 512, "batch_size": 1}
    assert sum("filled with defaults" in w for w in loaded.warnings) == 4


def test_dict_widgets_values_map_by_name(registry):
    doc = {"nodes": [{"id": 1, "type": "EmptyLatentImage", "pos": [0, 0], "size": [1, 1],
                      "widgets_values": {"height": 256, "width": 320, "junk": 1}}], "links": []}
    g, warnings = from_ui(doc, registry)
    assert g.nodes["1"].values == {"width": 320, "height": 256, "batch_size": 1}
    assert any("junk" in w for w in warnings)


def test_converted_widget_takes_the_link_and_keeps_its_value(registry):
    g = load("ui_converted_widget.json", registry).graph
    ks = g.nodes["2"]
    assert ks.links == {"seed": ("1", 0)}
    assert ks.values["seed"] == 7 and ks.values["steps"] == 20 and ks.controls == {"seed": "randomize"}
    assert g.nodes["1"].values == {"value": 42} and g.nodes["1"].controls == {"value": "increment"}
    assert g.nodes["3"].values == {"text": "hello"} and g.nodes["3"].links == {}
    ui_ks = to_ui(g, registry)["nodes"][1]
    assert ui_ks["inputs"][-1] == {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 1}
    assert ui_ks["widgets_values"][0] == 7
    assert to_api(g, registry)["2"]["inputs"]["seed"] == ["1", 0]


def test_reroute_nodes_and_native_link_reroutes(registry):
    g = load("ui_reroutes.json", registry).graph
    assert g.nodes["20"].type == "Reroute" and g.nodes["20"].links == {"input": ("4", 0)}
    assert g.nodes["21"].links == {"input": ("20", 0)} and g.nodes["3"].links["model"] == ("21", 0)
    assert to_api(g, registry)["3"]["inputs"]["model"] == ["4", 0]
    assert "20" not in to_api(g, registry)
    assert g.nodes["8"].extra["link_reroutes"] == {"samples": 2}
    ui = to_ui(g, registry)
    samples_link = next(l[0] for l in ui["links"] if l[3] == 8 and l[4] == 0)
    assert ui["extra"]["linkExtensions"] == [{"id": samples_link, "parentId": 2}]
    assert [r["linkIds"] for r in ui["extra"]["reroutes"]] == [[samples_link], [samples_link]]
    assert ui["extra"]["ds"] == {"offset": [10, 20], "scale": 0.8}
    reroute = next(n for n in ui["nodes"] if n["id"] == 21)
    assert reroute["outputs"][0]["type"] == "MODEL"  # a concrete type, followed back to the loader


def test_muted_and_bypassed(registry):
    g = load("ui_muted_bypassed.json", registry).graph
    assert g.nodes["2"].mode == "bypassed" and g.nodes["4"].mode == "muted" and g.nodes["4"].collapsed
    prompt = to_api(g, registry)
    assert set(prompt) == {"1", "3"} and prompt["3"]["inputs"]["images"] == ["1", 0]
    modes = {n["id"]: (n["mode"], n["flags"]) for n in to_ui(g, registry)["nodes"]}
    assert modes[2] == (4, {}) and modes[4] == (2, {"collapsed": True})


def test_primitive_node_feeds_two_widgets(registry):
    g = load("ui_primitive.json", registry).graph
    prim = g.nodes["1"]
    assert prim.type == "PrimitiveNode" and prim.title == "shared seed"
    assert prim.values == {"value": 123456789} and prim.controls == {"value": "fixed"}
    assert g.nodes["2"].links == {"seed": ("1", 0)} and g.nodes["3"].links == {"seed": ("1", 0)}
    prompt = to_api(g, registry)
    assert set(prompt) == {"2", "3"}
    assert prompt["2"]["inputs"]["seed"] == prompt["3"]["inputs"]["seed"] == 123456789  # not node 3's stale 5
    ui_prim = to_ui(g, registry)["nodes"][0]
    assert ui_prim["widgets_values"] == [123456789, "fixed"] and ui_prim["outputs"][0]["type"] == "INT"


def test_notes(registry):
    g = load("ui_notes.json", registry).graph
    assert g.nodes["1"].type == "Note" and g.nodes["1"].values == {"text": "Put the checkpoint in models/checkpoints first."}
    assert g.nodes["1"].color == "#432" and g.nodes["1"].extra["bgcolor"] == "#653"
    assert g.nodes["2"].type == "MarkdownNote" and g.nodes["2"].values["text"].startswith("# Steps")
    assert to_api(g, registry) == {}


def test_sizes_stored_as_dicts(registry):
    g = load("ui_size_dict.json", registry).graph
    assert g.nodes["1"].size == (315.0, 106.0) and g.nodes["2"].size == (210.5, 46.0)
    assert g.nodes["2"].pos == (400.0, 20.0) and g.nodes["1"].values == {"width": 640, "height": 448, "batch_size": 2}
    assert to_ui(g, registry)["nodes"][1]["size"] == [210.5, 46.0]


def test_subgraph_is_flattened(registry):
    loaded = load("ui_subgraph.json", registry)
    g = loaded.graph
    assert set(g.nodes) == {"4", "5", "9", "11", "12", "10:1", "10:2", "10:3", "10:4"}
    ks = g.nodes["10:3"]
    assert ks.values["seed"] == 777  # the instance's exposed widget, pushed in
    assert "seed" not in ks.links and ks.values["steps"] == 12
    assert ks.links == {"model": ("4", 0), "latent_image": ("5", 0), "positive": ("10:1", 0), "negative": ("10:2", 0)}
    assert g.nodes["10:1"].links == {"clip": ("4", 1)} and g.nodes["10:4"].links == {"samples": ("10:3", 0),
                                                                                     "vae": ("4", 2)}
    assert g.nodes["9"].links == {"images": ("10:4", 0)}  # out through the boundary
    assert g.nodes["11"].links == {"samples": ("5", 0), "vae": ("4", 2)}  # input passed straight to an output
    assert g.nodes["10:1"].pos == (500.0, 100.0) and g.nodes["10:3"].pos == (950.0, 100.0)
    assert any("flattened" in w for w in loaded.warnings)
    _, needed, problems = validate(g, registry)
    assert problems == [] and set(needed) == set(g.nodes)
    ui = to_ui(g, registry)
    ids = {n["properties"].get("loom_id", str(n["id"])) for n in ui["nodes"]}
    assert ids == set(g.nodes) and all(isinstance(n["id"], int) for n in ui["nodes"])
    assert ui["id"] == "0a1b2c3d-0000-4000-8000-000000000001" and "definitions" not in ui


def test_subgraph_muted_instance_mutes_inner_nodes(registry):
    doc = json.loads((FIXTURES / "ui_subgraph.json").read_text())
    doc["nodes"][2]["mode"] = 2
    g, _ = from_ui(doc, registry)
    assert {g.nodes[f"10:{i}"].mode for i in range(1, 5)} == {"muted"}
    prompt = to_api(g, registry)
    assert set(prompt) == {"4", "5", "9", "11", "12"} and "images" not in prompt["9"]["inputs"]


def test_unknown_node_is_a_placeholder_that_keeps_everything(registry, tmp_path):
    loaded = load("ui_unknown_node.json", registry)
    node = loaded.graph.nodes["2"]
    assert node.type == "FancyUpscaler" and node.title == "Upscale (fancy)" and node.color == "#223"
    assert node.links == {"image": ("1", 0)} and loaded.graph.nodes["3"].links == {"images": ("2", 0)}
    assert node.extra["widgets_values"] == [2.0, "lanczos", {"tile": [512, 64]}]
    assert node.extra["inputs"] == [{"name": "image", "type": "IMAGE"},
                                    {"name": "scale", "type": "FLOAT", "widget": {"name": "scale"}}]
    assert node.extra["outputs"][1] == {"name": "info", "type": "STRING", "slot_index": 1}
    assert node.extra["properties"]["cnr_id"] == "fancy-nodes" and node.extra["flags"] == {"pinned": True}
    assert node.extra["ui"] == {"shape": 1} and node.extra["order"] == 1 and node.extra["bgcolor"] == "#335"
    # through Loom's own file and back to ComfyUI: the node comes out as it went in
    save_workflow(loaded.graph, tmp_path / "n.json", registry)
    again = load_workflow(tmp_path / "n.json", registry).graph
    assert again == loaded.graph
    raw = json.loads((FIXTURES / "ui_unknown_node.json").read_text())["nodes"][1]
    out = next(n for n in to_ui(again, registry)["nodes"] if n["id"] == 2)
    assert {k: v for k, v in out.items() if k not in ("inputs", "outputs")} == \
           {k: (list(map(float, v)) if k in ("pos", "size") else v) for k, v in raw.items()
            if k not in ("inputs", "outputs")}
    assert [{k: v for k, v in e.items() if k != "link"} for e in out["inputs"]] == \
           [{k: v for k, v in e.items() if k != "link"} for e in raw["inputs"]]
    # it still tells validation what it produces
    prompt = to_api(again, registry)
    assert prompt["3"]["inputs"]["images"] == ["2", 0] and prompt["2"]["class_type"] == "FancyUpscaler"


def test_bad_links_are_dropped_with_warnings(registry):
    loaded = load("ui_bad_links.json", registry)
    g, text = loaded.graph, "\n".join(loaded.warnings)
    assert g.nodes["4"].links == {"vae": ("1", 2)}
    assert g.nodes["2"].links == {} and g.nodes["3"].links == {}
    assert "source node 99 does not exist" in text and "output 7 of node 1 does not exist" in text
    assert "no input slot 5" in text and "link 5: stale" in text and "links[5]: not a link" in text


def test_loom_graph_to_ui_and_back(registry):
    g = Graph()
    g.add_node("CheckpointLoaderSimple", {"ckpt_name": "tiny.safetensors"}, id="ckpt", size=(300.0, 100.0))
    g.add_node("CLIPTextEncode", {"text": "x"}, id="7", size=(300.0, 100.0))
    g.connect("ckpt", 1, "7", "clip")
    back, _ = from_ui(to_ui(g, registry), registry)
    assert back == g


def test_malformed_nodes_are_skipped_not_fatal(registry):
    doc = json.loads((FIXTURES / "ui_default.json").read_text())
    broken = copy.deepcopy(doc)
    broken["nodes"] += [{"id": 3, "type": "KSampler"}, "junk", {"type": "SaveImage"}, {"id": 50}]
    broken["nodes"][0]["pos"] = "here"
    broken["nodes"][1]["mode"] = [4]
    broken["groups"].append({"title": "bad", "bounding": [1, 2]})
    g, warnings = from_ui(broken, registry)
    assert set(g.nodes) == {"3", "4", "5", "6", "7", "8", "9"} and g.nodes["4"].pos == (0.0, 0.0)
    assert len(g.groups) == 1 and any("used twice" in w for w in warnings)
