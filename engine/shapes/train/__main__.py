import argparse
from dataclasses import replace

from . import common

MODELS = ("vae", "t2i", "controlnet", "lora", "upscaler")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.shapes.train",
                                     description="Train the shapes models Loom ships, from the scene generator.")
    parser.add_argument("model", choices=MODELS + ("all", "measure"),
                        help="measure: re-measure the checkpoint, ControlNet and LoRA in assets/ into their metadata")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (quick trials)")
    parser.add_argument("--resume", action="store_true",
                        help="t2i: only the second run, from the first run's weights in build/shapes/")
    args = parser.parse_args(argv)
    device = common.pick_device(args.device)
    if args.model == "measure":
        from .checkpoint import CHECKPOINT
        from .controlnet import CONTROLNET
        from .lora import LORA
        for path, kind in ((CHECKPOINT, "checkpoint"), (CONTROLNET, "controlnet"), (LORA, "lora")):
            if path.is_file():
                common.measure_file(path, kind)
        return
    for model in MODELS if args.model == "all" else (args.model,):
        train(model, device, args.steps, args.resume)


def train(model: str, device, steps: int | None = None, resume: bool = False):
    if model == "vae":
        from .checkpoint import VAETraining as Config, train_vae as run
    elif model == "t2i":
        from .checkpoint import T2ITraining as Config, train_t2i as run
    elif model == "controlnet":
        from .controlnet import ControlNetTraining as Config, train_controlnet as run
    elif model == "lora":
        from .lora import LoRATraining as Config, train_lora as run
    else:
        from .upscaler import UpscalerTraining as Config, train_upscaler as run
    cfg = Config()
    if model == "t2i":  # two runs: the second resumes the first with the plain epsilon loss
        from .checkpoint import T2I_SECOND_RUN
        second = replace(cfg, **T2I_SECOND_RUN)
        if not resume:
            run(replace(cfg, steps=steps or cfg.steps), device)
        return run(replace(second, steps=steps or second.steps), device)
    return run(replace(cfg, steps=steps or cfg.steps), device)


if __name__ == "__main__":
    main()
