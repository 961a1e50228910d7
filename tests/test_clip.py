"""CLIP text encoder parity with transformers on the same weights, in both checkpoint layouts.

HF layout: our model vs transformers.CLIPTextModelWithProjection given the same state dict.
OpenCLIP layout: an OpenCLIP-named state dict is loaded by our converter and, independently, by
diffusers' `convert_open_clip_checkpoint` into transformers; the two must agree.
"""

import pytest
import torch
import transformers
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

from engine.models.clip import (
    CLIPTextConfig,
    CLIPTextModel,
    clip_state_dict,
    detect_clip_config,
    load_clip,
)

BOS, EOS = 49406, 49407
SMALL_L = CLIPTextConfig(width=64, layers=3, heads=4, mlp_width=256, activation="quick_gelu", projection_dim=48)
SMALL_G = CLIPTextConfig(width=64, layers=3, heads=4, mlp_width=256, activation="gelu", projection_dim=64)


def hf_model(c: CLIPTextConfig) -> transformers.CLIPTextModelWithProjection:
    config = transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.mlp_width,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, max_position_embeddings=c.max_positions,
        hidden_act=c.activation, projection_dim=c.projection_dim or c.width,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, attn_implementation="eager",
    )
    return transformers.CLIPTextModelWithProjection(config).eval()


def randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def prompts(pad: int) -> torch.Tensor:
    """Two 77-token prompts of different lengths, padded as SD1 (pad=EOS) or SD2/SDXL-G (pad=0)."""
    torch.manual_seed(3)
    rows = []
    for length in (5, 30):
        words = torch.randint(1, 49000, (length,)).tolist()
        row = [BOS, *words, EOS]
        rows.append(row + [pad] * (77 - len(row)))
    return torch.tensor(rows)


