"""Textual-inversion embeddings: every file format, ComfyUI's name lookup, and `embedding:name` in a prompt
giving exactly the conditioning its vectors dictate."""
import pytest
import torch
from safetensors.torch import save_file

from engine import memory
from engine.loading.checkpoint import load_checkpoint
from engine.loading.embeddings import EmbeddingLibrary
from tests.sd_fixtures import make_checkpoint


@pytest.fixture
def folder(loom_paths):
    path = loom_paths.base / "models" / "embeddings"
    path.mkdir(parents=True)
    return path


def test_every_file_format_and_name_lookup(folder, loom_paths):
    torch.manual_seed(0)
    a1111, emb, l, g, token, deep = (torch.randn(n, 64) for n in (2, 3, 1, 1, 1, 4))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": a1111}, "name": "a1111", "step": 500},
               folder / "a1111.pt")
    save_file({"emb_params": emb}, str(folder / "emb.safetensors"))
    save_file({"clip_g": g, "clip_l": l}, str(folder / "xl.safetensors"))
    torch.save({"<cat-toy>": token[0]}, folder / "toy.bin")
    (folder / "styles").mkdir()
    torch.save([{"v": deep}, {"other": torch.randn(2, 32)}], folder / "styles" / "deep.pt")
    library = EmbeddingLibrary(loom_paths)

    assert torch.equal(library("a1111"), a1111) and torch.equal(library("a1111.pt"), a1111)
    assert torch.equal(library("emb"), emb) and torch.equal(library("emb", "clip_g", 1280), emb)
    assert torch.equal(library("xl", "clip_l", 64), l) and torch.equal(library("xl", "clip_g", 64), g)
    assert torch.equal(library("toy"), token[0])
    assert torch.equal(library("deep", "clip_l", 64), deep)  # found in a subfolder; list entries of this width
    assert torch.equal(library("styles/deep.pt", "clip_l", 64), deep)
    assert library("missing") is None and library("../a1111") is None


def test_pickled_code_is_refused_not_run(folder, loom_paths, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"emb_params": Evil()}, folder / "evil.pt")
    assert EmbeddingLibrary(loom_paths)("evil") is None
    assert "ran" not in capsys.readouterr().out


def token_rows(clip, encoder_index, text):
    """The token-embedding rows of `text` in one encoder: an embedding made of them must act like the text."""
    spec, encoder = clip.encoders[encoder_index]
    ids = clip.tokenizer.encode(text)
    return encoder.network().text_model.embeddings.token_embedding.weight[ids].detach().clone()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_embedding_in_a_prompt_gives_exactly_the_conditioning_of_its_vectors(folder, loom_paths, family):
    memory.configure("cpu", "fp32")
    make_checkpoint(loom_paths.base / "tiny.safetensors", family)
    clip = load_checkpoint(loom_paths.base / "tiny.safetensors").clip
    if family == "sd1":
        save_file({"emb_params": token_rows(clip, 0, "red circle")}, str(folder / "rc.safetensors"))
    else:  # SDXL files hold one set per encoder; both tiny encoders are 64 wide, so only the key routes them
        save_file({"clip_l": token_rows(clip, 0, "red circle"), "clip_g": token_rows(clip, 1, "red circle")},
                  str(folder / "rc.safetensors"))
    for with_embedding, plain in (("a embedding:rc cat", "a red circle cat"),
                                  ("a (embedding:rc:1.3) cat", "a (red circle:1.3) cat")):
        cond, pooled = clip.encode(with_embedding)
        expected_cond, expected_pooled = clip.encode(plain)
        assert torch.equal(cond, expected_cond) and torch.equal(pooled, expected_pooled)
    assert not torch.equal(clip.encode("a embedding:rc cat")[0], clip.encode("a cat")[0])
    memory.model_manager().clear()
