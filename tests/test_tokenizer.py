"""Tokenizers: byte and BPE round trips, end-of-document handling, byte lengths, saving and loading."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.corpus import PYTHON_STDLIB, Corpus
from scaling.errors import UserError
from scaling.tokenizer import (
    EOT_TEXT,
    BpeTokenizer,
    ByteTokenizer,
    check_tokenizer_name,
    import_hf_tokenizers,
    load_tokenizer,
    token_dtype,
)
from tests.conftest import SHARED

MIXED_TEXT = (
    "def naïve(x):  # Grüße, Ελληνικά, 日本語, עברית\n"
    "    return x * 2  🎉🐍 👩‍💻 e\u0301\n"
    "\ttabs\r\nand CRLF, \u2028 line separator, emoji flag 🇺🇳\n"
)
TINY_SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def stdlib_texts() -> list[str]:
    """About 600 KB of real Python source: the first standard-library modules in key order."""
    texts: list[str] = []
    for document in Corpus(PYTHON_STDLIB).documents():
        if document.text:
            texts.append(document.text)
        if sum(map(len, texts)) > 600_000:
            break
    return texts


@pytest.fixture(scope="module")
def bpe(stdlib_texts: list[str]) -> BpeTokenizer:
    return BpeTokenizer.train(stdlib_texts, vocab_size=1024)


def test_bytes_round_trip_non_ascii():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(MIXED_TEXT)

    assert ids.dtype == np.uint8
    assert len(ids) == len(MIXED_TEXT.encode("utf-8"))
    assert tokenizer.decode(ids) == MIXED_TEXT


def test_bytes_nul_never_encoded_as_eot():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("a\0b")

    assert tokenizer.eot_id == 0
    assert tokenizer.eot_id not in ids
    assert tokenizer.decode(ids) == "a\ufffdb"


def test_bytes_decode_skips_eot():
    tokenizer = ByteTokenizer()
    ids = np.concatenate([tokenizer.encode("one"), [tokenizer.eot_id], tokenizer.encode("two")])

    assert tokenizer.decode(ids) == "onetwo"


def test_bytes_byte_lengths_match_text():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(MIXED_TEXT)

    assert tokenizer.token_byte_lengths.shape == (256,)
    assert tokenizer.token_byte_lengths[tokenizer.eot_id] == 0
    assert tokenizer.token_byte_lengths[ids].sum() == len(MIXED_TEXT.encode("utf-8"))


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="must lie in"):
        ByteTokenizer().decode([65, 300])


def test_bpe_round_trip_non_ascii(bpe: BpeTokenizer):
    ids = bpe.encode(MIXED_TEXT)

    assert ids.dtype == np.uint16
    assert bpe.decode(ids) == MIXED_TEXT


def test_bpe_round_trip_real_source(bpe: BpeTokenizer, stdlib_texts: list[str]):
    text = stdlib_texts[-1]
    ids = bpe.encode(text)

    assert bpe.decode(ids) == text
    # Trained on Python source, 1024 tokens compress it well below one token per byte.
    assert len(ids) < 0.6 * len(text.encode("utf-8"))


def test_bpe_vocabulary_shape(bpe: BpeTokenizer):
    assert bpe.vocab_size == 1024
    assert bpe.eot_id == 0
    assert bpe.dtype == np.uint16
    assert bpe.token_byte_lengths.shape == (1024,)
    assert bpe.token_byte_lengths[bpe.eot_id] == 0
    assert bpe.token_byte_lengths[1:].min() >= 1


def test_bpe_byte_lengths_match_decoded_text(bpe: BpeTokenizer, stdlib_texts: list[str]):
    text = stdlib_texts[0] + MIXED_TEXT
    ids = bpe.encode(text)

    assert bpe.token_byte_lengths[ids].sum() == len(bpe.decode(ids).encode("utf-8"))
    assert bpe.token_byte_lengths[ids].sum() == len(text.encode("utf-8"))


def test_bpe_byte_lengths_per_token(bpe: BpeTokenizer):
    # Tokens that are whole UTF-8 characters decode alone; the others are parts of a multi-byte character.
    checked = 0
    for token_id in range(1, bpe.vocab_size):
        decoded = bpe.decode([token_id])
        if "\ufffd" not in decoded:
            assert len(decoded.encode("utf-8")) == bpe.token_byte_lengths[token_id], token_id
            checked += 1
    assert checked > 800  # at most 128 single bytes (0x80-0xFF) and a few merges are partial characters


def test_bpe_literal_eot_text_stays_text(bpe: BpeTokenizer):
    text = f"before {EOT_TEXT} after"
    ids = bpe.encode(text)

    assert bpe.eot_id not in ids
    assert bpe.decode(ids) == text
    assert bpe.token_byte_lengths[ids].sum() == len(text.encode("utf-8"))


def test_bpe_nul_never_encoded_as_eot(bpe: BpeTokenizer):
    ids = bpe.encode("x\0y")

    assert bpe.eot_id not in ids
    assert bpe.decode(ids) == "x\ufffdy"


def test_bpe_encode_batch_matches_encode(bpe: BpeTokenizer, stdlib_texts: list[str]):
    texts = stdlib_texts[:5] + [MIXED_TEXT]
    batched = bpe.encode_batch(texts)

    for text, ids in zip(texts, batched):
        np.testing.assert_array_equal(ids, bpe.encode(text))


def test_bpe_save_load_same_ids(bpe: BpeTokenizer, tmp_path: Path):
    bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)

    assert isinstance(loaded, BpeTokenizer)
    assert loaded.vocab_size == bpe.vocab_size
    assert loaded.eot_id == bpe.eot_id
    text = MIXED_TEXT + EOT_TEXT
    np.testing.assert_array_equal(loaded.encode(text), bpe.encode(text))
    np.testing.assert_array_equal(loaded.token_byte_lengths, bpe.token_byte_lengths)


def test_bytes_save_load(tmp_path: Path):
    ByteTokenizer().save(tmp_path)
    loaded = load_tokenizer(tmp_path)

    assert isinstance(loaded, ByteTokenizer)
    assert loaded.decode(loaded.encode(MIXED_TEXT)) == MIXED_TEXT


def test_bpe_training_deterministic(stdlib_texts: list[str]):
    first = BpeTokenizer.train(stdlib_texts[:20], vocab_size=400)
    second = BpeTokenizer.train(stdlib_texts[:20], vocab_size=400)

    np.testing.assert_array_equal(first.encode(MIXED_TEXT), second.encode(MIXED_TEXT))
    np.testing.assert_array_equal(first.token_byte_lengths, second.token_byte_lengths)


def test_bpe_small_corpus_stops_early():
    tokenizer = BpeTokenizer.train(["abab abab abab"], vocab_size=4096)

    assert 257 <= tokenizer.vocab_size < 4096
    assert tokenizer.decode(tokenizer.encode("abab ba")) == "abab ba"


@pytest.mark.skipif(not TINY_SHAKESPEARE.is_file(), reason="tinyshakespeare text not present on this machine")
def test_bpe_tinyshakespeare_round_trip():
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    head, tail = text[:300_000], text[-20_000:]
    tokenizer = BpeTokenizer.train([head], vocab_size=800)
    ids = tokenizer.encode(tail)

    assert tokenizer.decode(ids) == tail
    assert tokenizer.token_byte_lengths[ids].sum() == len(tail.encode("utf-8"))
    # English prose with 800 tokens: expect well over 2 bytes per token on held-out text.
    assert len(tail.encode("utf-8")) / len(ids) > 2.0


@pytest.mark.parametrize("vocab_size", [0, 256, 2**31])
def test_bpe_vocab_size_out_of_range(vocab_size: int):
    with pytest.raises(UserError, match="vocab_size"):
        BpeTokenizer.train(["text"], vocab_size=vocab_size)


def test_unknown_tokenizer_name():
    with pytest.raises(UserError, match="sentencepiece"):
        check_tokenizer_name("sentencepiece")


def test_missing_tokenizers_package(monkeypatch: pytest.MonkeyPatch):
    # A None entry in sys.modules makes `import tokenizers` raise ImportError.
    monkeypatch.setitem(sys.modules, "tokenizers", None)

    with pytest.raises(UserError, match=r"pip install -e '\.\[hf\]'"):
        import_hf_tokenizers()


def test_load_tokenizer_missing_folder(tmp_path: Path):
    with pytest.raises(UserError, match="scaling data prepare"):
        load_tokenizer(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("vocab_size", "dtype"),
    [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)],
)
def test_token_dtype_smallest(vocab_size: int, dtype: type):
    assert token_dtype(vocab_size) == np.dtype(dtype)
