"""Weight files: lazy safetensors, safe pickles, clear errors for bad files."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from engine.loading.files import WeightsFileError, load_into, load_state_dict


class Boom:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/loom_pwned",))


def small_model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4))


def test_safetensors_lazy_prefix_views_and_load_into_meta_module(tmp_path):
    model = small_model()
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd["other.bias"] = torch.zeros(2)
    save_file(sd, tmp_path / "m.safetensors", metadata={"modelspec.title": "tiny"})
    loaded = load_state_dict(tmp_path / "m.safetensors")
    assert loaded.metadata["modelspec.title"] == "tiny"
    assert loaded.shape("model.0.weight") == (4, 3)
    view = loaded.view("model.")
    assert sorted(view) == sorted(model.state_dict())
    with torch.device("meta"):
        fresh = small_model()
    load_into(fresh, view, dtype=torch.bfloat16)
    assert fresh[0].weight.dtype == torch.bfloat16 and fresh[0].weight.device.type == "cpu"
    assert torch.equal(fresh[0].weight.float(), model[0].weight.bfloat16().float())
    x = torch.randn(2, 3)
    assert torch.allclose(fresh.float()(x), model(x), atol=3e-2)


def test_key_and_shape_mismatches_are_named(tmp_path):
    with torch.device("meta"):
        target = small_model()
    with pytest.raises(WeightsFileError, match="1 weights missing.*0.bias"):
        load_into(target, {k: v for k, v in small_model().state_dict().items() if k != "0.bias"})
    bad = small_model().state_dict()
    bad["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(WeightsFileError, match=r"0.weight has shape \(5, 3\), expected \(4, 3\)"):
        load_into(target, bad)


def test_plain_ckpt_loads_and_lightning_nesting_is_unwrapped(tmp_path):
    sd = small_model().state_dict()
    torch.save({"state_dict": sd, "global_step": 5}, tmp_path / "m.ckpt")
    loaded = load_state_dict(tmp_path / "m.ckpt")
    assert sorted(loaded) == sorted(sd)
    assert torch.equal(loaded["0.weight"], sd["0.weight"])


@pytest.mark.parametrize("wrap", ["params_ema", "params", "anything"])
def test_basicsr_style_nesting_is_unwrapped(tmp_path, wrap):
    sd = small_model().state_dict()
    torch.save({wrap: sd}, tmp_path / "m.pth")
    assert sorted(load_state_dict(tmp_path / "m.pth")) == sorted(sd)


def test_pickled_code_is_refused_never_run(tmp_path):
    if os.path.exists("/tmp/loom_pwned"):
        os.remove("/tmp/loom_pwned")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Boom()}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsFileError, match="refuses to load"):
        load_state_dict(tmp_path / "evil.ckpt")
    with open(tmp_path / "evil_legacy.pt", "wb") as fh:
        pickle.dump({"w": Boom()}, fh)
    with pytest.raises(WeightsFileError):
        load_state_dict(tmp_path / "evil_legacy.pt")
    assert not os.path.exists("/tmp/loom_pwned")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage that is not a header", None])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    if content is None:  # a real file cut in half
        save_file({"w": torch.randn(64, 64)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsFileError, match="bad.safetensors"):
        load_state_dict(path)
    with pytest.raises(WeightsFileError, match="bad.ckpt"):
        (tmp_path / "bad.ckpt").write_bytes(content or b"PK\x03\x04broken")
        load_state_dict(tmp_path / "bad.ckpt")
