"""Runtime of the full SD1.5 architecture (random weights): Loom against diffusers in the same run.

Run: python -m tests.bench.sd [--size 512] [--steps 2] [--decodes 1] [--threads N] [--checkpoint PATH]
     python -m tests.bench.sd --profile fp32 --size 256 --threads 1     (where a UNet step spends its time)

Writes one random full-size SD1.5 checkpoint (UNet + VAE, fp16 storage) to a
temporary folder, then for each device/dtype (CPU fp32 and bf16; CUDA fp16 and
bf16 when a GPU is present) runs one subprocess for Loom and one for diffusers,
so memory peaks never mix.  Each subprocess measures:

- load: the UNet from the safetensors file into the compute dtype (Loom through
  ``load_checkpoint(...).model.network()``; diffusers by converting the same
  tensors with its single-file converter and assigning them to a meta-built
  ``UNet2DConditionModel``), next to a floor of just reading and casting them;
- UNet: seconds per step at ``--size`` with CFG (batch 2, 77 tokens), median of
  ``--steps`` timed steps after one warm-up, under ``torch.inference_mode()``;
- VAE: decoding one latent to a ``--size`` image, median of ``--decodes``;
- peak memory of each phase: VmHWM of the process (reset between phases through
  ``/proc/self/clear_refs``), and on CUDA ``torch.cuda.max_memory_allocated``.

Wall seconds are what a user waits; CPU seconds (user + system of the process)
are also printed because on a shared machine they move far less with the load
of other processes.  Ratios are against diffusers measured in the same run,
and the outputs of both are compared (a check that both ran the same network).
Targets from the issue: on CPU at least as fast as diffusers in the same dtype,
and bf16 at least 1.5x faster than fp32.  Times are not asserted.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
TOKENS = 77
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLS = ("loom", "diffusers")
GiB = 2**30


# --- the checkpoint ------------------------------------------------------------------

def random_tensor(key: str, shape, generator: torch.Generator) -> torch.Tensor:
    """Fan-in scaled weights, norm scales near 1 and small biases: activations stay O(1) through the
    whole network, so no dtype meets infinities or denormals that real weights would not give."""
    if len(shape) >= 2:
        fan_in = torch.Size(shape[1:]).numel()
        return torch.randn(shape, generator=generator) * fan_in**-0.5
    if key.endswith("weight"):  # every 1-D weight of the UNet and VAE is a GroupNorm/LayerNorm scale
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    return 0.02 * torch.randn(shape, generator=generator)


def write_checkpoint(path: Path, seed: int = 0) -> None:
    """A random SD1.5 single-file checkpoint (UNet and VAE, no text encoder) in fp16."""
    from safetensors.torch import save_file

    from engine.models.unet import UNetConfig, UNetModel
    from engine.models.vae import AutoencoderKL, VAEConfig

    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        parts = {LDM_UNET: UNetModel(UNetConfig.sd15()), LDM_VAE: AutoencoderKL(VAEConfig.sd())}
    tensors = {prefix + key: random_tensor(key, value.shape, generator).half()
               for prefix, module in parts.items() for key, value in module.state_dict().items()}
    save_file(tensors, str(path))


# --- the two implementations ---------------------------------------------------------

def loom_models(path: Path, device: str, precision: str):
    """Loaders of Loom's UNet and VAE, through the checkpoint loader and the model manager."""
    from engine import memory
    from engine.loading.checkpoint import load_checkpoint

    memory.configure(device, precision)
    checkpoint = load_checkpoint(path, output_clip=False)
    return checkpoint.model.network, checkpoint.vae.ref.get


