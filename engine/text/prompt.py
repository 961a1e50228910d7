"""ComfyUI's prompt syntax and its packing of tokens into 77-token chunks for CLIP text encoders.

Facts from ComfyUI's `comfy/sd1_clip.py` (`token_weights`, `parse_parentheses`, `escape_important`,
`SDTokenizer.tokenize_with_weights`, `_try_get_embedding`); the code is our own.

Syntax: `(text)` multiplies the weight of `text` by 1.1 per level of nesting; `(text:w)` gives the
group weight `w` instead of 1.1 x the outer weight (an explicit weight is not multiplied by the
outer ones); `\\(` and `\\)` are literal parentheses. `[text]` is plain text, as in ComfyUI;
`a1111_brackets=True` makes it A1111's de-emphasis, x 1/1.1 per level.

Tokens: every weighted segment is tokenized as a whole (ComfyUI no longer splits on spaces), except
that it is cut before each `embedding:` that follows whitespace. Each piece is one token group; a
group that does not fit the current chunk moves whole to the next chunk, unless it has 8 tokens or
more, then it fills the chunk and continues in the next one.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from engine.text.tokenizer import CLIPTokenizer

log = logging.getLogger(__name__)

EMPHASIS = 1.1  # `(text)`
DEEMPHASIS = 1 / 1.1  # A1111's `[text]`
EMBEDDING_PREFIX = "embedding:"
MAX_WORD_LENGTH = 8  # token groups at least this long may be split across chunks

# Escaped brackets are hidden as control pairs while the groups are parsed.
PAREN_ESCAPES = {"\\)": "\0\1", "\\(": "\0\2"}
BRACKET_ESCAPES = {"\\]": "\0\3", "\\[": "\0\4"}


@dataclass(frozen=True, eq=False)
class EmbeddingToken:
    """One vector of a textual-inversion embedding. It stands in a chunk where a token id would
    stand; the text encoder uses `vector` in place of that position's token embedding."""

    name: str
    vector: "torch.Tensor"  # [width] of the text encoder it was trained for


Token = int | EmbeddingToken
Tokens = list[tuple[Token, float]]  # a token group, or a chunk


def escape(text: str, brackets: bool) -> str:
    for literal, hidden in (PAREN_ESCAPES | BRACKET_ESCAPES if brackets else PAREN_ESCAPES).items():
        text = text.replace(literal, hidden)
    return text


def unescape(text: str) -> str:
    for literal, hidden in (PAREN_ESCAPES | BRACKET_ESCAPES).items():
        text = text.replace(hidden, literal[1])
    return text


def split_groups(text: str, brackets: bool) -> list[str]:
    """Split text into top-level bracket groups and the plain runs between them (ComfyUI's
    `parse_parentheses`). One depth counter serves all bracket kinds; a stray closing bracket sends
    it below zero, and brackets stay plain text until it is back to zero."""
    opening, closing = ("([", ")]") if brackets else ("(", ")")
    parts, current, depth = [], "", 0
    for char in text:
        if char in opening:
            if depth == 0 and current:
                parts.append(current)
                current = ""
            current += char
            depth += 1
        elif char in closing:
            depth -= 1
            current += char
            if depth == 0:
                parts.append(current)
                current = ""
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def group_weight(inner: str, weight: float) -> tuple[str, float]:
    """`text:w` -> (text, w) when w parses as a float and the colon is not the first character;
    otherwise the text unchanged with weight x 1.1."""
    colon = inner.rfind(":")
    if colon > 0:
        try:
            return inner[:colon], float(inner[colon + 1 :])
        except ValueError:
            pass
    return inner, weight * EMPHASIS


def weighted_segments(text: str, weight: float, brackets: bool) -> list[tuple[str, float]]:
    segments = []
    for part in split_groups(text, brackets):
        if len(part) >= 2 and part[0] + part[-1] == "()":
            segments += weighted_segments(*group_weight(part[1:-1], weight), brackets)
        elif brackets and len(part) >= 2 and part[0] + part[-1] == "[]":
            segments += weighted_segments(part[1:-1], weight * DEEMPHASIS, brackets)
        else:
            segments.append((part, weight))
    return segments


def parse_weights(text: str, *, a1111_brackets: bool = False) -> list[tuple[str, float]]:
    """Prompt -> [(text, weight)] in order, escapes resolved.

    >>> parse_weights("a (b:1.5) ((c)) \\\\(d\\\\)")
    [('a ', 1.0), ('b', 1.5), (' ', 1.0), ('c', 1.2100000000000002), (' (d)', 1.0)]
    """
    segments = weighted_segments(escape(text, a1111_brackets), 1.0, a1111_brackets)
    return [(unescape(segment), weight) for segment, weight in segments]


