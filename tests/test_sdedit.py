"""SDEdit and DDIM inversion on tiny SD1 checkpoints; img2img and SDEdit example workflows.

``python -m tests.test_sdedit`` rewrites the example workflows this file builds.
"""
import pytest
import torch
from safetensors.torch import save_file

from engine.graph import Graph
from engine.sampling import SAMPLERS
from engine.sampling.inversion import ddim_invert, sdedit_levels, sdedit_sigmas
from engine.sampling.ksampler import sample_sigmas
from engine.sampling.schedulers import ksampler_sigmas
from engine.sampling.schedules import DiscreteSchedule, alphas_cumprod, make_betas
from tests.sd_fixtures import make_checkpoint
from tests.test_inpaint import (add_decode_save, add_encode, add_ksampler, check_workflow, loaded, open_studio,
                                sd_graph, write_image, write_workflows)

SMOOTH = "smooth-sd1.safetensors"


def write_smooth_checkpoint(path):
    """A tiny SD1 checkpoint with the UNet's output layer scaled by 0.005.  The random UNet's noise
    prediction varies so fast with its input at high noise levels that its probability-flow ODE cannot
    be inverted in 20 steps (the fixed point diverges above sigma ~ 4); scaled down it is smooth, as a
    trained model's is, and inversion still moves the latent by ~30 % of its range."""
    sd = make_checkpoint(path, "sd1")
    for key in ("model.diffusion_model.out.2.weight", "model.diffusion_model.out.2.bias"):
        sd[key] = sd[key] * 0.005
    save_file(sd, str(path))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("sdedit")
    for s in open_studio(base):
        write_image(s.paths.input_dir / "small.png", width=32, height=32, hole=(0, 0, 0, 0), seed=7)
        write_smooth_checkpoint(base / "models" / "checkpoints" / SMOOTH)
        yield s


def add_sdedit(graph, node_id, strength, sampler="euler", scheduler="normal", steps=2, seed=5, image=("image", 0),
               pos=(820, 200), randomize=False):
    graph.add_node("SDEdit", {"seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler,
                              "scheduler": scheduler, "strength": strength}, id=node_id, pos=pos,
                   controls={"seed": "randomize"} if randomize else {})
    for source, name in ((("ckpt", 0), "model"), (("ckpt", 2), "vae"), (image, "image"), (("pos", 0), "positive"),
                         (("neg", 0), "negative")):
        graph.connect(*source, node_id, name)


# --- how strength maps to the schedule -------------------------------------------------------------

def test_sdedit_keeps_the_levels_in_0_t0():
    schedule = DiscreteSchedule()
    table = schedule.sigmas
    for scheduler in ("normal", "karras", "simple", "ddim_uniform", "beta"):  # t0 = 1: txt2img's sigmas
        assert torch.equal(sdedit_sigmas(schedule, scheduler, 7, "euler", 1.0),
                           ksampler_sigmas(schedule, scheduler, 7, "euler"))
    half = sdedit_sigmas(schedule, "normal", 4, "euler", 0.5)  # levels 0..499, uniform in timestep
    assert sdedit_levels(schedule, 0.5) == 500 and half[-1] == 0
    assert torch.isclose(half[0], table[499]) and torch.isclose(half[-2], table[0])
    assert torch.equal(schedule.timestep(half[:-1]), torch.tensor([499, 333, 166, 0]))
    quarter = sdedit_sigmas(schedule, "karras", 5, "euler", 0.25)
    assert len(quarter) == 6 and torch.isclose(quarter[0], table[249]) and torch.isclose(quarter[-2], table[0])
    assert len(sdedit_sigmas(schedule, "normal", 20, "euler", 0.0004)) == 0  # no level in (0, t0]
    assert sdedit_sigmas(schedule, "normal", 20, "euler", 0.001).tolist() == [table[0].item(), 0.0]
    merged = sdedit_sigmas(schedule, "simple", 10, "euler", 0.004)  # 10 steps over 4 levels: 4 steps
    assert torch.equal(merged, torch.cat([table[:4].flip(0), torch.zeros(1)]))


