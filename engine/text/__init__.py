"""Text side of the CLIP encoders: the BPE tokenizer and ComfyUI's prompt syntax."""

from engine.text.prompt import EmbeddingToken, parse_weights, tokenize_with_weights
from engine.text.tokenizer import CLIPTokenizer

__all__ = ["CLIPTokenizer", "EmbeddingToken", "parse_weights", "tokenize_with_weights"]
