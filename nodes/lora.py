"""LoRA loaders (ComfyUI's names and inputs): weight patches on a MODEL and CLIP, never a copy of them."""
from __future__ import annotations

from engine.loading.lora import load_lora
from engine.schema import Input, Node, Output

from .loaders import _file_stamp, _files

STRENGTH = dict(default=1.0, min=-100.0, max=100.0, step=0.01)


def apply_lora(model, clip, lora, strength_model: float, strength_clip: float):
    """Clones of ``model`` and ``clip`` carrying the LoRA's patches (a zero strength adds none)."""
    if model is not None and lora.unet is not None and strength_model != 0:
        model = model.with_patches(lora.unet, strength_model)
    if clip is not None and strength_clip != 0:
        for name, patch_set in lora.clip.items():
            clip = clip.with_patches(name, patch_set, strength_clip)
    return model, clip


class LoraLoader(Node):
    TYPE = "LoraLoader"
    DISPLAY_NAME = "Load LoRA"
    CATEGORY = "loaders"
    DESCRIPTION = ("Applies a LoRA (kohya, diffusers/PEFT, LyCORIS LoCon/LoHa/LoKr) to the model and the text "
                   "encoder. The base weights are shared and patched in place when used: changing a strength "
                   "does not reload the checkpoint.")
    INPUTS = (Input("model", "MODEL", tooltip="the diffusion model the LoRA is applied to"),
              Input("clip", "CLIP", tooltip="the text encoder the LoRA is applied to"),
              Input("lora_name", "COMBO", options=_files("loras"), tooltip="a file in models/loras"),
              Input("strength_model", "FLOAT", tooltip="how strongly to modify the diffusion model; "
                    "negative values invert the LoRA", **STRENGTH),
              Input("strength_clip", "FLOAT", tooltip="how strongly to modify the text encoder", **STRENGTH))
    OUTPUTS = (Output("MODEL", "MODEL", "the patched diffusion model"),
               Output("CLIP", "CLIP", "the patched text encoder"))

    def execute(self, model, clip, lora_name, strength_model, strength_clip):
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        lora = load_lora(self.ctx.paths.find_model("loras", lora_name), model, clip)
        _report_unmatched(self.ctx, lora)
        return apply_lora(model, clip, lora, strength_model, strength_clip)

    @classmethod
    def fingerprint(cls, lora_name=None, **_):
        return _file_stamp("loras", lora_name)


class LoraLoaderModelOnly(Node):
    TYPE = "LoraLoaderModelOnly"
    DISPLAY_NAME = "LoraLoaderModelOnly"
    CATEGORY = "loaders"
    DESCRIPTION = "Applies a LoRA to the diffusion model only; its text-encoder weights are skipped."
    INPUTS = (Input("model", "MODEL"),
              Input("lora_name", "COMBO", options=_files("loras"), tooltip="a file in models/loras"),
              Input("strength_model", "FLOAT", **STRENGTH))
    OUTPUTS = (Output("MODEL", "MODEL"),)

    def execute(self, model, lora_name, strength_model):
        if strength_model == 0:
            return (model,)
        lora = load_lora(self.ctx.paths.find_model("loras", lora_name), model, None)
        _report_unmatched(self.ctx, lora)
        return (apply_lora(model, None, lora, strength_model, 0)[0],)

    @classmethod
    def fingerprint(cls, lora_name=None, **_):
        return _file_stamp("loras", lora_name)


def _report_unmatched(ctx, lora, shown: int = 20) -> None:
    """ComfyUI logs "lora key not loaded"; Loom shows the names with the node's progress."""
    if lora.unmatched:
        names = ", ".join(lora.unmatched[:shown])
        more = f" and {len(lora.unmatched) - shown} more" if len(lora.unmatched) > shown else ""
        ctx.progress(1.0, text=f"LoRA keys not matched: {names}{more}")
