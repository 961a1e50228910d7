"""The headless runner as a user types it: exit codes, messages, overrides, events, PNG round trip."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.cli import main
from engine.graph import Graph
from engine.registry import default_registry
from engine.workflow import load_workflow, save_workflow

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "workflows" / "default.json"
IMAGE_ONLY = ROOT / "tests" / "fixtures" / "workflows" / "image_only.json"  # five image nodes, no model


def write_graph(path, graph, fmt="native"):
    save_workflow(graph, path, default_registry(), format=fmt)
    return path


def test_default_workflow_generates_with_the_shipped_model(loom_paths, tmp_path, capsys):
    """The README's first command: the default workflow samples the shipped shapes checkpoint."""
    out = tmp_path / "out"
    assert main(["run", str(DEFAULT), "--output", str(out)]) == 0
    saved = sorted(out.glob("*.png"))
    assert [p.name for p in saved] == ["loom_00001_.png"]
    image = np.asarray(Image.open(saved[0]).convert("RGB"))
    assert image.shape == (128, 128, 3) and image.std() > 10  # a picture, not a flat fill
    assert "success: 7 node(s) ran" in capsys.readouterr().err


def test_workflow_runs_and_png_carries_the_workflow(loom_paths, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(IMAGE_ONLY), "--output", str(out)]) == 0
    saved = sorted(out.glob("*.png"))
    assert [p.name for p in saved] == ["Loom_00001_.png"]
    err = capsys.readouterr().err
    assert "success: 5 node(s) ran" in err and str(saved[0]) in err
    chunks = Image.open(saved[0]).text
    assert {"loom_workflow", "prompt", "workflow"} <= set(chunks)
    # the PNG opens as a workflow and runs again, writing a new file next to the old one
    assert main(["run", str(saved[0]), "--output", str(out), "--no-cache"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["Loom_00001_.png", "Loom_00002_.png"]


def test_set_overrides_by_id_and_title(loom_paths, tmp_path):
    out = tmp_path / "out"
    code = main(["run", str(IMAGE_ONLY), "--output", str(out), "--set", "1.width=96", "--set", "Background.height=64",
                 "--set", "5.filename_prefix=small"])
    assert code == 0
    assert Image.open(next(out.glob("small_*.png"))).size == (96, 64)
    assert main(["run", str(IMAGE_ONLY), "--set", "Nobody.width=3"]) == 2


def test_invalid_workflow_exits_2_naming_every_problem(loom_paths, tmp_path, capsys):
    g = load_workflow(IMAGE_ONLY, default_registry()).graph
    g.set_value("1", "width", 0)           # below the minimum
    g.disconnect("3", "source")            # a required input
    g.add_node("FancyCustomNode", {"x": 1})  # not needed by any output: a warning, not an error
    path = write_graph(tmp_path / "bad.json", g)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "node 1 (Background), input 'width': 0 is below the minimum 1" in err
    assert "node 3 (ImageCompositeMasked), input 'source': required input is not connected" in err
    assert "2 problem(s)" in err and "not installed; kept as a placeholder" in err
    assert main(["run", str(path)]) == 2


def test_node_error_exits_1_naming_the_node(loom_paths, tmp_path, capsys):
    g = Graph()
    g.add_node("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0}, id="1")
    g.add_node("MaskToImage", id="2")
    g.add_node("ImageToMask", {"channel": "alpha"}, id="3", title="Alpha please")
    g.connect("1", 0, "3", "image")
    g.connect("3", 0, "2", "mask")
    g.add_node("PreviewImage", id="4")
    g.connect("2", 0, "4", "images")
    path = write_graph(tmp_path / "err.json", g)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "node 3 (Alpha please, ImageToMask) failed: the image has 3 channels" in err
    assert "image=IMAGE 1x8x8x3 float32" in err


def test_unreadable_files_exit_2(loom_paths, tmp_path, capsys):
    (tmp_path / "broken.json").write_text('{"nodes": [1, 2,')
    assert main(["run", str(tmp_path / "broken.json")]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.json")]) == 2


def test_comfyui_api_file_runs(loom_paths, tmp_path):
    api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 255}},
           "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
           "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "api"}}}
    (tmp_path / "api.json").write_text(json.dumps(api))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "api.json"), "--output", str(out)]) == 0
    pixel = Image.open(next(out.glob("api_*.png"))).getpixel((0, 0))
    assert pixel == (255, 255, 0)


def test_json_events(loom_paths, tmp_path, capsys):
    assert main(["run", str(IMAGE_ONLY), "--output", str(tmp_path), "--events", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("node_started") == 5 and events[-1]["status"] == "success"
    assert all(e["seconds"] >= 0 for e in events if e["event"] == "node_finished")


def test_nodes_json_dump(capsys):
    assert main(["nodes", "--json"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    assert schemas["SaveImage"]["output_node"] is True
    assert schemas["ImageBlur"]["inputs"][1] == {"name": "blur_radius", "type": "INT", "min": 1, "max": 31,
                                                 "step": 1, "default": 1}


def test_ctrl_c_cancels_cleanly(tmp_path):
    g = Graph()
    g.add_node("EmptyImage", {"width": 1024, "height": 1024, "batch_size": 1, "color": 0}, id="0")
    previous = "0"
    for i in range(1, 200):
        g.add_node("ImageBlur", {"blur_radius": 31, "sigma": 1.0 + i / 1000}, id=str(i))
        g.connect(previous, 0, str(i), "image")
        previous = str(i)
    g.add_node("SaveImage", {"filename_prefix": "never"}, id="end")
    g.connect(previous, 0, "end", "images")
    path = write_graph(tmp_path / "slow.json", g)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "run", str(path), "--output", str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = []
    for line in proc.stderr:  # wait until it is really running nodes
        lines.append(line)
        if "ImageBlur" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "cancelled" in rest
    assert not list(tmp_path.glob("never*.png"))


def test_progress_printer_shows_node_messages_and_plain_lines_off_a_tty():
    import io

    from engine import events as ev
    from engine.cli import ProgressPrinter

    g = Graph()
    g.add_node("VAEDecode", id="8", title="Decode")
    stream = io.StringIO()
    printer = ProgressPrinter(g, stream)
    printer(ev.RunStarted(nodes=["8"], cached=[]))
    printer(ev.NodeStarted("8", "VAEDecode", "Decode"))
    printer(ev.NodeProgress("8", 0.0, text="out of memory decoding in one piece; decoding in 512 px tiles instead"))
    printer(ev.NodeProgress("8", 1.0))
    printer(ev.NodeFinished("8", 0.5))
    out = stream.getvalue()
    assert "#8 Decode: out of memory decoding in one piece; decoding in 512 px tiles instead" in out
    assert "#8 Decode 100%" in out and "[1/1] #8 Decode 0.50s" in out
    assert "\r" not in out  # no terminal control codes when not writing to a terminal
