"""Single-file checkpoints: family detection from layout, lazy loading, text encoding, VAE round trip."""
import pytest
import torch

from engine import memory
from engine.loading.checkpoint import load_checkpoint, load_vae_file
from engine.loading.files import WeightsFileError
from engine.models.clip import CLIPTextModel
from engine.models.vae import AutoencoderKL
from tests.sd_fixtures import TINY_CLIP, TINY_VAE, make_checkpoint


@pytest.fixture(autouse=True)
def fp32_cpu():
    memory.configure("cpu", "fp32")
    memory.model_manager().clear()
    yield
    memory.model_manager().clear()


@pytest.mark.parametrize("family,context,pooled", [("sd1", 64, 64), ("sd2", 64, 64), ("sdxl", 128, 64)])
def test_family_detected_from_layout_and_prompt_encodes(tmp_path, family, context, pooled):
    make_checkpoint(tmp_path / "anything.safetensors", family)
    ckpt = load_checkpoint(tmp_path / "anything.safetensors")
    assert ckpt.family == family
    assert ckpt.model.prediction_type == "eps"
    assert memory.model_manager().bytes == 0  # nothing read yet: networks load on first use
    cond, pool = ckpt.clip.encode("a red circle")
    assert cond.shape == (1, 77, context) and pool.shape == (1, pooled)
    other, _ = ckpt.clip.encode("a blue square")
    assert not torch.allclose(cond, other)
    long, _ = ckpt.clip.encode("word " * 100)
    assert long.shape == (1, 154, context)


def test_sd1_text_encoder_matches_the_network_run_directly(tmp_path):
    sd = make_checkpoint(tmp_path / "m.safetensors", "sd1")
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    with torch.device("meta"):
        clip = CLIPTextModel(TINY_CLIP)
    clip.load_state_dict({k[len("cond_stage_model.transformer."):]: v for k, v in sd.items()
                          if k.startswith("cond_stage_model.transformer.")}, assign=True)
    ids = ckpt.clip.tokenizer.encode("a red circle")
    tokens = torch.tensor([[49406, *ids, 49407] + [49407] * (75 - len(ids))])
    expected, _ = clip.encode(tokens)
    got, _ = ckpt.clip.encode("a red circle")
    assert torch.allclose(got, expected, atol=1e-6)
    skip2, _ = ckpt.clip.set_last_layer(-2).encode("a red circle")
    assert torch.allclose(skip2, clip.encode(tokens, layer=-2)[0], atol=1e-6)


def test_prompt_weights_interpolate_towards_the_empty_prompt(tmp_path):
    make_checkpoint(tmp_path / "m.safetensors", "sd1")
    clip = load_checkpoint(tmp_path / "m.safetensors").clip
    plain, _ = clip.encode("red circle")
    weighted, _ = clip.encode("(red:1.5) circle")
    empty, _ = clip.encode("")
    # token 1 ("red") is moved away from the empty prompt's token 1 by 1.5x; "circle" is unchanged
    assert torch.allclose(weighted[0, 1], (plain[0, 1] - empty[0, 1]) * 1.5 + empty[0, 1], atol=1e-5)
    assert torch.allclose(weighted[0, 2], plain[0, 2], atol=1e-6)


