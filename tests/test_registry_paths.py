"""Node discovery (built-in, custom, ComfyUI V1 classes) and model folders."""
import textwrap

import pytest

from engine.errors import LoomError
from engine.executor import Executor
from engine.graph import Graph
from engine.paths import Paths
from engine.registry import Registry


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_builtin_nodes_have_comfyui_names_and_schemas():
    r = Registry()
    r.load_builtin()
    assert not r.load_errors
    for name in ("LoadImage", "SaveImage", "PreviewImage", "ImageScale", "ImageScaleBy", "ImageInvert",
                 "ImageBlur", "ImageCompositeMasked", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
                 "PrimitiveBoolean", "LoadImageMask", "SolidMask", "InvertMask", "MaskToImage", "ImageToMask"):
        assert name in r, name
    scale = r.schemas_json()["ImageScale"]
    assert [i["name"] for i in scale["inputs"]] == ["image", "upscale_method", "width", "height", "crop"]
    assert scale["inputs"][1]["options"] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def test_broken_custom_node_is_reported_and_skipped(tmp_path):
    custom = tmp_path / "custom_nodes"
    write(custom / "good.py", """
        from engine.schema import Node, Input, Output
        class Double(Node):
            TYPE = "Double"
            INPUTS = (Input("x", "INT", default=2),)
            OUTPUTS = (Output("INT", "INT"),)
            def execute(self, x):
                return (2 * x,)
    """)
    write(custom / "broken.py", "import does_not_exist_anywhere\n")
    write(custom / "exits.py", "raise SystemExit(3)\n")
    write(custom / "pack" / "__init__.py", "from .impl import NODE_CLASS_MAPPINGS\n")
    write(custom / "pack" / "impl.py", """
        class Greeter:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"name": ("STRING", {"default": "world"}),
                                     "mode": (["hello", "bye"],)},
                        "optional": {"seed": ("INT", {"default": 0, "min": 0, "max": 10})}}
            RETURN_TYPES = ("STRING",)
            FUNCTION = "go"
            CATEGORY = "text"
            def go(self, name, mode, seed=0):
                return (f"{mode} {name}",)
        NODE_CLASS_MAPPINGS = {"Greeter": Greeter}
    """)
    r = Registry()
    r.load_builtin()
    r.load_custom_dir(custom)
    assert "Double" in r and "Greeter" in r and "LoadImage" in r
    failed = {e.module: e.message for e in r.load_errors}
    assert set(failed) == {"custom_nodes/broken.py", "custom_nodes/exits.py"}
    assert "does_not_exist_anywhere" in failed["custom_nodes/broken.py"]
    greeter = r.get("Greeter")
    assert [i.name for i in greeter.INPUTS] == ["name", "mode", "seed"]
    assert greeter.input("mode").option_list() == ["hello", "bye"]
    assert greeter.input("seed").control_after_generate and greeter.input("seed").optional


def test_custom_node_cannot_replace_a_builtin(tmp_path):
    write(tmp_path / "evil.py", """
        from engine.schema import Node
        class LoadImage(Node):
            TYPE = "LoadImage"
    """)
    r = Registry()
    r.load_builtin()
    builtin = r.get("LoadImage")
    r.load_custom_dir(tmp_path)
    assert r.get("LoadImage") is builtin
    assert any("built in" in e.message for e in r.load_errors)


def test_v1_node_runs(tmp_path, loom_paths):
    write(tmp_path / "v1.py", """
        class Shout:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"text": ("STRING", {"default": "hi"})}}
            RETURN_TYPES = ("STRING",)
            FUNCTION = "run"
            OUTPUT_NODE = True
            def run(self, text):
                return {"ui": {"text": [text.upper()]}, "result": (text.upper(),)}
        NODE_CLASS_MAPPINGS = {"Shout": Shout}
    """)
    r = Registry()
    r.load_custom_dir(tmp_path)
    g = Graph()
    g.add_node("Shout", {"text": "loom"})
    result = Executor(r, paths=loom_paths).run(g)
    assert result.ok and result.ui["1"] == {"text": ["LOOM"]}


def test_model_folders_and_extra_model_paths_yaml(tmp_path):
    comfy = tmp_path / "ComfyUI"
    a1111 = tmp_path / "webui"
    (comfy / "models" / "checkpoints" / "sd15").mkdir(parents=True)
    (comfy / "models" / "checkpoints" / "sd15" / "dream.safetensors").write_bytes(b"x")
    (comfy / "models" / "checkpoints" / "notes.txt").write_text("not a model")
    (a1111 / "models" / "Lora").mkdir(parents=True)
    (a1111 / "models" / "LyCORIS").mkdir(parents=True)
    (a1111 / "models" / "Lora" / "style.safetensors").write_bytes(b"x")
    (a1111 / "models" / "LyCORIS" / "loha.safetensors").write_bytes(b"x")
    (a1111 / "models" / "Stable-diffusion").mkdir(parents=True)
    (a1111 / "models" / "Stable-diffusion" / "old.ckpt").write_bytes(b"x")
    yaml_file = tmp_path / "loom" / "extra_model_paths.yaml"
    write(yaml_file, f"""
        comfyui:
            base_path: {comfy}
            checkpoints: models/checkpoints/
            unet: models/unet/
        a111:
            base_path: ../webui
            checkpoints: models/Stable-diffusion
            loras: |
                 models/Lora
                 models/LyCORIS
    """)
    paths = Paths(base=tmp_path / "loom", shipped_models=False)  # only the user's folders here
    (paths.base / "models" / "checkpoints").mkdir(parents=True)
    (paths.base / "models" / "checkpoints" / "local.safetensors").write_bytes(b"x")
    paths.load_extra_model_paths(yaml_file)
    assert paths.list_models("checkpoints") == ["local.safetensors", "old.ckpt", "sd15/dream.safetensors"]
    assert paths.list_models("loras") == ["loha.safetensors", "style.safetensors"]
    assert paths.find_model("checkpoints", "sd15/dream.safetensors").resolve() == \
        (comfy / "models" / "checkpoints" / "sd15" / "dream.safetensors").resolve()
    assert comfy / "models" / "unet" in paths.model_dirs["diffusion_models"]
    with pytest.raises(LoomError, match="not found.*Available: local.safetensors"):
        paths.find_model("checkpoints", "missing.safetensors")
    with pytest.raises(LoomError):
        paths.find_model("checkpoints", "../../../etc/passwd")
    # a symlink to a file elsewhere (a shared model store) is listed and found
    (paths.base / "models" / "checkpoints" / "linked.safetensors").symlink_to(
        comfy / "models" / "checkpoints" / "sd15" / "dream.safetensors")
    assert "linked.safetensors" in paths.list_models("checkpoints")
    assert paths.find_model("checkpoints", "linked.safetensors").resolve() == \
        (comfy / "models" / "checkpoints" / "sd15" / "dream.safetensors").resolve()


def test_bad_yaml_is_a_clear_error(tmp_path):
    bad = tmp_path / "extra_model_paths.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(LoomError, match="cannot read"):
        Paths(base=tmp_path).load_extra_model_paths(bad)
