"""ControlNet and T2I-Adapter: parity with diffusers on the same weights, the file layouts, and
their effect on sampling (zero convolutions change nothing, start/end percent, stacking)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel as DiffusersControlNet
from diffusers import T2IAdapter as DiffusersT2IAdapter
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from PIL import Image
from safetensors.torch import save_file

from engine import memory
from engine.executor import Executor
from engine.loading.checkpoint import UNET_PREFIX, load_checkpoint
from engine.loading.controlnet import (adapter_state_dict, controlnet_from_diffusers, detect_adapter_config,
                                       detect_controlnet_config, load_controlnet)
from engine.loading.files import WeightsFileError, from_tensors, load_into
from engine.memory import ModelRef
from engine.models.controlnet import (Adapter, AdapterConfig, ControlNetConfig, ControlNetModel, LightAdapter,
                                     LightAdapterConfig)
from engine.models.unet import UNetConfig, UNetModel, sdxl_adm
from engine.registry import Registry
from engine.sampling.guidance import CFGDenoiser
from engine.sampling.ksampler import sample
from engine.sampling.schedulers import ksampler_sigmas
from engine.sampling.schedules import DiscreteSchedule
from engine.sd.control import control_to_uncond
from engine.sd.model import SD15_LATENT, DiffusionModel
from engine.workflow import load_workflow
from nodes.control import ControlNetApply, ControlNetApplyAdvanced, DiffControlNetLoader
from tests.sd_fixtures import TINY_SD1_UNET, make_checkpoint

TINY_CONTROLNET = ControlNetConfig(TINY_SD1_UNET)
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


# --- fixtures: tiny weights in the real layouts ---------------------------------------------------------

def controlnet_weights(unet_weights: dict, seed: int = 0, trained: bool = True) -> dict:
    """A ControlNet for the tiny SD1 UNet as training starts (encoder copied from the UNet, zero
    convolutions and the hint encoder's last convolution zero); `trained` perturbs every weight."""
    torch.manual_seed(seed)
    weights = ControlNetModel(TINY_CONTROLNET).state_dict()
    weights.update({k: unet_weights[k].clone() for k in weights if k in unet_weights})
    if trained:
        weights = {k: v + 0.1 * torch.randn_like(v) for k, v in weights.items()}
    return weights


def to_diffusers(weights: dict) -> dict:
    """Original -> diffusers layout by diffusers' own single-file converter (the test oracle)."""
    converted = convert_controlnet_checkpoint({"control_model." + k: v for k, v in weights.items()},
                                              {"layers_per_block": 1})
    return {k: v.contiguous() for k, v in converted.items()}


def save_controlnet(path, weights: dict, layout: str = "original"):
    tensors = to_diffusers(weights) if layout == "diffusers" else {"control_model." + k: v for k, v in weights.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def example_image(height=64, width=64) -> np.ndarray:
    """A procedurally drawn picture: a bright disc and a dark bar on a gradient."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([0.3 + 0.4 * xx, 0.5 * yy, 0.6 - 0.3 * xx], axis=-1)
    image[(yy - 0.4) ** 2 + (xx - 0.55) ** 2 < 0.06] = (0.95, 0.85, 0.3)
    image[(yy > 0.7) & (yy < 0.8) & (xx > 0.1)] = (0.1, 0.1, 0.2)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Tiny SD1 checkpoint, ControlNets named like the real ones (canny in the original layout, soft
    edge in the diffusers one, a freshly initialised one) and input/example.png, written once."""
    base = tmp_path_factory.mktemp("loom")
    folders = {kind: base / "models" / kind for kind in ("checkpoints", "controlnet")}
    for folder in [*folders.values(), base / "input", base / "output"]:
        folder.mkdir(parents=True)
    written = make_checkpoint(folders["checkpoints"] / "v1-5-pruned-emaonly.safetensors", "sd1")
    unet = {k[len(UNET_PREFIX):]: v for k, v in written.items() if k.startswith(UNET_PREFIX)}
    save_controlnet(folders["controlnet"] / "fresh.safetensors", controlnet_weights(unet, trained=False))
    save_controlnet(folders["controlnet"] / "control_v11p_sd15_canny.safetensors", controlnet_weights(unet, 1))
    save_controlnet(folders["controlnet"] / "control_v11p_sd15_softedge.safetensors", controlnet_weights(unet, 2),
                    "diffusers")
    Image.fromarray(example_image()).save(base / "input" / "example.png")
    return base, unet


@pytest.fixture
def world(model_folders):
    """(paths, loaded tiny checkpoint, its UNet weights), with the paths installed as the default."""
    from engine import paths as paths_mod

    base, unet = model_folders
    memory.configure("cpu", "fp32")
    previous = paths_mod._default
    paths = paths_mod.Paths(base=base)
    paths_mod.set_default_paths(paths)
    yield paths, load_checkpoint(base / "models/checkpoints/v1-5-pruned-emaonly.safetensors"), unet
    paths_mod._default = previous
    memory.model_manager().clear()


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


def prompts(checkpoint):
    from engine.sd.conditioning import Cond

    return ([Cond(*checkpoint.clip.encode("a red house"))], [Cond(*checkpoint.clip.encode("blurry"))])


def hint(seed=0, size=64):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def apply(positive, negative, control, image, strength=1.0, start=0.0, end=1.0):
    return ControlNetApplyAdvanced().execute(positive, negative, control, image, strength, start, end)


def max_diff(a, b):
    return (a - b).abs().max().item()


# --- the network: parity with diffusers, layouts --------------------------------------------------------

def random_diffusers_controlnet(sdxl: bool):
    """A scaled-down diffusers ControlNetModel (SD1-like, or SDXL-like with linear projections and
    the added size/pooled embedding), every weight random."""
    kwargs = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64, norm_num_groups=32,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=8)
    if sdxl:
        kwargs.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(1, 1),
                      transformer_layers_per_block=(1, 2), use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=32 + 6 * 256)
    torch.manual_seed(3)
    reference = DiffusersControlNet(**kwargs).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return reference


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd1", "sdxl"])
def test_network_matches_diffusers_on_converted_weights(sdxl):
    reference = random_diffusers_controlnet(sdxl)
    weights = controlnet_from_diffusers(from_tensors(reference.state_dict()))
    config = detect_controlnet_config(weights)
    assert config.unet.adm_in_channels == (32 + 6 * 256 if sdxl else None)
    assert config.unet.transformer_depth == ((0, 2) if sdxl else (1, 0))
    assert config.unet.use_linear_in_transformer == sdxl
    with torch.device("meta"):
        model = ControlNetModel(config)
    load_into(model, weights)

    g = torch.Generator().manual_seed(1)
    x, hint_image = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    t, context = torch.tensor([999.0, 17.0]), torch.randn(2, 7, 64, generator=g)
    y, extra = None, {}
    if sdxl:
        pooled = torch.randn(2, 32, generator=g)
        y = sdxl_adm(pooled, 64, 48, 0, 8, 64, 48)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([[48.0, 64, 8, 0, 48, 64]] * 2)}}
    with torch.no_grad():
        ours = model(x, hint_image, t, context, y=y)
        down, middle = reference(x, t, context, hint_image, return_dict=False, **extra)
    assert len(ours["output"]) == len(down) == 4
    assert max(max_diff(a, b) for a, b in zip(ours["output"], down)) < 1e-5
    assert max_diff(ours["middle"][0], middle) < 1e-5 and middle.abs().max() > 0.1