def test_vae_round_trip_shapes_and_standalone_file(tmp_path):
    sd = make_checkpoint(tmp_path / "m.safetensors", "sd1")
    vae = load_checkpoint(tmp_path / "m.safetensors").vae
    image = torch.rand(1, 35, 42, 3)
    latent = vae.encode(image)
    assert latent.shape == (1, 4, 4, 5)  # cropped to multiples of 8
    pixels = vae.decode(latent)
    assert pixels.shape == (1, 32, 40, 3) and 0 <= pixels.min() and pixels.max() <= 1
    from safetensors.torch import save_file
    save_file({k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")},
              str(tmp_path / "vae.safetensors"))
    standalone = load_vae_file(tmp_path / "vae.safetensors")
    assert torch.allclose(standalone.decode(latent), pixels, atol=1e-6)


def test_vae_tiled_decode_close_to_whole(tmp_path):
    make_checkpoint(tmp_path / "m.safetensors", "sd1")
    vae = load_checkpoint(tmp_path / "m.safetensors").vae
    latent = torch.randn(1, 4, 24, 24)
    whole = vae.decode(latent)
    tiled = vae.decode_tiled(latent, tile_px=128, overlap_px=64)
    unrelated = vae.decode(torch.randn(1, 4, 24, 24))
    assert tiled.shape == whole.shape
    # tiles see less context (the VAE's middle attention is global) but stay close to the whole decode
    assert (tiled - whole).abs().mean() < 0.25 * (unrelated - whole).abs().mean()


def test_tiled_map_is_exact_for_pointwise_functions():
    from engine.tiling import tiled_map
    x = torch.randn(2, 3, 37, 29)
    up = tiled_map(lambda t: torch.nn.functional.interpolate(t, scale_factor=2), x, 10, 4, 2, 3)
    assert torch.allclose(up, torch.nn.functional.interpolate(x, scale_factor=2), atol=1e-6)


def test_vae_falls_back_to_tiles_on_out_of_memory(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "m.safetensors", "sd1")
    vae = load_checkpoint(tmp_path / "m.safetensors").vae
    real_decode = AutoencoderKL.decode

    def decode_small_only(self, z):
        if z.shape[-1] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_decode(self, z)

    monkeypatch.setattr(AutoencoderKL, "decode", decode_small_only)
    messages = []
    pixels = vae.decode(torch.randn(1, 4, 16, 16), report=messages.append)
    assert pixels.shape == (1, 128, 128, 3)
    assert messages and "tiles" in messages[0]


def test_models_are_shared_and_evicted_under_budget(tmp_path):
    make_checkpoint(tmp_path / "a.safetensors", "sd1", seed=1)
    make_checkpoint(tmp_path / "b.safetensors", "sd1", seed=2)
    manager = memory.model_manager()
    a = load_checkpoint(tmp_path / "a.safetensors")
    a.model.network()
    loads = manager.loads
    load_checkpoint(tmp_path / "a.safetensors").model.network()  # same file: no reload
    assert manager.loads == loads
    unet_bytes = manager.bytes
    manager.budget_bytes = int(unet_bytes * 1.5)
    load_checkpoint(tmp_path / "b.safetensors").model.network()
    assert manager.bytes <= manager.budget_bytes
    assert any("unloaded a.safetensors:unet" in line for line in manager.log)
    a.model.network()  # still usable: reloaded from its file
    assert manager.loads == loads + 2


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    with torch.device("meta"):
        vae = AutoencoderKL(TINY_VAE)
    save_file({k: torch.zeros(v.shape) for k, v in vae.state_dict().items()}, str(tmp_path / "vae_only.safetensors"))
    with pytest.raises(WeightsFileError, match="not a Stable Diffusion checkpoint.*top-level keys found: decoder"):
        load_checkpoint(tmp_path / "vae_only.safetensors")


def test_a_cold_run_builds_its_networks_without_random_init_or_the_compiler(tmp_path):
    """Networks are built on the meta device and filled from the file. Their initialisers used to run there too:
    nn.Embedding's meta normal_ imported torch._dynamo, about 2 s of the README command's first text encode."""
    import subprocess
    import sys
    path = tmp_path / "tiny.safetensors"
    make_checkpoint(path, "sd1")
    script = (f"import sys\nfrom engine.loading.checkpoint import load_checkpoint\nck = load_checkpoint({str(path)!r})\n"
              "ck.clip.encode('a red circle')\nck.vae.ref.get()\nck.model.unet.get()\n"
              "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_meta_builds_skip_initialisers_only_inside_and_only_on_their_thread():
    import threading

    from engine.models.meta import meta_device
    elsewhere = {}

    def build_on_cpu():
        with torch.device("cpu"):
            elsewhere["weight"] = torch.nn.Embedding(1000, 8).weight.detach()

    with meta_device():
        built = torch.nn.Embedding(1000, 8)
        thread = threading.Thread(target=build_on_cpu)
        thread.start()
        thread.join()
    assert built.weight.device.type == "meta"
    assert 0.9 < elsewhere["weight"].std() < 1.1  # another thread's module is initialised as usual
    assert 0.9 < torch.nn.Embedding(1000, 8).weight.std() < 1.1  # and so is one built afterwards