def diffusers_models(path: Path, device: str, precision: str):
    """Loaders of diffusers' UNet and VAE on the same tensors, converted by diffusers' single-file code."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors import safe_open

    from engine.models.unet import UNetConfig
    from engine.models.vae import VAEConfig
    from tests.test_unet import diffusers_config as unet_config
    from tests.test_unet import to_diffusers_layout
    from tests.test_vae import diffusers_config as vae_config

    def build(cls, config, convert, prefix):
        def load():
            with safe_open(str(path), framework="pt", device="cpu") as f:
                ldm = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            with torch.device("meta"):
                module = cls(**config)
            module.load_state_dict(convert(ldm, config), strict=True, assign=True)
            return module.to(device, DTYPES[precision]).eval().requires_grad_(False)
        return load

    def convert_unet(ldm, config):
        return to_diffusers_layout({k[len(LDM_UNET):]: v for k, v in ldm.items()}, config)

    return (build(UNet2DConditionModel, unet_config(UNetConfig.sd15()), convert_unet, LDM_UNET),
            build(AutoencoderKL, vae_config(VAEConfig.sd()), convert_ldm_vae_checkpoint, LDM_VAE))


def unet_step(impl: str, unet, x, t, context):
    """A function running one UNet evaluation of either implementation, returning the prediction."""
    if impl == "loom":
        return lambda: unet(x, t, context)
    return lambda: unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


def vae_decode(impl: str, vae, latent):
    if impl == "loom":
        return lambda: vae.decode(latent)
    return lambda: vae.decode(latent, return_dict=False)[0]


def inputs(size: int, dtype: torch.dtype, device: str, seed: int = 1):
    """A CFG batch: latents [2,4,size/8,size/8], timestep 500, text context [2,77,768]; one latent to decode."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)
    context = torch.randn(2, TOKENS, 768, generator=g)
    t = torch.full((2,), 500.0)
    return x.to(device, dtype), t.to(device), context.to(device, dtype), x[:1].to(device, dtype)


# --- measuring, inside one worker process -------------------------------------------

def reset_peak() -> None:
    """Start a new VmHWM period (Linux >= 4.0); the CUDA allocator's peak too."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> dict:
    """Peak resident memory since the last reset, and what is resident now (anonymous vs file-backed)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024 / GiB
    memory = {"peak_rss": fields["VmHWM"], "anon": fields["RssAnon"], "file": fields["RssFile"]}
    if device == "cuda":
        memory["peak_cuda"] = torch.cuda.max_memory_allocated() / GiB
    return memory


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def timed(fn, device: str, repeats: int) -> tuple[dict, torch.Tensor]:
    """One warm-up call, then `repeats` timed calls: wall and CPU seconds of each, and the last output."""
    def call():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    seconds = {"wall": [], "cpu": []}
    with torch.inference_mode():
        call()
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), cpu_seconds()
            out = call()
            seconds["wall"].append(time.perf_counter() - wall)
            seconds["cpu"].append(cpu_seconds() - cpu)
    return seconds, out


def read_floor(path: Path, prefix: str, dtype: torch.dtype, device: str) -> float:
    """Seconds to read every tensor under `prefix` and cast it: the least any loader can do."""
    from safetensors import safe_open

    start = time.perf_counter()
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = [f.get_tensor(k).to(device, dtype) for k in f.keys() if k.startswith(prefix)]
    seconds = time.perf_counter() - start
    del tensors
    return seconds


def worker(spec: dict) -> dict:
    """Measure one implementation on one device and dtype; outputs are saved for the agreement check.
    The UNet stays loaded while the VAE decodes, as in a pipeline."""
    path, device, precision, impl = Path(spec["checkpoint"]), spec["device"], spec["precision"], spec["impl"]
    dtype = DTYPES[precision]
    result = {"floor_s": read_floor(path, LDM_UNET, dtype, device)}

    reset_peak()
    start = time.perf_counter()
    load_unet, load_vae = (loom_models if impl == "loom" else diffusers_models)(path, device, precision)
    unet = load_unet()
    result["load_s"] = time.perf_counter() - start
    result["load_mem"] = peak_memory(device)

    x, t, context, latent = inputs(spec["size"], dtype, device)
    reset_peak()
    result["unet"], eps = timed(unet_step(impl, unet, x, t, context), device, spec["steps"])
    result["unet_mem"] = peak_memory(device)
    torch.save(eps.float().cpu(), spec["out"] + "_unet.pt")

    vae = load_vae()
    latent = latent.to(next(vae.parameters()).dtype)
    result["vae_dtype"] = str(latent.dtype).removeprefix("torch.")
    reset_peak()
    result["vae"], pixels = timed(vae_decode(impl, vae, latent), device, spec["decodes"])
    result["vae_mem"] = peak_memory(device)
    torch.save(pixels.float().cpu(), spec["out"] + "_vae.pt")
    return result


