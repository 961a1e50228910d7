"""Model upscaling in tiles against one untiled pass: an ESRGAN (RRDB) 4x network with random weights.

Run: python -m tests.bench.edit [--size 512] [--filters 64] [--blocks 23] [--tiles 256,128]
                                [--device auto] [--precision fp32] [--repeats 1]

The defaults are RealESRGAN_x4plus's shape (64 filters, 23 RRDB blocks) on a 512×512 image;
``--filters``/``--blocks`` shrink the network for slow machines (the tiling behaves the same).
The network is written to a temporary ``.pth`` in the Real-ESRGAN key layout and loaded through
``engine.upscale.load_upscale_model`` (spandrel), then ``upscale_image`` runs it untiled (one tile
the size of the image) and with each tile size (overlap 32 px, ComfyUI's).  For each it prints the
median wall and CPU time, the peak memory the pass added (process VmHWM over the resident size before it; on
CUDA ``max_memory_allocated``), both as ratios to the untiled pass, and how far the output is from
the untiled one.  Nothing is asserted.  (The LoRA part of the issue's benchmark: ``tests.bench.edit_lora``.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine import memory, upscale
from tests.bench.sd import peak_memory, reset_peak
from tests.test_upscale import realesrgan_state_dict

GiB = 1024 ** 3


def realesrgan_file(path: Path, filters: int, blocks: int) -> None:
    torch.save(realesrgan_state_dict(filters=filters, blocks=blocks), path)


def resident_gib() -> float:
    now = peak_memory("cpu")
    return now["anon"] + now["file"]


def worker(args) -> None:
    """One pass in this (fresh) process: prints its seconds and added peak memory, saves its output."""
    policy = memory.configure(args.device, args.precision)
    device = policy.device.type
    model = upscale.load_upscale_model(args.model)  # loads the network, outside the timings
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(1))
    upscale.upscale_image(model, image[:, :64, :64])  # warm-up (kernels, allocator)
    seconds, cpu_seconds, added = [], [], []
    for _ in range(args.repeats):
        reset_peak()
        before = torch.cuda.memory_allocated() / GiB if device == "cuda" else resident_gib()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = upscale.upscale_image(model, image, tile=args.worker)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        peak = peak_memory(device)
        added.append((peak["peak_cuda"] if device == "cuda" else peak["peak_rss"]) - before)
    torch.save(out, args.output)
    print(json.dumps({"seconds": statistics.median(seconds), "cpu": statistics.median(cpu_seconds), "memory": max(added), "device": policy.describe(),
                      "parameters": sum(p.numel() for p in model.descriptor.model.parameters()),
                      "threads": torch.get_num_threads()}))


def run_worker(args, tile: int, model: Path, output: Path) -> dict:
    command = [sys.executable, "-m", "tests.bench.edit", "--worker", str(tile), "--model", str(model),
               "--output", str(output), "--size", str(args.size), "--device", args.device,
               "--precision", args.precision, "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=23)
    parser.add_argument("--tiles", default="256,128", help="tile sides to compare with the untiled pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "RealESRGAN_x4plus.pth"
        realesrgan_file(model, args.filters, args.blocks)
        tiles = [args.size] + [int(t) for t in args.tiles.split(",")]
        results = {tile: run_worker(args, tile, model, Path(tmp) / f"{tile}.pt") for tile in tiles}
        outputs = {tile: torch.load(Path(tmp) / f"{tile}.pt", weights_only=True) for tile in tiles}
    whole = results[args.size]
    print(f"ESRGAN 4x, {args.filters} filters, {args.blocks} blocks, {whole['parameters'] / 1e6:.2f} M parameters; "
          f"{args.size}×{args.size} image on {whole['device']}, {whole['threads']} CPU threads, "
          f"median of {args.repeats}")
    print(f"{'tiles':>16} {'seconds':>9} {'× untiled':>9} {'CPU s':>9} {'× untiled':>9} "
          f"{'peak GiB':>9} {'× untiled':>9} {'max |Δ|':>9}")
    for tile in tiles:
        result = results[tile]
        count = upscale.tile_count(args.size, args.size, tile, upscale.OVERLAP)
        label = "untiled" if tile == args.size else f"{count} × {tile} px"
        print(f"{label:>16} {result['seconds']:9.2f} {result['seconds'] / whole['seconds']:9.2f} "
              f"{result['cpu']:9.2f} {result['cpu'] / whole['cpu']:9.2f} "
              f"{result['memory']:9.3f} {result['memory'] / whole['memory']:9.2f} "
              f"{(outputs[tile] - outputs[args.size]).abs().max().item():9.1e}")
    print(f"overlap {upscale.OVERLAP} px; CPU s = process CPU time (steadier than wall time on a shared "
          "machine); peak = memory the pass added over what was resident before it (CPU: process VmHWM; "
          "CUDA: max allocated), the 4x output included")


if __name__ == "__main__":
    main()
