"""Model loaders (ComfyUI's names): checkpoints and VAEs from the model folders."""
from __future__ import annotations

from engine.loading.checkpoint import load_checkpoint, load_vae_file
from engine.paths import default_paths
from engine.schema import Input, Node, Output


def _files(kind):
    return lambda: default_paths().list_models(kind)


class CheckpointLoaderSimple(Node):
    TYPE = "CheckpointLoaderSimple"
    DISPLAY_NAME = "Load Checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads an SD1.x, SD2.x or SDXL single-file checkpoint (.safetensors, or .ckpt read safely); "
                   "the family is detected from the weights.")
    INPUTS = (Input("ckpt_name", "COMBO", options=_files("checkpoints"), tooltip="a file in models/checkpoints"),)
    OUTPUTS = (Output("MODEL", "MODEL", "the denoising UNet"), Output("CLIP", "CLIP", "the text encoder(s)"),
               Output("VAE", "VAE", "the autoencoder between pixels and latents"))

    def execute(self, ckpt_name):
        ckpt = load_checkpoint(self.ctx.paths.find_model("checkpoints", ckpt_name))
        return ckpt.model, ckpt.clip, ckpt.vae

    @classmethod
    def fingerprint(cls, ckpt_name=None, **_):
        return _file_stamp("checkpoints", ckpt_name)


class VAELoader(Node):
    TYPE = "VAELoader"
    DISPLAY_NAME = "Load VAE"
    CATEGORY = "loaders"
    INPUTS = (Input("vae_name", "COMBO", options=_files("vae")),)
    OUTPUTS = (Output("VAE", "VAE"),)

    def execute(self, vae_name):
        return (load_vae_file(self.ctx.paths.find_model("vae", vae_name)),)

    @classmethod
    def fingerprint(cls, vae_name=None, **_):
        return _file_stamp("vae", vae_name)


def _file_stamp(kind, name):
    """Size and modification time: a replaced model file re-runs its loader."""
    try:
        stat = default_paths().find_model(kind, name).stat()
        return [stat.st_size, stat.st_mtime_ns]
    except Exception:
        return None