def profile(path: Path, precision: str, size: int, repeats: int = 3) -> None:
    """CPU seconds of one UNet step by module class (each module's own time, its children's taken
    out), Loom next to diffusers, best of `repeats` interleaved steps; plus page faults and system time."""
    import resource

    dtype = DTYPES[precision]
    x, t, context, _ = inputs(size, dtype, "cpu")
    steps, by_class = {}, {}
    for impl, models in zip(IMPLS, (loom_models, diffusers_models)):
        unet = models(path, "cpu", precision)[0]()
        steps[impl], by_class[impl] = unet_step(impl, unet, x, t, context), _own_time_by_class(unet)
    best = {}
    with torch.inference_mode():
        for impl in IMPLS:
            steps[impl]()
        for _ in range(repeats):
            for impl in IMPLS:
                by_class[impl].clear()
                before, faults = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                steps[impl]()
                after = os.times()
                total = after.user + after.system - before.user - before.system
                if impl not in best or total < best[impl]["total"]:
                    best[impl] = {"total": total, "system": after.system - before.system,
                                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                                  "classes": dict(by_class[impl])}
    for impl, b in best.items():
        print(f"\n{impl} UNet, cpu {precision}, {size}px, {torch.get_num_threads()} threads: {b['total']:.3f} CPU s "
              f"per step ({b['system']:.3f} s system, {b['faults']} minor page faults)")
        for name, seconds in sorted(b["classes"].items(), key=lambda item: -item[1])[:14]:
            print(f"  {name:28} {seconds * 1e3:9.1f} ms")


def _own_time_by_class(model: torch.nn.Module) -> dict:
    """Hooks accumulating, per module class, CPU seconds spent in a module but not in its children."""
    totals, stack = collections.defaultdict(float), []

    def enter(module, args):
        stack.append([cpu_seconds(), 0.0])

    def leave(module, args, output):
        start, in_children = stack.pop()
        elapsed = cpu_seconds() - start
        totals[type(module).__name__] += elapsed - in_children
        if stack:
            stack[-1][1] += elapsed

    for module in model.modules():
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)
    return totals


# --- the driver ----------------------------------------------------------------------

