"""engine.text.tokenizer against transformers' CLIPTokenizer (what ComfyUI tokenizes with), built from
vocab.json/merges.txt derived from the same merges file, and against open_clip's SimpleTokenizer."""

import gzip
import json
import random
import unicodedata

import pytest
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer as HFCLIPTokenizer

from engine.text.tokenizer import N_MERGES, VOCAB_PATH, CLIPTokenizer, bytes_to_unicode, word_pattern

STRINGS = [
    "",
    " ",
    "a photo of a cat",
    "masterpiece, best quality, 1girl, (red hair:1.2), looking at viewer",
    "Hello, World!!! ... ?!",
    "don't it's we're they've I'm you'll he'd DON'T IT'S",
    "''s !'s 's 'S 'x ' '",
    "rock'n'roll o'clock",
    "1234567890 3.14159 1,000,000 -5 +7 50% #1 $9.99",
    "café crème brûlée naïve Über straße ÆØÅ",
    "e\u0301 vs \u00e9 (NFC)",
    "ΟΔΟΣ Σ σς ΣΑΣ",
    "Привет, мир",
    "東京タワー 北京 서울 日本語の文章です",
    "😀 😀😀 👍🏽 👨‍👩‍👧 🇯🇵",
    "multiple    spaces\tand\ttabs",
    "line one\nline two\r\nline three\n\n\n",
    "  leading and trailing  ",
    "\u00a0no-break\u3000ideographic\u2003em\u200bzero-width\u2028ls",
    "a\x1cb\x1dc\x1ed\x1ff",
    "control\x00\x07\x7f chars",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 4,
    "x" * 300,
    "supercalifragilisticexpialidocious-antidisestablishmentarianism_and_more",
    "snake_case_words and-kebab-case and CamelCaseWords",
    "² ½ Ⅻ ① ٣ ߁ 𝟙 ⅷ",
    "<lora:foo:0.8> [a|b] {x} @user ~tilde `tick` ^caret",
    "a<|endoftext|>b <|startoftext|> <|ENDOFTEXT|> <|EndOfText|>",
    "html &amp; &lt;b&gt; entities",
    "“curly” ‘quotes’ don’t — em–dash … ellipsis",
    "İstanbul ǅ ß ﬁ ﬀ",
    "\ufffd \ufeffbom \U0001d400\U0001d401",
]


def write_reference_files(directory):
    """vocab.json and merges.txt as in SD's tokenizer folder, derived from the merges file."""
    lines = gzip.open(VOCAB_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd1_tokenizer")
    write_reference_files(directory)
    return HFCLIPTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.default()


def reference_ids(hf, texts):
    """ComfyUI's `tokenizer(text)["input_ids"][1:-1]`: the ids without start and end."""
    return [ids[1:-1] for ids in hf(texts)["input_ids"]]


def test_vocabulary(tok, hf):
    assert len(tok) == len(hf) == 49408
    assert (tok.bos_id, tok.eos_id) == (49406, 49407)
    assert tok.vocab == hf.convert_ids_to_tokens(list(range(49408)))
    assert CLIPTokenizer.default() is tok


def test_known_ids(tok):
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok.encode("") == []
    assert tok.encode("<|endoftext|>") == [49407]


def test_strings_match_transformers(tok, hf):
    for text, expected in zip(STRINGS, reference_ids(hf, STRINGS)):
        assert tok.encode(text) == expected, text


def test_code_points_match_transformers(tok, hf):
    """A spread of assigned code points (every Latin-1 one, then every 19th), each in letter, number,
    apostrophe and repeated contexts, so category, whitespace and lowercase handling all show."""
    points = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"]
    points = [c for c in points if c < 0x100 or c % 19 == 0]
    texts = [f"a{c}b {c}{c}1{c}Z{c.upper()} '{c}s" for c in map(chr, points)]
    mismatched = [t for t, ids in zip(texts, reference_ids(hf, texts)) if tok.encode(t) != ids]
    assert mismatched == []


def test_random_text_matches_transformers(tok, hf):
    rng = random.Random(0)
    alphabet = [*"abcXYZ '.,!?()[]:;-_019éüßΣç東😀\n\t\u00a0\u0301", "'s", "'ll", "n't", "<|endoftext|>", "&amp;"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(3000)]
    for text, expected in zip(texts, reference_ids(hf, texts)):
        assert tok.encode(text) == expected, text


def test_word_pattern_follows_unicode_categories():
    """Every code point on its own is one letter word, one number word, one other word, or nothing
    (whitespace), by its general category."""
    pattern = word_pattern()
    whitespace = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | set(map(chr, range(0x2000, 0x200B)))
    for c in map(chr, range(0x110000)):
        if 0xD800 <= ord(c) < 0xE000 or c in "'":
            continue
        expected = [] if c in whitespace else [c]
        assert pattern.findall(c) == expected, hex(ord(c))
    assert pattern.findall("ab1²x_y!?") == ["ab", "1", "²", "x", "_", "y", "!?"]


def open_clip_ids(texts):
    oc = SimpleTokenizer()
    return [oc.encode(t) for t in texts]


# Strings of STRINGS where open_clip differs, and why (transformers agrees with us on all of them).
OPEN_CLIP_DIFFERS = {
    "ΟΔΟΣ Σ σς ΣΑΣ": "str.lower gives a word-final sigma 'ς'; the reference lowercases per character",
    "a\x1cb\x1dc\x1ed\x1ff": "ftfy drops these control characters",
    "control\x00\x07\x7f chars": "ftfy drops control characters",
    "a<|endoftext|>b <|startoftext|> <|ENDOFTEXT|> <|EndOfText|>": "open_clip's specials are <start_of_text>",
    "html &amp; &lt;b&gt; entities": "open_clip unescapes html twice",
    "“curly” ‘quotes’ don’t — em–dash … ellipsis": "ftfy uncurls quotes",
    "İstanbul ǅ ß ﬁ ﬀ": "ftfy expands ligatures",
    "\ufffd \ufeffbom \U0001d400\U0001d401": "ftfy drops the byte-order mark",
}


def test_matches_open_clip_except_documented(tok, hf):
    assert set(OPEN_CLIP_DIFFERS) <= set(STRINGS)
    plain = [t for t in STRINGS if t not in OPEN_CLIP_DIFFERS]
    assert [tok.encode(t) for t in plain] == open_clip_ids(plain)
    differing = list(OPEN_CLIP_DIFFERS)
    ours = [tok.encode(t) for t in differing]
    assert ours == reference_ids(hf, differing)
    assert all(a != b for a, b in zip(ours, open_clip_ids(differing)))
    assert open_clip_ids(["don’t", "a &amp; b"]) == [tok.encode("don't"), tok.encode("a & b")]


def test_decode_round_trip(tok):
    assert tok.decode(tok.encode("A Photo of a CAT, 東京!")) == "a photo of a cat , 東京 !"
    assert tok.decode([49406, 320, 49407]) == "<|startoftext|>a <|endoftext|>"