def open_clip_state_dict(c: CLIPTextConfig, seed: int = 0, device: str = "cpu") -> dict:
    """A random text tower named as OpenCLIP names it (on "meta": only names and shapes)."""
    torch.manual_seed(seed)
    w, m = c.width, c.mlp_width

    def rand(*shape):
        return torch.randn(*shape, device=device) * 0.1

    sd = {
        "token_embedding.weight": rand(c.vocab_size, w),
        "positional_embedding": rand(c.max_positions, w),
        "ln_final.weight": 1 + rand(w),
        "ln_final.bias": rand(w),
        "text_projection": rand(w, c.projection_dim),
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(c.layers):
        block = f"transformer.resblocks.{i}."
        sd |= {
            block + "ln_1.weight": 1 + rand(w), block + "ln_1.bias": rand(w),
            block + "attn.in_proj_weight": rand(3 * w, w), block + "attn.in_proj_bias": rand(3 * w),
            block + "attn.out_proj.weight": rand(w, w), block + "attn.out_proj.bias": rand(w),
            block + "ln_2.weight": 1 + rand(w), block + "ln_2.bias": rand(w),
            block + "mlp.c_fc.weight": rand(m, w), block + "mlp.c_fc.bias": rand(m),
            block + "mlp.c_proj.weight": rand(w, m), block + "mlp.c_proj.bias": rand(w),
        }
    return sd


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def assert_matches_hf(ours: CLIPTextModel, theirs, tokens: torch.Tensor, label: str) -> None:
    """Every layer (with and without the final norm), the last hidden state and the projected pooled."""
    out = theirs(input_ids=tokens, output_hidden_states=True)
    norm = theirs.text_model.final_layer_norm
    worst = 0.0
    for i in range(ours.config.layers):
        raw = out.hidden_states[i + 1]
        hidden, pooled = ours.encode(tokens, layer=i, final_layer_norm=False)
        normed, _ = ours.encode(tokens, layer=i)
        worst = max(worst, max_diff(hidden, raw), max_diff(normed, norm(raw)), max_diff(pooled, out.text_embeds))
    last, _ = ours.encode(tokens)
    worst = max(worst, max_diff(last, out.last_hidden_state))
    print(f"{label}: max abs diff {worst:.2e}")
    assert worst < 2e-5


@pytest.mark.parametrize("pad", [EOS, 0])
def test_hf_layout_matches_transformers(pad):
    theirs = hf_model(SMALL_L)
    randomize(theirs, seed=0)
    checkpoint = {f"cond_stage_model.transformer.{k}": v for k, v in theirs.state_dict().items()}
    assert detect_clip_config(checkpoint, "hf", "cond_stage_model.transformer.", head_dim=16) == SMALL_L
    ours = load_clip(checkpoint, "hf", "cond_stage_model.transformer.", config=SMALL_L)
    assert_matches_hf(ours, theirs, prompts(pad), f"HF layout, quick_gelu, pad={pad}")


def test_open_clip_layout_matches_diffusers_conversion():
    prefix = "conditioner.embedders.1.model."
    checkpoint = {prefix + k: v for k, v in open_clip_state_dict(SMALL_G, seed=1).items()}
    theirs = hf_model(SMALL_G)
    theirs.load_state_dict(convert_open_clip_checkpoint(theirs, checkpoint, prefix=prefix), strict=True)
    assert detect_clip_config(checkpoint, "open_clip", prefix, head_dim=16) == SMALL_G
    ours = load_clip(checkpoint, "open_clip", prefix, config=SMALL_G)
    assert_matches_hf(ours, theirs, prompts(0), "OpenCLIP layout, gelu, projected pooled")


@torch.no_grad()
def test_open_clip_projection_is_x_at_p():
    """OpenCLIP's pooled output is ln_final(x)[eos] @ text_projection."""
    sd = open_clip_state_dict(SMALL_G, seed=2)
    model = load_clip(sd, "open_clip", config=SMALL_G)
    tokens = prompts(0)
    _, pooled = model.encode(tokens)
    model.text_projection = None
    _, unprojected = model.encode(tokens)
    torch.testing.assert_close(pooled, unprojected @ sd["text_projection"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_layer_selection_and_pooled_position():
    model = CLIPTextModel(SMALL_L).eval()
    tokens = prompts(EOS)
    penultimate, pooled = model.encode(tokens, layer="penultimate", final_layer_norm=False)
    assert torch.equal(penultimate, model.encode(tokens, layer=-2, final_layer_norm=False)[0])
    assert torch.equal(penultimate, model.encode(tokens, layer=SMALL_L.layers - 2, final_layer_norm=False)[0])
    assert torch.equal(model.encode(tokens, layer="last")[0], model.encode(tokens)[0])
    assert not torch.allclose(penultimate, model.encode(tokens)[0])
    # The pooled output never depends on the chosen layer, and comes from the first end token.
    assert torch.equal(pooled, model.encode(tokens)[1])
    model.text_projection = None
    last, pooled = model.encode(tokens)
    torch.testing.assert_close(pooled, torch.stack([last[0, 6], last[1, 31]]))
    with pytest.raises(ValueError):
        model.encode(tokens, layer=SMALL_L.layers)


@torch.no_grad()
def test_input_embeds_replace_token_embeddings():
    """A textual-inversion vector equal to token t's embedding gives exactly the result of token t."""
    model = CLIPTextModel(SMALL_L).eval()
    tokens = prompts(EOS)
    embeds = model.embed_tokens(tokens)
    assert torch.equal(model.encode(tokens, input_embeds=embeds)[0], model.encode(tokens)[0])
    swapped = tokens.clone()
    swapped[0, 2:4] = torch.tensor([123, 456])
    embeds[0, 2:4] = model.embed_tokens(torch.tensor([123, 456]))
    hidden, pooled = model.encode(tokens, input_embeds=embeds)
    expected_hidden, expected_pooled = model.encode(swapped)
    assert torch.equal(hidden, expected_hidden) and torch.equal(pooled, expected_pooled)
    assert not torch.allclose(hidden, model.encode(tokens)[0])


def test_checkpoint_layouts_and_presets_are_detected():
    with torch.device("meta"):
        l_sd = CLIPTextModel(CLIPTextConfig.clip_l()).state_dict()
    # SD1 files: HF layout, no projection; some have position_ids and no `text_model.` level.
    sd1 = {f"cond_stage_model.transformer.{k}": v for k, v in l_sd.items()}
    sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(1, 77)
    assert detect_clip_config(sd1, "hf", "cond_stage_model.transformer.") == CLIPTextConfig.clip_l()
    old = {f"cond_stage_model.transformer.{k.removeprefix('text_model.')}": v for k, v in l_sd.items()}
    assert clip_state_dict(old, "hf", "cond_stage_model.transformer.").keys() == l_sd.keys()
    assert "text_model.encoder.layers.11.self_attn.q_proj.weight" in l_sd
    assert "text_model.encoder.layers.0.mlp.fc1.weight" in l_sd and "text_model.final_layer_norm.bias" in l_sd

    for preset, prefix in ((CLIPTextConfig.open_clip_h(), "cond_stage_model.model."),
                           (CLIPTextConfig.open_clip_bigg(), "conditioner.embedders.1.model.")):
        with torch.device("meta"):
            ours = CLIPTextModel(preset).state_dict()
            sd = {prefix + k: v for k, v in open_clip_state_dict(preset, device="meta").items()}
        assert detect_clip_config(sd, "open_clip", prefix) == preset
        converted = clip_state_dict(sd, "open_clip", prefix)
        assert converted.keys() == ours.keys()
        assert all(converted[k].shape == ours[k].shape for k in ours)
        # The same tower saved in the HF layout (e.g. a standalone clip_g file) is still gelu.
        assert detect_clip_config({"text_encoders.clip_g.transformer." + k: v for k, v in converted.items()},
                                  "hf", "text_encoders.clip_g.transformer.") == preset
