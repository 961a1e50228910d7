"""LoRA apply/switch/remove on the full SD1.5 UNet (random weights) against reloading the checkpoint.

Run: python -m tests.bench.edit_lora [--rank 32] [--convs] [--precision fp32] [--device cpu] [--repeats 3]

Writes a random SD1.5 UNet (fp16 storage) to a temporary file and a kohya LoRA of
``--rank`` on every Linear and 1x1 conv of the 16 spatial transformers (what kohya's
sd-scripts trains by default; ``--convs`` adds LoCon on the 3x3 convs of the res blocks).
Measures, in the compute dtype:

- load: the UNet from the safetensors file through the model manager, the first time and
  again from the page cache (what a reload would cost; best of ``--repeats``);
- match: reading the LoRA's names against the UNet's (no weights touched);
- apply: the first use of a LoRA handle (save the touched originals, add strength x ΔW);
- switch: using a handle of the same LoRA at another strength;
- remove: using the base handle again (originals copied back);
- same: using the last handle again (one comparison).

Each LoRA figure is the best of ``--repeats`` rounds (a busy machine only ever adds time).

Target from the issue: apply/switch/remove well under the reload time. Times are not asserted.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tests.bench.sd import LDM_UNET, random_tensor


def write_unet(path: Path, seed: int = 0) -> None:
    from safetensors.torch import save_file

    from engine.models.unet import UNetConfig, UNetModel

    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet = UNetModel(UNetConfig.sd15())
    save_file({LDM_UNET + k: random_tensor(k, v.shape, generator).half() for k, v in unet.state_dict().items()},
              str(path))


def lora_tensors(shapes: dict, rank: int, convs: bool, seed: int = 1) -> dict:
    """kohya names for every transformer Linear / 1x1 conv (and 3x3 res-block convs with ``convs``)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        in_transformer = ".transformer_blocks." in key or key.endswith(("proj_in.weight", "proj_out.weight"))
        is_conv3 = len(shape) == 4 and shape[-1] == 3 and (".in_layers." in key or ".out_layers." in key)
        if not key.endswith(".weight") or len(shape) < 2 or not (in_transformer or (convs and is_conv3)):
            continue
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        kernel = shape[2:] if is_conv3 else ()
        up_shape = (shape[0], rank, 1, 1) if is_conv3 else (shape[0], rank)
        tensors[f"{name}.lora_up.weight"] = (torch.randn(up_shape, generator=generator) * 0.01).half()
        tensors[f"{name}.lora_down.weight"] = (torch.randn((rank, shape[1], *kernel), generator=generator)
                                               * 0.01).half()
        tensors[f"{name}.alpha"] = torch.tensor(rank / 2)
    return tensors


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--convs", action="store_true", help="also LoCon on the res blocks' 3x3 convs")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed apply/switch/remove rounds")
    args = parser.parse_args()

    from engine import memory
    from engine.loading.checkpoint import load_checkpoint
    from engine.loading.lora import match_lora, unet_shapes
    from nodes.lora import apply_lora

    memory.configure(args.device, args.precision)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sd15_unet.safetensors"
        write_unet(path)
        base = load_checkpoint(path, output_vae=False, output_clip=False).model
        manager = memory.model_manager()
        load_first = seconds(base.network)
        reloads = []
        for _ in range(args.repeats):
            manager.clear()
            reloads.append(seconds(base.network))
        load_again = min(reloads)

        tensors = lora_tensors(unet_shapes(base.config), args.rank, args.convs)
        start = time.perf_counter()
        lora = match_lora(tensors, "bench", base.config)
        match = time.perf_counter() - start
        assert not lora.unmatched, lora.unmatched[:5]
        strong, weak = (apply_lora(base, None, lora, s, 0)[0] for s in (1.0, 0.5))

        loads = manager.loads
        rounds = [(seconds(strong.network), seconds(weak.network), seconds(base.network), seconds(base.network))
                  for _ in range(args.repeats)]
        assert manager.loads == loads, "a LoRA switch reloaded the checkpoint"
        apply, switch, remove, same = (min(column) for column in zip(*rounds))

        network = strong.network()
        patched_bytes = sum(network.get_parameter(k).numel() * network.get_parameter(k).element_size()
                            for k in lora.unet.adapters)
        total_bytes = memory.module_nbytes(network)
    lora_mib = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    print(f"SD1.5 UNet on {args.device} {args.precision} ({torch.get_num_threads()} threads); "
          f"LoRA rank {args.rank}, {len(lora.unet.adapters)} layers ({lora_mib:.0f} MiB fp16), patching "
          f"{patched_bytes / total_bytes:.0%} of the weights (saved originals: {patched_bytes / 2**20:.0f} MiB, CPU)")
    print(f"  load checkpoint  first {load_first:7.3f} s   again (page cache) {load_again:7.3f} s")
    print(f"  match LoRA names       {match:7.3f} s")
    print(f"  apply LoRA             {apply:7.3f} s   reload/apply  {load_again / apply:6.1f}x")
    print(f"  switch strength        {switch:7.3f} s   reload/switch {load_again / switch:6.1f}x")
    print(f"  remove LoRA            {remove:7.3f} s   reload/remove {load_again / remove:6.1f}x")
    print(f"  same patches again     {same * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
