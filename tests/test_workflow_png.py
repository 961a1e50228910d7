"""Workflows in PNG text chunks: Loom's own images, ComfyUI's images, chunk kinds, seeds fixed on open."""
import io
import json
import zlib
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.errors import WorkflowFileError
from engine.workflow import load_workflow, to_api
from engine.workflow.native import dumps_native
from engine.workflow.png import fix_seed_controls, png_metadata, png_text, read_png_workflow
from tests.fixtures.workflows.comfy_nodes import comfy_registry

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


@pytest.fixture
def registry():
    return comfy_registry()


def png_bytes(info: PngInfo | None = None) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def fixture_graph(name, registry):
    return load_workflow(FIXTURES / name, registry).graph


def test_loom_png_round_trip(tmp_path, registry):
    g = fixture_graph("ui_primitive.json", registry)
    g.nodes["1"].controls["value"] = "randomize"
    g.nodes["2"].controls["seed"] = "increment"
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(png_metadata(g, registry)))
    texts = Image.open(path).text  # PIL sees the same three chunks
    assert set(texts) == {"loom_workflow", "prompt", "workflow"}
    assert json.loads(texts["prompt"]) == to_api(g, registry)

    loaded = load_workflow(path, registry)
    assert loaded.format == "png"
    expected = g.copy()
    assert fix_seed_controls(expected, registry) == 2  # the primitive's control and one KSampler's
    assert loaded.graph == expected
    assert all(c == "fixed" for n in loaded.graph.nodes.values() for c in n.controls.values())
    assert any("2 seed control(s) set to 'fixed'" in w for w in loaded.warnings)
    assert read_png_workflow(path, registry) == expected


def test_comfyui_png_with_prompt_and_workflow_chunks(registry):
    info = PngInfo()  # what ComfyUI's SaveImage writes: tEXt "prompt" (API) and "workflow" (UI)
    info.add_text("prompt", (FIXTURES / "api_default.json").read_text())
    info.add_text("workflow", (FIXTURES / "ui_default.json").read_text())
    loaded = load_workflow(png_bytes(info), registry)
    assert loaded.format == "png"
    g = loaded.graph
    assert g.nodes["3"].pos == (863.0, 186.0)  # the UI workflow was preferred over the prompt
    assert g.nodes["3"].controls == {"seed": "fixed"} and g.nodes["3"].values["seed"] == 156680208700286
    assert any("1 seed control(s)" in w for w in loaded.warnings)


def test_prompt_only_png_and_a_broken_workflow_chunk(registry):
    info = PngInfo()
    info.add_text("workflow", "{not json")
    info.add_text("prompt", (FIXTURES / "api_default.json").read_text())
    loaded = load_workflow(png_bytes(info), registry)
    assert loaded.graph.nodes["3"].type == "KSampler" and loaded.graph.nodes["3"].controls == {"seed": "fixed"}
    assert any("'workflow' chunk: bad JSON" in w and "used the 'prompt' chunk" in w for w in loaded.warnings)


def test_ztxt_and_itxt_chunks_are_read(registry):
    native = dumps_native(fixture_graph("ui_notes.json", registry))
    info = PngInfo()
    info.add_text("loom_workflow", native, zip=True)  # zTXt
    info.add_itxt("workflow", "{\"nodes\": [], \"note\": \"ünïcode\"}", zip=True)
    data = png_bytes(info)
    assert png_text(data) == {"loom_workflow": native, "workflow": "{\"nodes\": [], \"note\": \"ünïcode\"}"}
    assert load_workflow(data, registry).graph == fixture_graph("ui_notes.json", registry)


def test_text_chunk_after_the_image_data_is_found(registry):
    data = png_bytes()
    body = b"prompt\0" + (FIXTURES / "api_default.json").read_bytes()
    chunk = len(body).to_bytes(4, "big") + b"tEXt" + body + zlib.crc32(b"tEXt" + body).to_bytes(4, "big")
    data = data[:-12] + chunk + data[-12:]  # before IEND, after IDAT
    assert load_workflow(data, registry).graph.nodes["9"].type == "SaveImage"


def test_png_errors(tmp_path, registry):
    path = tmp_path / "plain.png"
    path.write_bytes(png_bytes())
    with pytest.raises(WorkflowFileError, match=r"plain\.png: the PNG carries no workflow"):
        load_workflow(path, registry)
    with pytest.raises(WorkflowFileError, match=r"plain\.png: the PNG carries no workflow"):
        read_png_workflow(path, registry)
    bomb = b"loom_workflow\0\0" + zlib.compress(b" " * (65 * 2**20), 9)
    data = png_bytes()
    chunk = len(bomb).to_bytes(4, "big") + b"zTXt" + bomb + b"\0\0\0\0"
    with pytest.raises(WorkflowFileError, match="inflates past 64 MiB"):
        load_workflow(data[:33] + chunk + data[33:], registry)
    corrupt = b"workflow\0\0not zlib at all"
    chunk = len(corrupt).to_bytes(4, "big") + b"zTXt" + corrupt + b"\0\0\0\0"
    with pytest.raises(WorkflowFileError, match="compressed text chunk is corrupt"):
        load_workflow(data[:33] + chunk + data[33:], registry)
    with pytest.raises(WorkflowFileError, match="carries no workflow"):
        load_workflow(data[:40], registry)  # truncated file
