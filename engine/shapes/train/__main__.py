import argparse
from dataclasses import replace

from . import common

MODELS = ("vae", "t2i", "controlnet", "lora", "upscaler")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.shapes.train",
                                     description="Train the shapes models Loom ships, from the scene generator.")
    parser.add_argument("model", choices=MODELS + ("all",))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (quick trials)")
    args = parser.parse_args(argv)
    device = common.pick_device(args.device)
    for model in MODELS if args.model == "all" else (args.model,):
        train(model, device, args.steps)


def train(model: str, device, steps: int | None = None):
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
    return run(replace(cfg, steps=steps or cfg.steps), device)


if __name__ == "__main__":
    main()