def run_worker(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.bench.sd", "--threads", str(spec["threads"]),
                           "--worker", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['impl']} {spec['device']} {spec['precision']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def configurations(devices: str = "all") -> list[tuple[str, str]]:
    cases = [("cpu", "fp32"), ("cpu", "bf16")] if devices in ("all", "cpu") else []
    if torch.cuda.is_available() and devices in ("all", "cuda"):
        cases += [("cuda", "fp16")] + ([("cuda", "bf16")] if torch.cuda.is_bf16_supported() else [])
    if not cases:
        raise SystemExit(f"no {devices} configuration to measure on this machine")
    return cases


def relative_difference(a_file: Path, b_file: Path) -> float:
    a, b = torch.load(a_file, weights_only=True), torch.load(b_file, weights_only=True)
    return ((a - b).abs().max() / b.abs().max()).item()


def measure_all(path: Path, tmp: Path, args) -> tuple[dict, dict]:
    """Both implementations on every configuration, each in its own process; outputs compared."""
    results, agreement = {}, {}
    for device, precision in configurations(args.device):
        pair = {}
        for impl in IMPLS:
            spec = dict(checkpoint=str(path), device=device, precision=precision, impl=impl, size=args.size,
                        steps=args.steps, decodes=args.decodes, threads=args.threads,
                        out=str(tmp / f"{impl}_{device}_{precision}"))
            pair[impl] = r = run_worker(spec)
            print(f"  {device} {precision} {impl:9}: UNet {median(r['unet']):6.2f} s/step, "
                  f"VAE {median(r['vae']):6.2f} s, load {r['load_s']:5.2f} s", flush=True)
        results[device, precision] = pair
        agreement[device, precision] = {
            part: relative_difference(*(tmp / f"{impl}_{device}_{precision}_{part}.pt" for impl in IMPLS))
            for part in ("unet", "vae")}
    return results, agreement


def median(seconds: dict, kind: str = "wall") -> float:
    return statistics.median(seconds[kind])


def spread(seconds: dict, kind: str) -> str:
    values = seconds[kind]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(results: dict, agreement: dict) -> None:
    print("\nmedian seconds (min-max); ratio = Loom / diffusers, < 1: Loom faster; "
          "CPU = user + system seconds of the process")
    header = (f"{'':12} {'':9} | {'UNet wall s/step':>20} {'ratio':>5} {'CPU s':>7} {'ratio':>5} | "
              f"{'VAE decode wall s':>20} {'ratio':>5} {'CPU s':>7} {'ratio':>5} | {'diff UNet':>9} {'VAE':>7}")
    print(header)
    print("-" * len(header))
    for (device, precision), pair in results.items():
        for impl, r in pair.items():
            cells = []
            for part in ("unet", "vae"):
                ratios = [median(pair["loom"][part], kind) / median(pair["diffusers"][part], kind)
                          for kind in ("wall", "cpu")]
                shown = [f"{ratio:5.2f}" if impl == "loom" else "" for ratio in ratios]
                cells.append(f"{spread(r[part], 'wall'):>20} {shown[0]:>5} {median(r[part], 'cpu'):7.2f} "
                             f"{shown[1]:>5}")
            diff = agreement[device, precision]
            diffs = f"{diff['unet']:9.1e} {diff['vae']:7.1e}" if impl == "loom" else ""
            print(f"{device + ' ' + precision:12} {impl:9} | {cells[0]} | {cells[1]} | {diffs}")
    print("diff = max|Loom - diffusers| / max|diffusers| of the last output")

    if ("cpu", "fp32") in results:
        print("\nbf16 speed-up on the CPU (fp32 time / bf16 time), wall (CPU):")
        for impl in IMPLS:
            fp32, bf16 = results["cpu", "fp32"][impl], results["cpu", "bf16"][impl]
            speedups = {part: [median(fp32[part], kind) / median(bf16[part], kind) for kind in ("wall", "cpu")]
                        for part in ("unet", "vae")}
            target = "  (target >= 1.5)" if impl == "loom" else ""
            print(f"  {impl:9} UNet {speedups['unet'][0]:.2f}x ({speedups['unet'][1]:.2f}x){target}; "
                  f"VAE {speedups['vae'][0]:.2f}x ({speedups['vae'][1]:.2f}x)")

    print(f"\n{'':12} {'':9} | {'load s':>6} {'floor s':>7} | peak GiB: {'load':>5} {'UNet':>5} {'VAE':>5} | "
          f"resident after UNet: anon + file-backed GiB")
    for (device, precision), pair in results.items():
        peak = "peak_cuda" if device == "cuda" else "peak_rss"
        for impl, r in pair.items():
            print(f"{device + ' ' + precision:12} {impl:9} | {r['load_s']:6.2f} {r['floor_s']:7.2f} | "
                  f"{'':9} {r['load_mem'][peak]:5.2f} {r['unet_mem'][peak]:5.2f} {r['vae_mem'][peak]:5.2f} | "
                  f"{r['unet_mem']['anon']:.2f} + {r['unet_mem']['file']:.2f}  (VAE in {r['vae_dtype']})")
    print("floor = reading and casting the UNet tensors alone; peak = VmHWM of the phase (CUDA: max allocated), "
          "weights included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latent side = size / 8)")
    parser.add_argument("--steps", type=int, default=2, help="timed UNet steps after one warm-up")
    parser.add_argument("--decodes", type=int, default=1, help="timed VAE decodes after one warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (fewer than the cores gives steadier times on a busy machine)")
    parser.add_argument("--checkpoint", type=Path, help="keep the random checkpoint here (written if missing)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="which configurations: CPU fp32/bf16, CUDA fp16/bf16 (when there is a GPU), or all")
    parser.add_argument("--profile", choices=("fp32", "bf16"), help="only break down CPU UNet steps in this dtype")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from engine.memory import cpu_supports_bf16

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loom-bench-sd-") as tmp:
        path = args.checkpoint or Path(tmp) / "sd15-random.safetensors"
        if not path.exists():
            write_checkpoint(path)
            print(f"random SD1.5 checkpoint (UNet + VAE, fp16): {path.stat().st_size / GiB:.2f} GiB written in "
                  f"{time.perf_counter() - started:.1f} s")
        if args.profile:
            profile(path, args.profile, args.size)
            return
        print(f"{args.size}x{args.size}, CFG batch 2, {args.steps} timed UNet steps, {args.decodes} timed decodes; "
              f"torch {torch.__version__}, {args.threads} threads, native CPU bf16: {cpu_supports_bf16()}, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        report(*measure_all(path, Path(tmp), args))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}; whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