def test_original_and_diffusers_files_load_to_identical_networks(tmp_path):
    memory.configure("cpu", "fp32")
    unet = UNetModel(TINY_SD1_UNET).state_dict()
    weights = controlnet_weights(unet, seed=5)
    save_controlnet(tmp_path / "original.safetensors", weights)
    save_controlnet(tmp_path / "diffusers.safetensors", weights, "diffusers")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "bare.safetensors"))
    nets = [load_controlnet(tmp_path / f"{name}.safetensors").ref.get()
            for name in ("original", "diffusers", "bare")]
    assert all(net.config == TINY_CONTROLNET for net in nets)
    for net in nets:
        assert net.state_dict().keys() == weights.keys()
        assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
        for p in net.parameters():  # out of the memory-mapped files: kernels then take the same
            p.data = p.data.clone()  # paths (alignment in the file can change the last bit)
    g = torch.Generator().manual_seed(2)
    args = (torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g), torch.tensor([500.0]),
            torch.randn(1, 5, 64, generator=g))
    with torch.no_grad():
        outputs = [net(*args) for net in nets]
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0]["output"] + outputs[0]["middle"],
                                                     other["output"] + other["middle"]))
    memory.model_manager().clear()


def test_files_that_are_not_controlnets_fail_clearly(tmp_path):
    make_checkpoint(tmp_path / "model.safetensors", "sd1")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "random.safetensors"))
    save_file({"control_add_embedding.linear_1.weight": torch.zeros(2),
               "controlnet_cond_embedding.conv_in.weight": torch.zeros(2)}, str(tmp_path / "union.safetensors"))
    with pytest.raises(WeightsFileError, match="Stable Diffusion checkpoint, not a ControlNet"):
        load_controlnet(tmp_path / "model.safetensors")
    with pytest.raises(WeightsFileError, match="neither a ControlNet nor a T2I-Adapter.*top-level keys found: weight"):
        load_controlnet(tmp_path / "random.safetensors")
    with pytest.raises(WeightsFileError, match="ControlNet Union"):
        load_controlnet(tmp_path / "union.safetensors")