def test_noising_to_t0_is_the_vp_forward_process():
    """x_t0 = x_g + sigma z (the samplers' VE form) is sqrt(alphā) x_g + sqrt(1 - alphā) z scaled by
    sqrt(1 + sigma²), with alphā of the same DDPM level."""
    alpha_bar = alphas_cumprod(make_betas("linear"))
    sigma = DiscreteSchedule().sigmas.double()
    scale = (1 + sigma ** 2).sqrt()
    assert torch.allclose(1 / scale, alpha_bar.sqrt(), rtol=1e-6)
    assert torch.allclose(sigma / scale, (1 - alpha_bar).sqrt(), rtol=1e-6)


# --- SDEdit --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, scheduler", [("euler", "normal"), ("dpmpp_2m", "ddim_uniform")])
def test_sdedit_at_strength_1_is_txt2img_from_the_same_noise(studio, sampler, scheduler):
    graph = sd_graph(image="small.png")
    add_sdedit(graph, "sdedit", 1.0, sampler, scheduler)
    graph.add_node("EmptyLatentImage", {"width": 32, "height": 32, "batch_size": 1}, id="empty")
    add_ksampler(graph, "txt2img", ("empty", 0), seed=5, steps=2, sampler_name=sampler, scheduler=scheduler)
    add_decode_save(graph, ("txt2img", 0), "txt2img")
    (image, latent), (txt2img,), (decoded,) = studio.run(graph, "sdedit", "txt2img", "decode")
    assert torch.equal(latent["samples"], txt2img["samples"]) and torch.equal(image, decoded)


def test_sdedit_is_one_noising_then_the_sampler_over_its_sigmas(studio):
    graph = sd_graph(image="small.png")
    add_sdedit(graph, "sdedit", 0.5, "dpmpp_2m", "karras")
    model, clip, vae = loaded(studio)
    (image, _), (_, latent), (pos,), (neg,) = studio.run(graph, "image", "sdedit", "pos", "neg")
    sigmas = sdedit_sigmas(model.schedule, "karras", 2, "dpmpp_2m", 0.5)
    expected, _ = sample_sigmas(model, {"samples": vae.encode(image)}, pos, neg, cfg=5.0, sampler_name="dpmpp_2m",
                                sigmas=sigmas, seed=5)
    assert torch.equal(latent["samples"], expected["samples"])


def test_sdedit_returns_the_input_as_strength_goes_to_0(studio):
    """Exact below one noise level; above, what is left of the injected noise sigma(t0) z, which a
    trained model removes and the smooth random one hardly does: it shrinks with sigma(t0)."""
    graph = sd_graph(SMOOTH, image="small.png")
    add_encode(graph)
    strengths = (0.0004, 0.001, 0.01, 0.1)
    for i, strength in enumerate(strengths):
        add_sdedit(graph, f"s{i}", strength)
    (image, _), (encoded,), *edits = studio.run(graph, "image", "encode", *(f"s{i}" for i in range(len(strengths))))
    assert torch.equal(edits[0][0], image) and torch.equal(edits[0][1]["samples"], encoded["samples"])
    x = encoded["samples"]
    errors = [((latent["samples"] - x).pow(2).mean() / x.pow(2).mean()).sqrt().item() for _, latent in edits[1:]]
    assert errors[0] < errors[1] < errors[2] and errors[0] < 0.2, errors  # relative rms; measured 0.13, 0.41, 1.5


# --- DDIM inversion ------------------------------------------------------------------------------