def split_at_embeddings(segment: str) -> list[str]:
    """Cut a segment before every `embedding:` that follows whitespace; drop empty pieces."""
    first, *rest = re.split(rf"(?<=\s){re.escape(EMBEDDING_PREFIX)}", segment)
    return [piece for piece in (first, *(EMBEDDING_PREFIX + r for r in rest)) if piece]


def look_up_embedding(text: str, embeddings: Callable) -> tuple[list[EmbeddingToken], str]:
    """`name rest...` after `embedding:` -> (the embedding's vectors, the text left to tokenize).

    The name is the first whitespace-separated word, cut before any `<` or `[`. If it is not found
    and has commas around it, the name without them is tried and the commas go back to the text.
    An unknown name is dropped with a warning, as ComfyUI does.
    """
    words = text.split()
    name, rest = (words[0], " ".join(words[1:])) if words else ("", "")
    if cut := re.search(r"[<\[]", name):
        rest = name[cut.start() :] + (" " + rest if rest else "")
        name = name[: cut.start()]
    vectors = embeddings(name) if name else None
    stripped = name.strip(",")
    if vectors is None and len(stripped) < len(name):
        vectors = embeddings(stripped)
        rest = f"{name[len(stripped):]} {rest}"  # ComfyUI's rule, meant for trailing commas
    if vectors is None:
        log.warning("embedding:%s does not exist, ignoring it", name)
        return [], rest
    rows = [vectors] if vectors.ndim == 1 else list(vectors)
    return [EmbeddingToken(name, row) for row in rows], rest


def token_groups(segment: str, weight: float, tokenizer: "CLIPTokenizer", embeddings: Callable | None) -> list[Tokens]:
    """One weighted segment -> its token groups, each [(token, weight)]."""
    groups = []
    for piece in split_at_embeddings(segment):
        if embeddings is not None and piece.startswith(EMBEDDING_PREFIX):
            vectors, piece = look_up_embedding(piece[len(EMBEDDING_PREFIX) :].strip("\n"), embeddings)
            if vectors:
                groups.append([(v, weight) for v in vectors])
            if not piece:
                continue
        groups.append([(t, weight) for t in tokenizer.encode(piece)])
    return groups


def pack_chunks(groups: list[Tokens], *, bos: int, eos: int, pad_token: int, max_length: int,
                min_length: int | None, pad_to_max_length: bool) -> list[Tokens]:
    """Token groups -> chunks of `bos`, up to max_length - 2 tokens, `eos`, then padding.

    A chunk is closed when the next group does not fit: a group shorter than MAX_WORD_LENGTH moves
    whole to a new chunk (the closed one is padded to max_length if pad_to_max_length); a longer one
    fills the chunk to max_length and continues in the next. The last chunk is padded to max_length
    (if pad_to_max_length) and to min_length.
    """
    chunk = [(bos, 1.0)]
    chunks = [chunk]
    for group in groups:
        splittable = len(group) >= MAX_WORD_LENGTH
        while len(group) > max_length - 1 - len(chunk):
            room = max_length - 1 - len(chunk)
            if splittable:
                chunk += group[:room]
                group = group[room:]
            chunk.append((eos, 1.0))
            if not splittable and pad_to_max_length:
                chunk += [(pad_token, 1.0)] * room
            chunk = [(bos, 1.0)]
            chunks.append(chunk)
        chunk += group
    chunk.append((eos, 1.0))
    length = max(max_length if pad_to_max_length else 0, min_length or 0)
    chunk += [(pad_token, 1.0)] * (length - len(chunk))
    return chunks


def tokenize_with_weights(text: str, tokenizer: "CLIPTokenizer", *, pad_token: int, max_length: int = 77,
                          min_length: int | None = None, pad_to_max_length: bool = True,
                          embeddings: Callable[[str], "torch.Tensor | None"] | None = None,
                          a1111_brackets: bool = False) -> list[Tokens]:
    """Prompt -> chunks of (token, weight), each `max_length` long with ComfyUI's SD1/SD2/SDXL defaults.

    pad_token: 49407 (`<|endoftext|>`) for SD1's CLIP-L and SDXL's CLIP-L; 0 for SD2's OpenCLIP-H
    and SDXL's CLIP-G. `embeddings(name)` returns a [width] or [n, width] tensor, or None for an
    unknown name; with `embeddings=None`, `embedding:name` is ordinary text. The empty prompt gives
    one chunk: bos, eos, padding.
    """
    if max_length < MAX_WORD_LENGTH + 2:
        raise ValueError(f"max_length must be at least {MAX_WORD_LENGTH + 2}, got {max_length}")
    groups = [
        group
        for segment, weight in parse_weights(text, a1111_brackets=a1111_brackets)
        for group in token_groups(segment, weight, tokenizer, embeddings)
    ]
    return pack_chunks(groups, bos=tokenizer.bos_id, eos=tokenizer.eos_id, pad_token=pad_token,
                       max_length=max_length, min_length=min_length, pad_to_max_length=pad_to_max_length)