def test_difference_controlnet_gets_the_model_weights_added(world, tmp_path):
    paths, checkpoint, unet = world
    full = controlnet_weights(unet, seed=7)
    delta = {k: v - unet[k] if k in unet else v for k, v in full.items()}
    tensors = {"control_model." + k: v.contiguous() for k, v in delta.items()}
    save_file({**tensors, "difference": torch.zeros(1)}, str(tmp_path / "diff.safetensors"))
    with pytest.raises(WeightsFileError, match="DiffControlNetLoader"):
        load_controlnet(tmp_path / "diff.safetensors")
    paths.add_model_dir("controlnet", tmp_path)
    node = DiffControlNetLoader()
    node.ctx.paths = paths
    net = node.execute(checkpoint.model, "diff.safetensors")[0].ref.get()
    assert max(max_diff(net.state_dict()[k], v) for k, v in full.items()) < 1e-6


# --- in sampling ----------------------------------------------------------------------------------------

def run_pair(world, registry, control_net_name, steps=2):
    """KSampler latents without and with ControlNetApplyAdvanced (canny of input/example.png)."""
    from engine.graph import Graph

    paths = world[0]
    graph = Graph()
    graph.add_node("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, id="ckpt")
    for node_id, text in (("pos", "a red house"), ("neg", "blurry")):
        graph.add_node("CLIPTextEncode", {"text": text}, id=node_id)
        graph.connect("ckpt", 1, node_id, "clip")
    graph.add_node("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}, id="empty")
    graph.add_node("LoadImage", {"image": "example.png"}, id="image")
    graph.add_node("Canny", {"low_threshold": 0.2, "high_threshold": 0.5}, id="canny")
    graph.connect("image", 0, "canny", "image")
    graph.add_node("ControlNetLoader", {"control_net_name": control_net_name}, id="cn")
    graph.add_node("ControlNetApplyAdvanced", {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}, id="apply")
    for inp, src in (("positive", "pos"), ("negative", "neg"), ("control_net", "cn"), ("image", "canny")):
        graph.connect(src, 0, "apply", inp)
    for node_id, (positive, negative) in (("plain", (("pos", 0), ("neg", 0))),
                                          ("controlled", (("apply", 0), ("apply", 1)))):
        graph.add_node("KSampler", {"seed": 5, "steps": steps, "cfg": 6.0, "sampler_name": "euler",
                                    "scheduler": "normal", "denoise": 1.0}, id=node_id)
        graph.connect("ckpt", 0, node_id, "model")
        graph.connect(*positive, node_id, "positive")
        graph.connect(*negative, node_id, "negative")
        graph.connect("empty", 0, node_id, "latent_image")
    result = Executor(registry, paths=paths).run(graph, targets=["plain", "controlled"])
    assert result.ok, (result.problems, result.error)
    return result.values["plain"][0]["samples"], result.values["controlled"][0]["samples"]


def test_fresh_controlnet_changes_nothing_and_a_trained_one_does(world, registry):
    plain, controlled = run_pair(world, registry, "fresh.safetensors")
    assert torch.equal(plain, controlled)
    plain, controlled = run_pair(world, registry, "control_v11p_sd15_canny.safetensors")
    assert max_diff(plain, controlled) > 1e-3


def test_controlnet_acts_only_between_start_and_end_percent(world):
    paths, checkpoint, _ = world
    model = checkpoint.model
    positive, negative = prompts(checkpoint)
    control = load_controlnet(paths.base / "models/controlnet/control_v11p_sd15_canny.safetensors")
    start, end = 0.3, 0.7
    pos_cn, neg_cn = apply(positive, negative, control, hint(), 1.0, start, end)
    head = pos_cn[0].control
    assert neg_cn[0].control is head  # one link shared by both sides, so they stay in one batch
    sigma_start, sigma_end = model.schedule.percent_to_sigma(start), model.schedule.percent_to_sigma(end)

    # The guided denoiser's output differs from the plain one exactly at the sigmas in range.
    shape = (1, 4, 8, 8)
    plain = CFGDenoiser(model, positive, negative, 6.0, shape)
    controlled = CFGDenoiser(model, pos_cn, neg_cn, 6.0, shape)
    sigmas = ksampler_sigmas(model.schedule, "normal", 6, "euler", 1.0)[:-1]
    g = torch.Generator().manual_seed(0)
    acted = []
    for sigma in sigmas:
        x = torch.randn(shape, generator=g) * sigma
        inside = sigma_end <= sigma.item() <= sigma_start
        same = torch.equal(plain(x, sigma.reshape(1)), controlled(x, sigma.reshape(1)))
        assert same != inside, (sigma.item(), inside)
        acted.append(inside)
    assert 0 < sum(acted) < len(acted)

    # In a KSampler run, the steps whose model call got residuals are exactly those.
    calls = []
    original = head.get_control

    def record(x, sigma, *args, **kw):
        out = original(x, sigma, *args, **kw)
        calls.append((sigma[0].item(), out is not None))
        return out

    head.get_control = record
    sample(model, {"samples": torch.zeros(shape)}, pos_cn, neg_cn, seed=1, steps=6, cfg=6.0,
           sampler_name="euler", scheduler="normal")
    assert [s for s, _ in calls] == pytest.approx(sigmas.tolist())
    assert [got for _, got in calls] == acted


def test_stacked_controlnets_add_their_residuals(world):
    paths, checkpoint, _ = world
    model = checkpoint.model
    positive, negative = prompts(checkpoint)
    canny = load_controlnet(paths.base / "models/controlnet/control_v11p_sd15_canny.safetensors")
    soft = load_controlnet(paths.base / "models/controlnet/control_v11p_sd15_softedge.safetensors")
    first = apply(positive, negative, canny, hint(1), 0.8)
    stacked = apply(*first, soft, hint(2), 0.6, 0.0, 0.5)
    alone = apply(positive, negative, soft, hint(2), 0.6, 0.0, 0.5)
    chain, a, b = stacked[0][0].control, first[0][0].control, alone[0][0].control
    assert chain.previous is a and stacked[1][0].control is chain

    guider = CFGDenoiser(model, *stacked, 6.0, (2, 4, 8, 8))
    context = torch.cat([positive[0].cross_attn, negative[0].cross_attn])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    half = model.schedule.percent_to_sigma(0.5)
    for sigma in (14.0, 0.1):  # the soft-edge link acts in the first half of the run only (high sigmas)
        sigmas = torch.full((2,), sigma)
        with torch.no_grad():
            total = chain.get_control(x, sigmas, context, None, guider)
            only_a = a.get_control(x, sigmas, context, None, guider)
            only_b = b.get_control(x, sigmas, context, None, guider)
        if sigma > half:
            expected = {k: [p + q for p, q in zip(only_a[k], only_b[k])] for k in ("output", "middle")}
        else:
            assert only_b is None
            expected = only_a
        for key in ("output", "middle"):
            assert len(total[key]) == len(expected[key]) == (4 if key == "output" else 1)
            assert all(torch.equal(p, q) for p, q in zip(total[key], expected[key]))


def test_old_apply_node_gives_its_control_to_the_negative_prompt(world):
    paths, checkpoint, _ = world
    model = checkpoint.model
    positive, negative = prompts(checkpoint)
    control = load_controlnet(paths.base / "models/controlnet/control_v11p_sd15_canny.safetensors")
    image = hint(4)
    (old,) = ControlNetApply().execute(positive, control, image, 0.7)
    assert ControlNetApply().execute(positive, control, image, 0.0) == (positive,)
    uncond = control_to_uncond(old, negative)
    assert uncond[0].control is old[0].control and negative[0].control is None

    # ComfyUI's rules: links of the Advanced node stay on their side; a negative side that already has
    # a control keeps it; with several positive entries the later one's control wins.
    advanced = apply(positive, negative, control, image, 0.7)
    assert control_to_uncond(advanced[0], negative) is negative
    assert control_to_uncond(old, advanced[1]) is advanced[1]
    (two,) = ControlNetApply().execute(positive + positive, control, image, 0.7)
    assert control_to_uncond(two, negative)[0].control is two[1].control

    # Given to the negative side, the old node samples exactly as the Advanced one over the whole run.
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([3.0])
    old_out = CFGDenoiser(model, old, uncond, 6.0, x.shape)(x, sigma)
    assert torch.equal(old_out, CFGDenoiser(model, *advanced, 6.0, x.shape)(x, sigma))


# --- T2I-Adapters ---------------------------------------------------------------------------------------

def random_diffusers_adapter(xl: bool):
    torch.manual_seed(6)
    reference = DiffusersT2IAdapter(in_channels=3, channels=[32, 64, 128, 128], num_res_blocks=2,
                                    downscale_factor=16 if xl else 8,
                                    adapter_type="full_adapter_xl" if xl else "full_adapter").eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return reference


@pytest.mark.parametrize("xl", [False, True], ids=["sd1", "sdxl"])
def test_t2i_adapter_matches_diffusers_in_both_layouts(xl, tmp_path):
    memory.configure("cpu", "fp32")
    reference = random_diffusers_adapter(xl)
    diffusers_weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(diffusers_weights, str(tmp_path / "diffusers.safetensors"))
    original = adapter_state_dict(from_tensors(diffusers_weights))
    assert "conv_in.weight" in original and "body.7.block2.weight" in original
    save_file({k: original[k].contiguous() for k in original}, str(tmp_path / "original.safetensors"))
    config = detect_adapter_config(original)
    assert (config.cin, config.channels, config.num_res_blocks, config.xl) == \
        ((768 if xl else 192), (32, 64, 128, 128), 2, xl)

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = reference(image)
        for name in ("diffusers", "original"):
            net = load_controlnet(tmp_path / f"{name}.safetensors").ref.get()
            assert isinstance(net, Adapter)
            out = net(image)
            features = [r for r in out["input"][::-1] + out.get("middle", []) if r is not None]
            assert len(features) == len(expected) == 4
            assert max(max_diff(a, b) for a, b in zip(features, expected)) < 1e-5
    memory.model_manager().clear()


@pytest.mark.parametrize("config", [
    AdapterConfig(cin=64, channels=(32, 64, 128, 128), num_res_blocks=1, ksize=3, conv_down=True),
    AdapterConfig(cin=256, channels=(32, 64, 128, 128), num_res_blocks=2, xl=True),
    LightAdapterConfig(cin=192, channels=(32, 64, 128, 128), num_res_blocks=2),
], ids=["full-conv-down", "xl", "light"])
def test_adapter_variants_are_read_back_from_their_weights(config):
    torch.manual_seed(10)
    net = (LightAdapter if isinstance(config, LightAdapterConfig) else Adapter)(config)
    assert detect_adapter_config(from_tensors(net.state_dict())) == config
    hint_channels = config.cin // (16 if config.xl else 8) ** 2
    with torch.no_grad():
        out = net(torch.rand(1, hint_channels, 64, 64))
    sizes = [None if r is None else tuple(r.shape[1:]) for r in out["input"][::-1] + out.get("middle", [])]
    if config.xl:  # after input blocks 3, 5, 8 (latent/2, /2, /4) and on the middle block (latent/4)
        assert [s for s in sizes if s] == [(32, 4, 4), (64, 4, 4), (128, 2, 2), (128, 2, 2)]
        assert [i for i, s in enumerate(sizes) if s] == [3, 5, 8, 10]
    else:  # after input blocks 2, 5, 8, 11: latent/1, /2, /4, /8
        assert [s for s in sizes if s] == [(32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1)]
        assert [i for i, s in enumerate(sizes) if s] == [2, 5, 8, 11]


def test_t2i_adapter_steers_sampling_and_runs_once_per_size(tmp_path):
    """An SD1-shaped (four-level) UNet with a T2I-Adapter: its features land on the right blocks,
    scaled by the strength, and the adapter runs once for all steps."""
    memory.configure("cpu", "fp32")
    torch.manual_seed(8)
    config = UNetConfig.from_level_depths((1, 0, 0, 0), (2, 2, 2, 2), model_channels=32, channel_mult=(1, 2, 4, 4),
                                          context_dim=64)
    unet = UNetModel(config).eval()
    model = DiffusionModel("sd1", ModelRef(("tiny four-level unet",), lambda: unet), config, "eps",
                           DiscreteSchedule(), SD15_LATENT, torch.device("cpu"), torch.float32)
    save_file({k: v.contiguous() for k, v in random_diffusers_adapter(False).state_dict().items()},
              str(tmp_path / "t2iadapter_canny_sd15v2.safetensors"))
    control = load_controlnet(tmp_path / "t2iadapter_canny_sd15v2.safetensors")
    net = control.ref.get()
    runs = []
    net.register_forward_hook(lambda *_: runs.append(1))

    from engine.sd.conditioning import Cond
    g = torch.Generator().manual_seed(9)
    positive, negative = [Cond(torch.randn(1, 7, 64, generator=g))], [Cond(torch.randn(1, 7, 64, generator=g))]
    image = hint(5)
    steered = apply(positive, negative, control, image, 0.7)
    plain, guided = (CFGDenoiser(model, *conds, 5.0, (1, 4, 8, 8)) for conds in ((positive, negative), steered))
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        assert max_diff(plain(x, torch.tensor([10.0])), guided(x, torch.tensor([10.0]))) > 1e-4
        guided(x, torch.tensor([2.0]))
        residuals = steered[0][0].control.get_control(x, torch.tensor([2.0]), None, None, guided)
        features = net(image.movedim(-1, 1))
    assert len(runs) == 2  # once for sampling (cached across steps), once just above
    assert [r is None for r in residuals["input"]] == [i % 3 != 0 for i in range(12)]
    assert all(torch.equal(r, 0.7 * f) for r, f in zip(residuals["input"][::3], features["input"][::3]))


# --- example workflows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["controlnet_canny", "controlnet_stacked"])
def test_example_workflow_runs_on_tiny_weights(name, world, registry):
    paths = world[0]
    graph = load_workflow(WORKFLOWS / f"{name}.json", registry).graph
    for node in graph.nodes.values():
        if node.type == "EmptyLatentImage":
            graph.set_value(node.id, "width", 64)
            graph.set_value(node.id, "height", 64)
        if node.type == "KSampler":
            graph.set_value(node.id, "steps", 2)
    result = Executor(registry, paths=paths).run(graph)
    assert result.ok, (result.problems, result.error)
    saved = [image for ui in result.ui.values() for image in ui.get("images", [])]
    assert saved and all(Path(image["path"]).is_file() for image in saved)
