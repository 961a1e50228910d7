"""CLIP's byte-level BPE tokenizer (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision"), written to give the same ids as transformers' `CLIPTokenizer`
loaded from Stable Diffusion's vocab.json/merges.txt, which is what ComfyUI tokenizes with.

The steps, in the order the reference runs them:
1. literal `<|startoftext|>` / `<|endoftext|>` in the raw text become their special ids (case-sensitive);
2. each remaining stretch is normalised: Unicode NFC, every whitespace run -> one space, lowercase;
3. it is cut into words with CLIP's pattern: contractions, letter runs, single numeric characters,
   runs of anything else; whitespace is dropped;
4. each word's UTF-8 bytes are mapped to printable characters (GPT-2's byte table), the last one
   tagged `</w>`, and merged pair by pair, lowest merge rank first.

Which reference: ComfyUI requires transformers >= 4.50.3 and calls `CLIPTokenizer`. From
transformers 5 that class is the tokenizers-backed one (the old `CLIPTokenizerFast`), which is what we
match, and what tests/test_tokenizer.py checks. Known differences from other CLIP tokenizers:
- open_clip's `SimpleTokenizer` runs ftfy and html unescaping and uses `str.split`/`str.lower`: it
  differs on `&amp;`, curly quotes, ligatures, control characters, U+001C..U+001F, a word-final `Σ`.
- transformers 4's slow `CLIPTokenizer` (per its source; not installed here) uses ftfy when present,
  else BERT's BasicTokenizer, which also puts spaces around CJK ideographs and drops control
  characters. ComfyUI users on transformers 4 get those ids; we do not follow them.
- Letters and numbers are Unicode general categories L* and N*, from Python's `unicodedata`; the
  reference uses its regex engine's Unicode tables. They differ only on code points one of the two
  Unicode versions has not assigned (Python 3.11 has Unicode 14).
"""

import functools
import gzip
import re
import unicodedata
from pathlib import Path

VOCAB_PATH = Path(__file__).resolve().parents[2] / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 48894  # 49408 ids = 256 bytes + 256 bytes</w> + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"

# Unicode White_Space, which is what `\s` means to the reference's regex engine. Python's `\s` also
# matches U+001C..U+001F; the reference keeps those as ordinary characters.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters: bytes that are
    printable Latin-1 map to themselves, the others to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    unprintable = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(unprintable)})
    return table


@functools.cache
def word_pattern() -> re.Pattern:
    """CLIP's word pattern `'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+` in the stdlib `re`
    dialect. Python's `\\w` is exactly categories L*, N* and `_`, and `\\d` is Nd, so only the
    non-decimal numbers (Nl, No: `²`, `½`, `Ⅻ`) need listing by hand.

    CLIP's pattern also lists `<|startoftext|>` and `<|endoftext|>`, but in the reference that piece
    is split again into `<|`, `endoftext`, `|>` (the byte-level pre-tokenizer's own pattern), which is
    what leaving the alternative out gives. Literal special tokens are taken out before (`encode`)."""
    other_numbers = "".join(
        re.escape(c) for c in map(chr, range(0x110000))
        if c.isnumeric() and not c.isdecimal() and unicodedata.category(c)[0] == "N"
    )
    letter, number = rf"[^\W\d_{other_numbers}]", rf"[\d{other_numbers}]"
    other = rf"(?:[^\w{WHITESPACE}]|_)"
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d|{letter}+|{number}|{other}+")


_SPECIAL_SPLIT = re.compile(f"({re.escape(BOS)}|{re.escape(EOS)})")
_WHITESPACE_RUN = re.compile(f"[{WHITESPACE}]+")


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, then lowercase one character at a time (so a final `Σ`
    becomes `σ`, not the `ς` that `str.lower` would give)."""
    text = _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(c.lower() for c in text)


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by its concatenation."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class CLIPTokenizer:
    """Text -> CLIP token ids. `encode` adds no start/end tokens; `bos_id`/`eos_id` are those tokens."""

    def __init__(self, merges: list[tuple[str, str]]):
        self.byte_encoder = bytes_to_unicode()
        byte_chars = list(self.byte_encoder.values())
        self.vocab = [*byte_chars, *(c + END_OF_WORD for c in byte_chars), *("".join(m) for m in merges), BOS, EOS]
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.bos_id, self.eos_id = self.ids[BOS], self.ids[EOS]
        self.bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe)

    @classmethod
    def from_file(cls, path: Path | str = VOCAB_PATH) -> "CLIPTokenizer":
        """Load CLIP's gzipped merges list: a header line, then one `a b` merge per line."""
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        return cls([tuple(line.split()) for line in lines[1 : N_MERGES + 1]])

    @classmethod
    @functools.cache
    def default(cls) -> "CLIPTokenizer":
        """The tokenizer of every CLIP text encoder SD1/SD2/SDXL use, loaded once per process."""
        return cls.from_file(VOCAB_PATH)

    def __len__(self) -> int:
        return len(self.vocab)

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Byte-encoded word -> vocabulary tokens, merging the lowest-ranked adjacent pair each round."""
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            symbols = merge_pair(symbols, pair)
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        """Text -> ids without start/end tokens (ComfyUI's `tokenizer(text)["input_ids"][1:-1]`)."""
        ids = []
        for piece in _SPECIAL_SPLIT.split(text):
            if piece in (BOS, EOS):
                ids.append(self.ids[piece])
                continue
            for word in word_pattern().findall(normalize(piece)):
                byte_word = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                ids.extend(self.ids[token] for token in self.bpe(byte_word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, `</w>` read as a space; invalid UTF-8 (a split character) becomes U+FFFD."""
        byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        chars = "".join(self.vocab[i] for i in ids).replace(END_OF_WORD, self.byte_encoder[ord(" ")])
        return bytes(byte_decoder[c] for c in chars).decode("utf-8", errors="replace").strip()
