"""LoRA files in every supported format change exactly the weights they name, by exactly strength × ΔW,
on the shared network; removing them restores it bit for bit, and switching never reloads the checkpoint."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import events as ev
from engine import memory
from engine.executor import Executor
from engine.loading.checkpoint import load_checkpoint
from engine.loading.lora import diffusers_unet_names, load_lora, match_lora, unet_shapes
from engine.models.unet import UNetConfig, UNetModel
from engine.registry import Registry
from engine.schema import NodeContext
from engine.sd.patching import Diff, LoRA, PatchSet, apply_patches
from engine.workflow import load_workflow
from nodes.lora import LoraLoader, LoraLoaderModelOnly, apply_lora
from tests.sd_fixtures import make_checkpoint
from tests.test_example_workflows import SMALL

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "lora.json"
UNET, CLIP_L = "model.diffusion_model.", "cond_stage_model.transformer."
STRENGTH = 0.7


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


@pytest.fixture
def sd1(loom_paths):
    """A tiny SD1 checkpoint in models/checkpoints: (Checkpoint, its state dict)."""
    memory.configure("cpu", "fp32")
    memory.model_manager().clear()
    folder = loom_paths.base / "models" / "checkpoints"
    folder.mkdir(parents=True)
    sd = make_checkpoint(folder / "tiny.safetensors", "sd1")
    yield load_checkpoint(folder / "tiny.safetensors"), sd
    memory.model_manager().clear()


def randn(*shape, scale=0.1):
    return torch.randn(*shape) * scale


def lora_pair(out_dim, in_dim, rank, kernel=None):
    """(up, down) with the shapes a LoRA on a linear layer (or a conv with `kernel`) stores."""
    if kernel is None:
        return randn(out_dim, rank), randn(rank, in_dim)
    return randn(out_dim, rank, 1, 1), randn(rank, in_dim, *kernel)


def kohya_lora(name, up, down, alpha):
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(alpha)}


# --- one builder per file format: (file tensors, {parameter key: ΔW at strength 1}) -------------------------
# UNet keys carry the checkpoint prefix, CLIP keys the SD1 text-encoder prefix, so the base comes from the file.

def kohya_format():
    torch.manual_seed(1)
    q_up, q_down = lora_pair(32, 32, 4)
    p_up, p_down = lora_pair(32, 32, 2, kernel=(1, 1))  # SD1's proj_out is a 1x1 conv
    te_up, te_down = lora_pair(64, 64, 4)
    q_name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # diffusers names (SD1)
    tensors = {**kohya_lora(q_name, q_up, q_down, 2.0),
               **kohya_lora("lora_unet_output_blocks_2_1_proj_out", p_up, p_down, 1.0),
               **kohya_lora("lora_te_text_model_encoder_layers_1_self_attn_q_proj", te_up, te_down, 8.0)}
    return tensors, {
        UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": 0.5 * q_up @ q_down,
        UNET + "output_blocks.2.1.proj_out.weight": 0.5 * (p_up[:, :, 0, 0] @ p_down[:, :, 0, 0])[:, :, None, None],
        CLIP_L + "text_model.encoder.layers.1.self_attn.q_proj.weight": 2.0 * te_up @ te_down}


def diffusers_format():
    torch.manual_seed(2)
    k_up, k_down = lora_pair(64, 64, 4)
    o_up, o_down = lora_pair(64, 64, 2)
    fc_up, fc_down = lora_pair(128, 64, 3)
    prefix = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora"
    tensors = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": k_up,
               "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": k_down,
               f"{prefix}.up.weight": o_up, f"{prefix}.down.weight": o_down,
               "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": fc_up,
               "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": fc_down}
    return tensors, {
        UNET + "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight": k_up @ k_down,
        UNET + "middle_block.1.transformer_blocks.0.attn1.to_out.0.weight": o_up @ o_down,
        CLIP_L + "text_model.encoder.layers.0.mlp.fc1.weight": fc_up @ fc_down}


def locon_format():
    """LoCon on 3x3 convs: plain, and with a Tucker core (lora_mid)."""
    torch.manual_seed(3)
    up, down = lora_pair(32, 32, 4, kernel=(3, 3))
    t_up, t_down = lora_pair(64, 64, 2, kernel=(1, 1))
    mid = randn(2, 2, 3, 3)
    name = "lora_unet_up_blocks_0_resnets_1_conv2"
    tensors = {**kohya_lora("lora_unet_down_blocks_0_resnets_0_conv1", up, down, 2.0),
               f"{name}.lora_up.weight": t_up, f"{name}.lora_mid.weight": mid, f"{name}.lora_down.weight": t_down}
    tucker = torch.einsum("oa,abhw,bi->oihw", t_up[:, :, 0, 0], mid, t_down[:, :, 0, 0])
    plain = (up.flatten(1) @ down.flatten(1)).reshape(32, 32, 3, 3)
    return tensors, {UNET + "input_blocks.1.0.in_layers.2.weight": 0.5 * plain,
                     UNET + "output_blocks.1.0.out_layers.3.weight": tucker}


def loha_format():
    """LoHa on a linear layer, and with Tucker cores on a 3x3 conv."""
    torch.manual_seed(4)
    w1a, w1b, w2a, w2b = randn(32, 4), randn(4, 128), randn(32, 4), randn(4, 128)
    ta, tb = [randn(2, 64) for _ in range(2)], [randn(2, 32) for _ in range(2)]  # [r, out], [r, in]
    t1, t2 = randn(2, 2, 3, 3), randn(2, 2, 3, 3)
    lin, conv = "lora_unet_input_blocks_1_1_transformer_blocks_0_ff_net_2", "lora_unet_input_blocks_3_0_in_layers_2"
    tensors = {f"{lin}.hada_w1_a": w1a, f"{lin}.hada_w1_b": w1b, f"{lin}.hada_w2_a": w2a, f"{lin}.hada_w2_b": w2b,
               f"{lin}.alpha": torch.tensor(2.0),
               f"{conv}.hada_w1_a": ta[0], f"{conv}.hada_w1_b": tb[0], f"{conv}.hada_w2_a": ta[1],
               f"{conv}.hada_w2_b": tb[1], f"{conv}.hada_t1": t1, f"{conv}.hada_t2": t2}

    def rebuild(t, a, b):  # W[o, i, h, w] = Σ t[r, s, h, w] a[r, o] b[s, i]
        return torch.einsum("rshw,ro,si->oihw", t, a, b)
    return tensors, {UNET + "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": 0.5 * (w1a @ w1b) * (w2a @ w2b),
                     UNET + "input_blocks.3.0.in_layers.2.weight":
                         rebuild(t1, ta[0], tb[0]) * rebuild(t2, ta[1], tb[1])}


def lokr_format():
    """LoKr: w1 whole and w2 factored (scale alpha/rank), w1 factored and w2 whole, both whole (scale 1)."""
    torch.manual_seed(5)
    w1, w2a, w2b = randn(8, 8), randn(8, 2), randn(2, 8)
    v1a, v1b, v2 = randn(4, 2), randn(2, 2), randn(32, 16)
    u1, u2 = randn(4, 4), randn(32, 32)
    a, b, c = "lycoris_down_blocks_1_attentions_0_proj_in", "lora_unet_time_embed_0", "lora_unet_time_embed_2"
    tensors = {f"{a}.lokr_w1": w1, f"{a}.lokr_w2_a": w2a, f"{a}.lokr_w2_b": w2b, f"{a}.alpha": torch.tensor(1.0),
               f"{b}.lokr_w1_a": v1a, f"{b}.lokr_w1_b": v1b, f"{b}.lokr_w2": v2, f"{b}.alpha": torch.tensor(4.0),
               f"{c}.lokr_w1": u1, f"{c}.lokr_w2": u2, f"{c}.alpha": torch.tensor(3.0)}
    return tensors, {UNET + "input_blocks.3.1.proj_in.weight": 0.5 * torch.kron(w1, w2a @ w2b)[:, :, None, None],
                     UNET + "time_embed.0.weight": 2.0 * torch.kron(v1a @ v1b, v2),
                     UNET + "time_embed.2.weight": torch.kron(u1, u2)}


def diff_format():
    torch.manual_seed(6)
    w, b, te = randn(64, 128), randn(64), randn(64, 64)
    return ({"diffusion_model.input_blocks.3.0.emb_layers.1.diff": w,
             "diffusion_model.input_blocks.3.0.emb_layers.1.diff_b": b,
             "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.out_proj.diff": te},
            {UNET + "input_blocks.3.0.emb_layers.1.weight": w, UNET + "input_blocks.3.0.emb_layers.1.bias": b,
             CLIP_L + "text_model.encoder.layers.0.self_attn.out_proj.weight": te})


FORMATS = {"kohya": kohya_format, "diffusers_peft": diffusers_format, "locon": locon_format,
           "loha": loha_format, "lokr": lokr_format, "diff": diff_format}


def params(module, prefix):
    return {prefix + k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_changes_exactly_the_named_weights_by_strength_times_delta(sd1, fmt):
    ckpt, sd = sd1
    tensors, deltas = FORMATS[fmt]()
    lora = match_lora(tensors, fmt, ckpt.model.config, [(s.name, m.config) for s, m in ckpt.clip.encoders])
    assert lora.unmatched == []
    model, clip = apply_lora(ckpt.model, ckpt.clip, lora, STRENGTH, STRENGTH)
    clip.encode("a cat")  # runs the patched text encoder
    [(_, lazy)] = clip.encoders
    patched = {**params(model.network(), UNET), **params(lazy.network(), CLIP_L)}
    for key, value in patched.items():
        if key in deltas:
            torch.testing.assert_close(value, sd[key] + STRENGTH * deltas[key], rtol=0, atol=1e-6)
            assert not torch.equal(value, sd[key])
        else:
            assert torch.equal(value, sd[key]), key
    # the base handles see the base weights again, bit for bit, from the same modules
    ckpt.clip.encode("a cat")
    base = {**params(ckpt.model.network(), UNET), **params(lazy.network(), CLIP_L)}
    assert all(torch.equal(value, sd[key]) for key, value in base.items())


def test_bf16_weights_are_patched_in_fp32_then_rounded_and_restored_bit_identically():
    torch.manual_seed(8)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Conv2d(8, 8, 3)).to(torch.bfloat16)
    net.requires_grad_(False)
    base = {k: v.clone() for k, v in net.state_dict().items()}
    up, down = lora_pair(32, 16, 2)
    c_up, c_down = lora_pair(8, 8, 2, kernel=(3, 3))
    patches = ((PatchSet("a", {"0.weight": LoRA(up, down, 1.0), "1.weight": LoRA(c_up, c_down)}), 0.8),
               (PatchSet("b", {"0.weight": Diff(torch.full((32, 16), 0.01)), "0.bias": Diff(torch.ones(32))}), -2.0))
    apply_patches(net, patches)
    conv_delta = (c_up[:, :, 0, 0] @ c_down.flatten(1)).reshape(8, 8, 3, 3)
    expected = {"0.weight": base["0.weight"].float() + 0.8 * 0.5 * up @ down - 0.02,
                "1.weight": base["1.weight"].float() + 0.8 * conv_delta,
                "0.bias": base["0.bias"].float() - 2.0}
    for key, value in net.state_dict().items():
        assert value.dtype == torch.bfloat16
        if key in expected:  # fp32 sums rounded once to bf16: at most one bf16 step apart
            torch.testing.assert_close(value.float(), expected[key].bfloat16().float(), rtol=2**-7, atol=1e-6)
        else:
            assert torch.equal(value, base[key])
    apply_patches(net, patches[1:])
    assert torch.equal(net[1].weight, base["1.weight"])
    apply_patches(net, ())
    assert all(torch.equal(v, base[k]) for k, v in net.state_dict().items()) and not net._loom_originals


def unet_out(model):
    torch.manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 64)
    with torch.no_grad():
        return model.network()(x, torch.tensor([500.0]), context)


def test_strengths_alternate_on_one_network_without_reloading(sd1):
    ckpt, sd = sd1
    tensors, deltas = kohya_format()
    lora = match_lora(tensors, "kohya", ckpt.model.config)
    half = apply_lora(ckpt.model, None, lora, 0.5, 0)[0]
    full = apply_lora(ckpt.model, None, lora, 1.0, 0)[0]
    base = unet_out(ckpt.model)
    loads = memory.model_manager().loads
    outs = [unet_out(m) for m in (half, full, half, ckpt.model, full)]
    assert memory.model_manager().loads == loads  # switching never reloads the checkpoint
    assert half.network() is full.network() is ckpt.model.network()  # one shared network
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[4]) and torch.equal(outs[3], base)
    assert not torch.allclose(outs[0], base) and not torch.allclose(outs[0], outs[1])
    # the right outputs: a separately built network with the merged weights
    for strength, out in ((0.5, outs[0]), (1.0, outs[1])):
        merged = {k[len(UNET):]: v + strength * deltas[k] if k in deltas else v
                  for k, v in sd.items() if k.startswith(UNET)}
        with torch.device("meta"):
            reference = UNetModel(ckpt.model.config).eval()
        reference.load_state_dict(merged, assign=True)
        with torch.no_grad():
            torch.manual_seed(0)
            x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 64)
            expected = reference(x, torch.tensor([500.0]), context)
        # merged weights agree to ~1 ulp (rounding order); this random network amplifies that to ~1e-5
        assert (out - expected).abs().max() < 1e-4 * expected.abs().max() < (out - base).abs().max()


def test_strength_zero_and_removal_restore_the_base_output_bit_identically(sd1, loom_paths):
    ckpt, _ = sd1
    (loom_paths.base / "models" / "loras").mkdir(parents=True)
    save_file(kohya_format()[0], str(loom_paths.base / "models" / "loras" / "k.safetensors"))
    node = LoraLoader(NodeContext(paths=loom_paths))
    base_out, base_cond = unet_out(ckpt.model), ckpt.clip.encode("a red circle")[0]
    model, clip = node.execute(ckpt.model, ckpt.clip, "k.safetensors", 1.0, 1.0)
    assert not torch.equal(unet_out(model), base_out)
    assert not torch.equal(clip.encode("a red circle")[0], base_cond)
    assert node.execute(ckpt.model, ckpt.clip, "k.safetensors", 0.0, 0.0) == (ckpt.model, ckpt.clip)
    zero_model, zero_clip = node.execute(ckpt.model, ckpt.clip, "k.safetensors", 0.0, 1.0)
    assert torch.equal(unet_out(zero_model), base_out)  # strength 0 = no patch
    only = LoraLoaderModelOnly(NodeContext(paths=loom_paths)).execute(ckpt.model, "k.safetensors", 0.0)[0]
    assert torch.equal(unet_out(only), base_out)
    # removing the LoRA (using the unpatched handles again) restores everything bit for bit
    assert torch.equal(unet_out(ckpt.model), base_out)
    assert torch.equal(ckpt.clip.encode("a red circle")[0], base_cond)


def test_unmatched_keys_are_reported_by_name_through_progress_text(sd1, loom_paths, registry):
    ckpt, _ = sd1
    up, down = lora_pair(32, 32, 4)
    tensors = {**kohya_format()[0],
               **kohya_lora("lora_unet_no_such_layer", up, down, 4.0),  # unknown module
               **kohya_lora("lora_unet_input_blocks_1_1_proj_in", up[:16].clone(), down.clone(), 4.0),  # wrong shape
               "lora_unet_time_embed_0.dora_scale": torch.ones(128, 1),  # DoRA: not supported
               **kohya_lora("lora_unet_time_embed_0", randn(128, 2), randn(2, 32), 2.0),
               "lora_unet_out_2.oft_blocks": torch.zeros(4, 2, 2)}  # OFT: not supported
    folder = loom_paths.base / "models" / "loras"
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "odd.safetensors"))
    lora = load_lora(folder / "odd.safetensors", ckpt.model, ckpt.clip)
    bad = ("lora_unet_no_such", "lora_unet_input_blocks_1_1_proj_in", "lora_unet_time_embed_0", "lora_unet_out_2")
    assert lora.unmatched == sorted(k for k in tensors if k.startswith(bad))
    assert len(lora.unet.adapters) == 2 and list(lora.clip) == ["l"]

    from engine.graph import Graph
    graph = Graph()
    graph.add_node("CheckpointLoaderSimple", {"ckpt_name": "tiny.safetensors"}, id="ckpt")
    graph.add_node("LoraLoaderModelOnly", {"lora_name": "odd.safetensors", "strength_model": 1.0}, id="lora")
    graph.connect("ckpt", 0, "lora", "model")
    texts = []
    result = Executor(registry, paths=loom_paths).run(
        graph, targets=["lora"],
        on_event=lambda e: texts.append(e.text) if isinstance(e, ev.NodeProgress) and e.text else None)
    assert result.ok, (result.problems, result.error)
    [text] = texts
    assert text.startswith("LoRA keys not matched: ") and "lora_unet_no_such_layer.lora_up.weight" in text
    assert "lora_te_" not in text  # a model-only loader skips the text-encoder keys silently
    assert "lora_unet_time_embed_0.dora_scale" in text and "lora_unet_out_2.oft_blocks" in text


def test_sdxl_text_encoder_keys_patch_clip_l_and_clip_g(loom_paths):
    memory.configure("cpu", "fp32")
    path = loom_paths.base / "xl.safetensors"
    make_checkpoint(path, "sdxl")
    ckpt = load_checkpoint(path)
    torch.manual_seed(7)
    (l_up, l_down), (g_up, g_down) = lora_pair(64, 64, 2), lora_pair(64, 128, 2)
    p_up, p_down = lora_pair(128, 64, 2)
    tensors = {**kohya_lora("lora_te1_text_model_encoder_layers_0_self_attn_v_proj", l_up, l_down, 2.0),
               **kohya_lora("lora_te2_text_model_encoder_layers_1_mlp_fc2", g_up, g_down, 2.0),
               "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": p_down,
               "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": p_up}
    lora = match_lora(tensors, "xl", ckpt.model.config, [(s.name, m.config) for s, m in ckpt.clip.encoders])
    assert lora.unmatched == [] and sorted(lora.clip) == ["g", "l"]
    [(_, enc_l), (_, enc_g)] = ckpt.clip.encoders
    base_cond = ckpt.clip.encode("a cat")[0]
    base = {"l": params(enc_l.network(), ""), "g": params(enc_g.network(), "")}
    clip = apply_lora(None, ckpt.clip, lora, None, 1.5)[1]
    assert not torch.equal(clip.encode("a cat")[0], base_cond)
    expected = {("l", "text_model.encoder.layers.0.self_attn.v_proj.weight"): l_up @ l_down,
                ("g", "text_model.encoder.layers.1.mlp.fc2.weight"): g_up @ g_down,
                ("g", "text_model.encoder.layers.0.mlp.fc1.weight"): p_up @ p_down}
    for name, encoder in (("l", enc_l), ("g", enc_g)):
        for key, value in params(encoder.network(), "").items():
            if (name, key) in expected:
                torch.testing.assert_close(value, base[name][key] + 1.5 * expected[name, key], rtol=0, atol=1e-6)
            else:
                assert torch.equal(value, base[name][key])
    assert torch.equal(ckpt.clip.encode("a cat")[0], base_cond)
    memory.model_manager().clear()


def test_diffusers_names_agree_with_diffusers_own_converter():
    """Every key diffusers' convert_ldm_unet_checkpoint produces is mapped back to the tensor it came from."""
    from tests.test_unet import SD1_TINY, SDXL_TINY, diffusers_config, to_diffusers_layout  # imports diffusers

    for config in (SD1_TINY, SDXL_TINY, UNetConfig.sd15(), UNetConfig.sdxl(), UNetConfig.sdxl_refiner()):
        keys = list(unet_shapes(config))
        tagged = {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}
        converted = to_diffusers_layout(tagged, diffusers_config(config))
        names = diffusers_unet_names(config)
        assert set(converted) <= set(names)
        assert all(keys[int(tensor.flatten()[0])] == names[key] for key, tensor in converted.items())