def test_ddim_inversion_inverts_euler_on_a_gaussian_denoiser():
    """Data N(0, s²) has the linear denoiser D(x, sigma) = x s² / (s² + sigma²), whose probability-flow ODE
    carries x0 to x0 sqrt((s² + sigma²) / s²): inversion ends there (up to Euler's error), and refining each
    step makes it the exact inverse of sampling."""
    s2 = 0.25
    def denoiser(x, sigma):
        return x * s2 / (s2 + sigma.view(-1, 1, 1, 1) ** 2)
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8) * s2 ** 0.5
    sigmas = ksampler_sigmas(DiscreteSchedule(), "karras", 50)
    flow = x0 * ((s2 + sigmas[0] ** 2) / s2) ** 0.5
    inverted = [ddim_invert(denoiser, x0, sigmas, refine) for refine in (0, 3, 30)]
    errors = [(SAMPLERS["euler"](denoiser, x, sigmas) - x0).abs().max() for x in inverted]
    assert errors[2] < 1e-5 < errors[1] < errors[0]  # measured: 6e-7, 4e-4, 0.50
    assert (inverted[2] - flow).abs().max() < 0.05 * flow.abs().max()  # measured 0.036


def test_ddim_inversion_then_sampling_reconstructs_the_latent(studio):
    graph = sd_graph(SMOOTH, image="small.png")
    add_encode(graph)
    graph.add_node("DDIMInversion", {"steps": 20, "cfg": 1.0, "scheduler": "normal", "refine": 6}, id="invert")
    graph.add_node("DDIMSample", {"steps": 20, "cfg": 1.0, "scheduler": "normal"}, id="back")
    graph.add_node("KSamplerAdvanced", {"add_noise": "disable", "noise_seed": 0, "steps": 20, "cfg": 1.0,
                                        "sampler_name": "ddim", "scheduler": "normal", "start_at_step": 0,
                                        "end_at_step": 10000, "return_with_leftover_noise": "disable"}, id="ksampler")
    for node, latent in (("invert", ("encode", 0)), ("back", ("invert", 0)), ("ksampler", ("invert", 0))):
        for source, name in ((("ckpt", 0), "model"), (("pos", 0), "positive"), (("neg", 0), "negative"),
                             (latent, "latent_image")):
            graph.connect(*source, node, name)
    (encoded,), (inverted,), (back,), (ksampler,) = studio.run(graph, "encode", "invert", "back", "ksampler")
    x, scale = encoded["samples"], encoded["samples"].abs().max()
    assert (inverted["samples"] - x).abs().max() > 0.2 * scale  # measured 0.27: it moved
    assert (back["samples"] - x).abs().max() < 1e-3 * scale  # measured 4.9e-4 (refine 0: 0.10, 2: 0.016)
    assert torch.equal(ksampler["samples"], back["samples"])  # DDIM Sample = KSamplerAdvanced without noise


# --- example workflows --------------------------------------------------------------------------

def build_img2img() -> Graph:
    """ComfyUI-style img2img: VAEEncode, then KSampler at denoise 0.6."""
    graph = sd_graph(positive="a watercolor painting of a lighthouse on a cliff at dawn, soft light",
                     negative="blurry, low quality, watermark")
    add_encode(graph, pos=(420, 560))
    add_ksampler(graph, "sampler", ("encode", 0), pos=(820, 200), randomize=True, steps=20, cfg=7.0, denoise=0.6)
    add_decode_save(graph, ("sampler", 0), "img2img", pos=(1200, 200))
    return graph


def build_sdedit() -> Graph:
    """SDEdit in one node: noise to t0 = 0.6, denoise back in 20 steps."""
    graph = sd_graph(positive="a watercolor painting of a lighthouse on a cliff at dawn, soft light",
                     negative="blurry, low quality, watermark")
    add_sdedit(graph, "sdedit", 0.6, steps=20, randomize=True)
    graph.set_value("sdedit", "cfg", 7.0)
    graph.add_node("SaveImage", {"filename_prefix": "sdedit"}, id="save", pos=(1200, 200))
    graph.connect("sdedit", 0, "save", "images")
    return graph


BUILDERS = {"img2img": build_img2img, "sdedit": build_sdedit}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_example_workflow_is_current_and_runs(studio, name):
    check_workflow(studio, BUILDERS[name], name, "tests.test_sdedit")


if __name__ == "__main__":
    write_workflows(BUILDERS)
