"""engine.text.prompt against expectations worked out by hand from ComfyUI's rules (comfy/sd1_clip.py:
token_weights, parse_parentheses, escape_important, SDTokenizer.tokenize_with_weights)."""

import logging

import pytest
import torch

from engine.text.prompt import EmbeddingToken, parse_weights, tokenize_with_weights
from engine.text.tokenizer import CLIPTokenizer

BOS, EOS = 49406, 49407
A, CAT, DOG, RED, BLUE, COMMA, X = 320, 2368, 1929, 736, 1746, 267, 343
ONE_TO_EIGHT = [637, 1237, 2097, 2721, 3127, 4093, 5757, 7910]  # "one two ... eight", one token each
SD1_PAD, SD2_PAD = 49407, 0


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.default()


def tokenize(text, tok, pad=SD1_PAD, **options):
    return tokenize_with_weights(text, tok, pad_token=pad, **options)


def ids(chunk):
    return [t for t, _ in chunk]


def weights(chunk):
    return [w for _, w in chunk]


def padded(tokens, pad=SD1_PAD, length=77):
    return tokens + [pad] * (length - len(tokens))


# ---- parse_weights ----

@pytest.mark.parametrize("text, expected", [
    # the examples in ComfyUI's token_weights docstring
    ("(foo)", [("foo", 1.1)]),
    ("(foo)(bar)", [("foo", 1.1), ("bar", 1.1)]),
    ("(foo:2.0)", [("foo", 2.0)]),
    ("((foo))", [("foo", 1.1 * 1.1)]),
    ("((foo):1.1)", [("foo", 1.1 * 1.1)]),
    ("((foo:1.1))", [("foo", 1.1)]),
    ("(foo:0.0)", [("foo", 0.0)]),
    ("((foo:1.0):0.0)", [("foo", 1.0)]),
    ("foo ((((lol (cat:666) attack:100)))) baz",
     [("foo ", 1.0), ("lol ", 100.0), ("cat", 666.0), (" attack", 100.0), (" baz", 1.0)]),
    ("foo ((((lol (cat:666) attack):100))) baz",
     [("foo ", 1.0), ("lol ", 100 * 1.1), ("cat", 666.0), (" attack", 100 * 1.1), (" baz", 1.0)]),
    # plain text and the weight suffix
    ("", []),
    ("a cat", [("a cat", 1.0)]),
    ("(a:1e1) (b: 0.5 )", [("a", 10.0), (" ", 1.0), ("b", 0.5)]),
    ("(a:b)", [("a:b", 1.1)]),  # not a number: the colon stays text, the group is x1.1
    ("(:1.2)", [(":1.2", 1.1)]),  # a colon at position 0 is not a weight
    ("(a:1.2:1.3)", [("a:1.2", 1.3)]),  # the last colon counts
    ("()", []),
    # escapes
    ("\\(a\\) (b)", [("(a) ", 1.0), ("b", 1.1)]),
    ("(\\(a\\):1.5)", [("(a)", 1.5)]),
    # unbalanced: an unclosed group is text; a stray ')' makes the brackets after it text
    ("(a", [("(a", 1.0)]),
    ("a)b (c)", [("a)b (c)", 1.0)]),
    ("a)(b(c))", [("a)(b", 1.0), ("c", 1.1), (")", 1.0)]),
    ("(a (b)", [("a ", 1.1), ("(b", 1.1)]),
    # square brackets are plain text in ComfyUI
    ("[a] [[b]:1.2]", [("[a] [[b]:1.2]", 1.0)]),
])
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


def test_parse_weights_a1111_brackets():
    down = 1 / 1.1
    assert parse_weights("[a] ([b]) [[c]] \\[d\\] (e]", a1111_brackets=True) == [
        ("a", down), (" ", 1.0), ("b", 1.1 * down), (" ", 1.0), ("c", down * down), (" [d] ", 1.0), ("(e]", 1.0)]
    assert parse_weights("\\[d\\]") == [("\\[d\\]", 1.0)]  # without the option these are not escapes


# ---- tokenize_with_weights: shapes and padding ----

@pytest.mark.parametrize("pad", [SD1_PAD, SD2_PAD])
def test_empty_prompt_is_one_padded_chunk(tok, pad):
    assert tokenize("", tok, pad) == [[(t, 1.0) for t in padded([BOS, EOS], pad)]]


def test_simple_prompt(tok):
    [chunk] = tokenize("a photo of a cat", tok)
    assert ids(chunk) == padded([BOS, A, 1125, 539, A, CAT, EOS])
    assert weights(chunk) == [1.0] * 77


