import argparse
from dataclasses import replace

from . import common

MODELS = ("vae", "t2i", "controlnet", "lora", "upscaler")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.shapes.train",
                                     description="Train the shapes models Loom ships, from the scene generator.")
    parser.add_argument("model", choices=MODELS + ("all", "measure"),
                        help="measure: re-measure the shipped files in assets/ into their metadata")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (quick trials)")
    parser.add_argument("--from-run", type=int, default=1, metavar="K",
                        help="vae, t2i: start at run K of their *_RUNS, from run K-1's weights")
    args = parser.parse_args(argv)
    device = common.pick_device(args.device)
    if args.model == "measure":
        from .checkpoint import CHECKPOINT
        from .controlnet import CONTROLNET
        from .lora import LORA
        from .upscaler import UPSCALER
        for path, kind in ((CHECKPOINT, "checkpoint"), (CONTROLNET, "controlnet"), (LORA, "lora"),
                           (UPSCALER, "upscaler")):
            if path.is_file():
                common.measure_file(path, kind)
        return
    for model in MODELS if args.model == "all" else (args.model,):
        train(model, device, args.steps, args.from_run)


def train(model: str, device, steps: int | None = None, from_run: int = 1):
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
    from .checkpoint import T2I_RUNS, VAE_RUNS
    out = None
    runs = {"vae": VAE_RUNS, "t2i": T2I_RUNS}.get(model, (dict(),))
    for overrides in runs[from_run - 1:]:  # each resumes the one before
        cfg = replace(Config(), **overrides)
        out = run(replace(cfg, steps=steps or cfg.steps), device)
    return out


if __name__ == "__main__":
    main()