def write_example_lora(path, checkpoint_sd, rank=4, seed=0):
    """A kohya LoRA for a checkpoint's every attention projection and CLIP attention (for example workflows)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in checkpoint_sd.items():
        for prefix, kohya in ((UNET, "lora_unet_"), (CLIP_L, "lora_te_")):
            if key.startswith(prefix) and key.endswith(("to_q.weight", "to_v.weight", "q_proj.weight")):
                name = kohya + key[len(prefix):-len(".weight")].replace(".", "_")
                out_dim, in_dim = value.shape[:2]
                tensors.update(kohya_lora(name, torch.randn(out_dim, rank, generator=g) * 0.1,
                                          torch.randn(rank, in_dim, generator=g) * 0.1, float(rank)))
    save_file(tensors, str(path))


def test_lora_workflow_runs_end_to_end(registry, loom_paths):
    memory.configure("cpu", "fp32")
    graph = load_workflow(WORKFLOW, registry).graph
    [ckpt_node] = [n for n in graph.nodes.values() if n.type == "CheckpointLoaderSimple"]
    [lora_node] = [n for n in graph.nodes.values() if n.type == "LoraLoader"]
    for kind in ("checkpoints", "loras"):
        (loom_paths.base / "models" / kind).mkdir(parents=True)
    sd = make_checkpoint(loom_paths.base / "models" / "checkpoints" / ckpt_node.values["ckpt_name"], "sd1")
    write_example_lora(loom_paths.base / "models" / "loras" / lora_node.values["lora_name"], sd)
    for node in graph.nodes.values():
        for key, value in SMALL.get(node.type, {}).items():
            graph.set_value(node.id, key, value)
    texts = []
    result = Executor(registry, paths=loom_paths).run(
        graph, on_event=lambda e: texts.append(e.text) if isinstance(e, ev.NodeProgress) and e.text else None)
    assert result.ok, (result.problems, result.error)
    assert not [t for t in texts if "LoRA" in t]  # every key matched
    saved = [image for ui in result.ui.values() for image in ui.get("images", [])]
    assert saved and all(Path(image["path"]).is_file() for image in saved)
    memory.model_manager().clear()