def test_weighted_prompt(tok):
    [chunk] = tokenize("a (cat:1.5) ((dog)) [red]", tok)
    assert ids(chunk) == padded([BOS, A, CAT, DOG, 314, RED, 316, EOS])
    assert weights(chunk) == [1.0, 1.0, 1.5, 1.1 * 1.1, 1.0, 1.0, 1.0] + [1.0] * 70
    [chunk] = tokenize("a (cat:1.5) ((dog)) [red]", tok, a1111_brackets=True)
    assert ids(chunk) == padded([BOS, A, CAT, DOG, RED, EOS])
    assert weights(chunk)[:6] == [1.0, 1.0, 1.5, 1.1 * 1.1, 1 / 1.1, 1.0]


def test_escaped_parentheses_are_text(tok):
    [chunk] = tokenize("\\(cat\\)", tok)
    assert ids(chunk) == padded([BOS, 263, CAT, 264, EOS])
    assert weights(chunk) == [1.0] * 77


def test_docstring_example_tokens(tok):
    [chunk] = tokenize("foo ((((lol (cat:666) attack:100)))) baz", tok)
    segments = ["foo ", "lol ", "cat", " attack", " baz"]
    expected = [(t, w) for s, w in zip(segments, [1.0, 100.0, 666.0, 100.0, 1.0]) for t in tok.encode(s)]
    assert chunk[1 : 1 + len(expected)] == expected
    assert ids(chunk[len(expected) + 1 :]) == [EOS] * (76 - len(expected))


def test_long_single_segment_splits_into_three_chunks(tok):
    """One segment of 160 tokens is one group of >= 8 tokens: it fills 75 slots per chunk."""
    chunks = tokenize("cat " * 160, tok)
    assert [ids(c) for c in chunks] == [
        [BOS] + [CAT] * 75 + [EOS],
        [BOS] + [CAT] * 75 + [EOS],
        padded([BOS] + [CAT] * 10 + [EOS]),
    ]
    assert all(weights(c) == [1.0] * 77 for c in chunks)


@pytest.mark.parametrize("pad", [SD1_PAD, SD2_PAD])
def test_groups_move_or_split_at_chunk_boundaries(tok, pad):
    """72 cats (73 with BOS) leave room for 3: a 4-token weighted group moves whole to chunk 2 (chunk 1
    is padded); an 80-token group then fills chunk 2 (5 + 71) and continues in chunk 3 with its weight.
    The whitespace-only segment between them gives no tokens."""
    text = "cat " * 72 + "(red blue dog cat:1.2) (" + "x " * 80 + ":0.5)"
    chunks = tokenize(text, tok, pad)
    assert [ids(c) for c in chunks] == [
        [BOS] + [CAT] * 72 + [EOS] + [pad] * 3,
        [BOS, RED, BLUE, DOG, CAT] + [X] * 71 + [EOS],
        padded([BOS] + [X] * 9 + [EOS], pad),
    ]
    assert weights(chunks[0]) == [1.0] * 77
    assert weights(chunks[1]) == [1.0] + [1.2] * 4 + [0.5] * 71 + [1.0]
    assert weights(chunks[2]) == [1.0] + [0.5] * 9 + [1.0] * 67


def test_eight_token_groups_split_seven_token_groups_move(tok):
    words = "one two three four five six seven eight"
    [c1, c2] = tokenize("cat " * 72 + f"({words}:1.1)", tok)
    assert ids(c1) == [BOS] + [CAT] * 72 + ONE_TO_EIGHT[:3] + [EOS]
    assert ids(c2) == padded([BOS] + ONE_TO_EIGHT[3:] + [EOS])
    seven = words.rsplit(" ", 1)[0]
    [c1, c2] = tokenize("cat " * 72 + f"({seven}:1.1)", tok)
    assert ids(c1) == [BOS] + [CAT] * 72 + [EOS] + [SD1_PAD] * 3
    assert ids(c2) == padded([BOS] + ONE_TO_EIGHT[:7] + [EOS])


def test_exactly_full_chunk_then_next_group(tok):
    """75 tokens fill a chunk to 76; the next group, however small, opens a new chunk."""
    [c1, c2] = tokenize("cat " * 75 + "(dog:1.3)", tok)
    assert ids(c1) == [BOS] + [CAT] * 75 + [EOS]
    assert ids(c2) == padded([BOS, DOG, EOS])
    assert weights(c2)[1] == 1.3
    assert tokenize("cat " * 75, tok) == [[(t, 1.0) for t in [BOS] + [CAT] * 75 + [EOS]]]


def test_min_length_and_no_padding(tok):
    assert ids(tokenize("a cat", tok, pad_to_max_length=False)[0]) == [BOS, A, CAT, EOS]
    assert ids(tokenize("a cat", tok, pad=0, pad_to_max_length=False, min_length=10)[0]) == [BOS, A, CAT, EOS] + [0] * 6
    c1, c2 = tokenize("cat " * 72 + "(red blue dog cat:1.2)", tok, pad_to_max_length=False)
    assert ids(c1) == [BOS] + [CAT] * 72 + [EOS]
    assert ids(c2) == [BOS, RED, BLUE, DOG, CAT, EOS]
    with pytest.raises(ValueError):
        tokenize("a", tok, max_length=9)


# ---- embeddings ----

@pytest.fixture
def embeddings():
    torch.manual_seed(0)
    table = {"foo": torch.randn(3, 768), "bar": torch.randn(768), "big": torch.randn(10, 768)}
    calls = []

    def look_up(name):
        calls.append(name)
        return table.get(name)

    look_up.table, look_up.calls = table, calls
    return look_up


def assert_embedding(entry, name, vector, weight):
    token, w = entry
    assert isinstance(token, EmbeddingToken) and token.name == name and w == weight
    assert torch.equal(token.vector, vector)


def test_embedding_vectors_are_spliced_in(tok, embeddings):
    [chunk] = tokenize("a embedding:foo cat", tok, embeddings=embeddings)
    foo = embeddings.table["foo"]
    for i in range(3):
        assert_embedding(chunk[2 + i], "foo", foo[i], 1.0)
    assert ids(chunk[:2]) == [BOS, A] and ids(chunk[5:]) == padded([CAT, EOS], length=72)
    assert embeddings.calls == ["foo"]


def test_weighted_single_vector_embedding(tok, embeddings):
    [chunk] = tokenize("(embedding:bar:1.3), cat", tok, embeddings=embeddings)
    assert_embedding(chunk[1], "bar", embeddings.table["bar"], 1.3)
    assert ids(chunk[2:5]) == [COMMA, CAT, EOS] and len(chunk) == 77


def test_embedding_name_with_trailing_comma(tok, embeddings):
    [chunk] = tokenize("embedding:foo, cat", tok, embeddings=embeddings)
    assert embeddings.calls == ["foo,", "foo"]
    assert all(isinstance(t, EmbeddingToken) for t in ids(chunk[1:4]))
    assert ids(chunk[4:7]) == [COMMA, CAT, EOS]


def test_embedding_name_ends_at_angle_or_square_bracket(tok, embeddings):
    [chunk] = tokenize("embedding:bar<lora:x:1>", tok, embeddings=embeddings)
    assert embeddings.calls == ["bar"]
    assert_embedding(chunk[1], "bar", embeddings.table["bar"], 1.0)
    assert ids(chunk[2:]) == padded(tok.encode("<lora:x:1>") + [EOS], length=75)


def test_unknown_embedding_is_dropped_with_warning(tok, embeddings, caplog):
    with caplog.at_level(logging.WARNING):
        [chunk] = tokenize("a embedding:nope cat", tok, embeddings=embeddings)
    assert ids(chunk) == padded([BOS, A, CAT, EOS])
    assert "embedding:nope does not exist" in caplog.text
    with caplog.at_level(logging.WARNING):
        [chunk] = tokenize("cat embedding:", tok, embeddings=embeddings)  # ComfyUI raises IndexError here
    assert ids(chunk) == padded([BOS, CAT, EOS])


def test_embedding_prefix_is_text_without_lookup_or_whitespace(tok, embeddings):
    """Without an `embeddings` lookup the words are text, but the segment is still cut before
    ` embedding:`, so the two pieces are separate groups; `embedding:` after a comma is not a cut."""
    [chunk] = tokenize("a embedding:foo cat", tok)
    assert ids(chunk[:8]) == [BOS, A, 19703, 796, 281, 23435, CAT, EOS]
    [chunk] = tokenize("a,embedding:foo", tok, embeddings=embeddings)
    assert embeddings.calls == [] and ids(chunk[:8]) == [BOS, A, COMMA, 19703, 796, 281, 23435, EOS]
    [c1, c2] = tokenize("cat " * 72 + "embedding:foo", tok)  # two groups (72 and 4), so the 4 move whole
    assert ids(c1)[72:] == [CAT, EOS, SD1_PAD, SD1_PAD, SD1_PAD]
    assert ids(c2)[:6] == [BOS, 19703, 796, 281, 23435, EOS]


def test_long_embedding_splits_across_chunks(tok, embeddings):
    """A 10-vector embedding is a group of >= 8: it is split at the chunk boundary like a long word."""
    c1, c2 = tokenize("cat " * 70 + "embedding:big", tok, embeddings=embeddings)
    big = embeddings.table["big"]
    assert ids(c1)[:71] == [BOS] + [CAT] * 70 and ids(c1)[76] == EOS
    for i in range(5):
        assert_embedding(c1[71 + i], "big", big[i], 1.0)
    for i in range(5):
        assert_embedding(c2[1 + i], "big", big[5 + i], 1.0)
    assert ids(c2)[0] == BOS and ids(c2)[6:] == padded([EOS], length=71)
