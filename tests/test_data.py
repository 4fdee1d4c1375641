"""Corpus reading, `prepare`, prepared-corpus loading, batches and validation windows."""

from __future__ import annotations

import json
import re
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from scaling import data as data_module
from scaling.corpus import PYTHON_STDLIB, Corpus, assign_validation, far_from_request, source_slug
from scaling.batches import batch_at, predicted_bytes, validation_windows
from scaling.data import PreparedCorpus, default_data_dir, epochs_for, prepare
from scaling.errors import UserError
from scaling.paths import runs_root
from scaling.tokenizer import ByteTokenizer

POEM_LINES = [f"line {i}: the quick brown fox — ünïcödé 🦊 jumps over {i * 7} lazy dogs\n" for i in range(200)]


def write_documents(folder: Path, count: int, prefix: str = "doc") -> Path:
    """Write `count` small, distinct text files into `folder` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{prefix}{i:03d}.txt").write_text(f"document {i}\n" + "".join(POEM_LINES[i % 50 : i % 50 + 5]))
    return folder


@pytest.fixture
def folder_corpus(tmp_path: Path) -> Path:
    return write_documents(tmp_path / "corpus", 40)


def prepared(source: Path, out: Path, **options) -> dict:
    return prepare(str(source), out, progress=False, **options)


# ---- sources and documents ----


def test_stdlib_corpus_excludes_tests():
    corpus = Corpus(PYTHON_STDLIB)
    keys = [path.relative_to(corpus.root).as_posix() for path in corpus.files]

    assert len(keys) > 300
    assert all(key.endswith(".py") for key in keys)
    for excluded in ("test", "tests", "idle_test", "site-packages", "__pycache__"):
        assert not any(excluded in key.split("/")[:-1] for key in keys), excluded
    assert "os.py" in keys
    assert "json/decoder.py" in keys


def test_prepare_stdlib_bytes(tmp_path: Path):
    meta = prepare(PYTHON_STDLIB, tmp_path / "stdlib", progress=False)

    assert meta["tokenizer"] == "bytes"
    assert meta["dtype"] == "uint8"
    assert meta["documents"]["train"] > 300
    assert meta["documents"]["val"] >= 1
    # Byte tokens: one per UTF-8 byte plus one end-of-document token per document.
    for split in ("train", "val"):
        assert meta["tokens"][split] == meta["bytes"][split] + meta["documents"][split]


def test_prepare_folder_files_and_meta(folder_corpus: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    meta = prepared(folder_corpus, out)

    assert {"train.bin", "val.bin", "meta.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["documents"]["train"] + meta["documents"]["val"] == 40
    assert meta["val_bytes"] == meta["bytes"]["val"]
    assert meta["eot_id"] == 0
    assert meta["vocab_size"] == 256
    assert len(meta["fingerprint"]) == 16
    corpus = PreparedCorpus.load(out)
    assert isinstance(corpus.train, np.memmap)
    assert corpus.train.dtype == np.uint8
    assert len(corpus.train) == meta["tokens"]["train"]
    assert len(corpus.val) == meta["tokens"]["val"]
    # Every document ends with exactly one end-of-document token, and no other zero byte occurs.
    assert int((corpus.train == 0).sum()) == meta["documents"]["train"]
    assert corpus.train[-1] == 0


def test_prepared_text_matches_documents(folder_corpus: Path, tmp_path: Path):
    prepared(folder_corpus, tmp_path / "out")
    corpus = PreparedCorpus.load(tmp_path / "out")
    texts = {path.read_text() for path in folder_corpus.iterdir()}

    both = np.concatenate([np.asarray(corpus.train), np.asarray(corpus.val)])
    pieces = bytes(both).split(b"\0")[:-1]
    assert {piece.decode("utf-8") for piece in pieces} == texts


def test_split_deterministic_same_files(folder_corpus: Path, tmp_path: Path):
    first = prepared(folder_corpus, tmp_path / "a")
    second = prepared(folder_corpus, tmp_path / "b")

    assert first["fingerprint"] == second["fingerprint"]
    for name in ("train.bin", "val.bin", "meta.json", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_split_independent_of_location(folder_corpus: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    os.rename(folder_corpus, moved)
    first = prepared(moved, tmp_path / "a")
    os.rename(moved, folder_corpus)
    second = prepared(folder_corpus, tmp_path / "b")

    assert first["fingerprint"] == second["fingerprint"]
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()


def test_split_val_fraction_respected(tmp_path: Path):
    source = write_documents(tmp_path / "many", 400)
    meta = prepared(source, tmp_path / "out", val_fraction=0.1)

    assert 20 <= meta["documents"]["val"] <= 60  # 40 expected from a uniform hash
    assert meta["documents"]["train"] + meta["documents"]["val"] == 400


def test_two_documents_split_by_tail(tmp_path: Path):
    # A whole document would be half of the corpus: the last lines of the larger one are validation instead.
    source = write_documents(tmp_path / "two", 2)
    meta = prepared(source, tmp_path / "out")

    assert meta["documents"] == {"train": 2, "val": 1}
    assert meta["split"]["method"] == "tail of the largest document's lines; other documents train"


def test_assign_validation_keeps_both_splits():
    keys = [f"k{i}" for i in range(10)]

    assert sum(assign_validation(keys, 1e-9)) == 1
    assert sum(assign_validation(keys, 1 - 1e-9)) == 9


def test_single_file_split_by_lines(tmp_path: Path):
    source = tmp_path / "poem.txt"
    source.write_text("".join(POEM_LINES))
    meta = prepared(source, tmp_path / "out")
    corpus = PreparedCorpus.load(tmp_path / "out")

    assert meta["documents"] == {"train": 1, "val": 1}
    assert "lines" in meta["split"]["method"]
    tokenizer = corpus.tokenizer
    assert tokenizer.decode(corpus.val) == "".join(POEM_LINES[-10:])  # 5% of 200 lines
    assert tokenizer.decode(corpus.train) == "".join(POEM_LINES[:-10])


def test_single_line_file_split_by_characters(tmp_path: Path):
    source = tmp_path / "line.txt"
    source.write_text("x" * 100)
    meta = prepared(source, tmp_path / "out")

    assert meta["bytes"] == {"train": 95, "val": 5}


def test_single_character_file_rejected(tmp_path: Path):
    source = tmp_path / "one.txt"
    source.write_text("x")

    with pytest.raises(UserError, match="too few to split"):
        prepared(source, tmp_path / "out")


def test_glob_source(folder_corpus: Path, tmp_path: Path):
    (folder_corpus / "skip.md").write_text("not matched by the pattern")
    meta = prepare(str(folder_corpus / "*.txt"), tmp_path / "out", progress=False)

    assert meta["documents"]["train"] + meta["documents"]["val"] == 40
    assert meta["source_kind"] == "glob"


def test_jsonl_text_field(tmp_path: Path):
    source = tmp_path / "records.jsonl"
    records = [{"body": f"record {i} — 🙂", "id": i} for i in range(30)]
    source.write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    meta = prepared(source, tmp_path / "out", text_field="body")
    corpus = PreparedCorpus.load(tmp_path / "out")

    assert meta["documents"]["train"] + meta["documents"]["val"] == 30
    both = bytes(np.concatenate([np.asarray(corpus.train), np.asarray(corpus.val)])).split(b"\0")[:-1]
    assert sorted(piece.decode() for piece in both) == sorted(record["body"] for record in records)


def test_jsonl_missing_field(tmp_path: Path):
    source = tmp_path / "records.jsonl"
    source.write_text('{"text": "fine"}\n{"content": "no text field"}\n')

    with pytest.raises(UserError, match=r"records\.jsonl:2: record has no field 'text' \(fields: content\)"):
        prepared(source, tmp_path / "out")


def test_jsonl_invalid_line(tmp_path: Path):
    source = tmp_path / "records.jsonl"
    source.write_text('{"text": "fine"}\nnot json\n')

    with pytest.raises(UserError, match=r"records\.jsonl:2: invalid JSON"):
        prepared(source, tmp_path / "out")


def test_jsonl_field_not_string(tmp_path: Path):
    source = tmp_path / "records.jsonl"
    source.write_text('{"text": 7}\n')

    with pytest.raises(UserError, match="is int, not a string"):
        prepared(source, tmp_path / "out")


def test_jsonl_lone_surrogate_replaced(tmp_path: Path):
    source = tmp_path / "records.jsonl"
    source.write_text('{"text": "bad \\ud800 escape"}\n{"text": "good"}\n')
    meta = prepared(source, tmp_path / "out")

    assert meta["documents_with_invalid_utf8"] == 1


def test_empty_folder_rejected(tmp_path: Path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(UserError, match="contains no files"):
        prepared(tmp_path / "empty", tmp_path / "out")


def test_empty_files_rejected(tmp_path: Path):
    folder = tmp_path / "blank"
    folder.mkdir()
    (folder / "a.txt").write_text("")
    (folder / "b.txt").write_text("")

    with pytest.raises(UserError, match="all 2 documents are empty"):
        prepared(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(UserError, match="was not found;"):
        prepared(tmp_path / "nowhere.txt", tmp_path / "out")
    monkeypatch.chdir(tmp_path)  # a relative path names the folder it was read from
    with pytest.raises(UserError, match=re.escape(f"was not found (a relative path is read from the current folder, "
                                                   f"{tmp_path})")):
        prepared(Path("nowhere.txt"), tmp_path / "out")


def test_glob_without_matches_rejected(tmp_path: Path):
    with pytest.raises(UserError, match="contains no files"):
        prepare(str(tmp_path / "*.nothing"), tmp_path / "out", progress=False)


def test_invalid_utf8_replaced_and_logged(folder_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (folder_corpus / "latin1.txt").write_bytes("café\n".encode("latin-1") + b"\xff\xfe end\n")
    with caplog.at_level(logging.WARNING, logger="scaling.data"):
        meta = prepared(folder_corpus, tmp_path / "out")
    corpus = PreparedCorpus.load(tmp_path / "out")

    assert meta["documents_with_invalid_utf8"] == 1
    assert "1 of 41 documents" in caplog.text
    text = corpus.tokenizer.decode(np.concatenate([corpus.train, corpus.val]))
    assert "caf\ufffd\n\ufffd\ufffd end\n" in text


def test_nul_inside_document_replaced(folder_corpus: Path, tmp_path: Path):
    (folder_corpus / "nul.txt").write_bytes(b"before\0after\n")
    meta = prepared(folder_corpus, tmp_path / "out")
    corpus = PreparedCorpus.load(tmp_path / "out")

    assert meta["documents_with_nul"] == 1
    zeros = int((corpus.train == 0).sum() + (corpus.val == 0).sum())
    assert zeros == meta["documents"]["train"] + meta["documents"]["val"]


def test_bad_settings_rejected(folder_corpus: Path, tmp_path: Path):
    with pytest.raises(UserError, match="val_fraction"):
        prepared(folder_corpus, tmp_path / "out", val_fraction=0.0)
    with pytest.raises(UserError, match="val_fraction"):
        prepared(folder_corpus, tmp_path / "out", val_fraction=1.0)
    with pytest.raises(UserError, match="tokenizer 'chars'"):
        prepared(folder_corpus, tmp_path / "out", tokenizer="chars")
    with pytest.raises(UserError, match="vocab_size=100"):
        prepared(folder_corpus, tmp_path / "out", tokenizer="bpe", vocab_size=100)


# ---- reuse, re-preparation and atomic writes ----


def test_rerun_reuses(folder_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    out = tmp_path / "out"
    first = prepared(folder_corpus, out)
    mtimes = {name: (out / name).stat().st_mtime_ns for name in ("train.bin", "val.bin", "meta.json")}
    with caplog.at_level(logging.INFO, logger="scaling.data"):
        second = prepared(folder_corpus, out)

    assert second == first
    assert f"reusing prepared corpus at {out}" in caplog.text
    assert {name: (out / name).stat().st_mtime_ns for name in mtimes} == mtimes


def test_changed_content_prepares_again(folder_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    out = tmp_path / "out"
    first = prepared(folder_corpus, out)
    (folder_corpus / "doc000.txt").write_text("new content for the first document\n")
    with caplog.at_level(logging.INFO, logger="scaling.data"):
        second = prepared(folder_corpus, out)

    assert second["fingerprint"] != first["fingerprint"]
    assert "reusing" not in caplog.text
    assert PreparedCorpus.load(out).meta["fingerprint"] == second["fingerprint"]

    # The edited source cannot give back the tokens earlier runs trained on, so they are kept beside.
    old_corpus = tmp_path / f"out.{first['fingerprint']}"
    assert PreparedCorpus.load(old_corpus).meta == first
    assert f"kept the old tokens in {old_corpus}" in caplog.text
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("out")) == ["out", old_corpus.name]


def test_changed_settings_prepare_again(folder_corpus: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = prepared(folder_corpus, out)
    second = prepared(folder_corpus, out, val_fraction=0.2)

    assert second["fingerprint"] != first["fingerprint"]
    assert second["documents"]["val"] > first["documents"]["val"]


def test_force_prepares_again(folder_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    out = tmp_path / "out"
    first = prepared(folder_corpus, out)
    inode = (out / "train.bin").stat().st_ino
    with caplog.at_level(logging.INFO, logger="scaling.data"):
        second = prepared(folder_corpus, out, force=True)

    assert second == first
    assert "reusing" not in caplog.text
    assert (out / "train.bin").stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_prepare_leaves_nothing(folder_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def interrupt(path: Path, payload) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module, "_write_json", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepared(folder_corpus, tmp_path / "out")

    assert list(tmp_path.iterdir()) == [folder_corpus]


def test_incomplete_folder_prepared_again(folder_corpus: Path, tmp_path: Path):
    out = tmp_path / "out"
    meta = prepared(folder_corpus, out)
    with open(out / "train.bin", "r+b") as handle:
        handle.truncate(10)

    with pytest.raises(UserError, match="incomplete"):
        PreparedCorpus.load(out)
    assert prepared(folder_corpus, out) == meta
    assert len(PreparedCorpus.load(out).train) == meta["tokens"]["train"]


def test_foreign_output_folder_untouched(folder_corpus: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    with pytest.raises(UserError, match="not empty"):
        prepared(folder_corpus, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_load_missing_folder(tmp_path: Path):
    with pytest.raises(UserError, match="run `scaling data prepare` first"):
        PreparedCorpus.load(tmp_path / "absent")


def test_load_unprepared_folder(tmp_path: Path):
    with pytest.raises(UserError, match="run `scaling data prepare` first"):
        PreparedCorpus.load(tmp_path)


# ---- tokenizers and dtypes through prepare ----


def test_smallest_dtype_per_tokenizer(folder_corpus: Path, tmp_path: Path):
    byte_meta = prepared(folder_corpus, tmp_path / "bytes")
    bpe_meta = prepared(folder_corpus, tmp_path / "bpe", tokenizer="bpe", vocab_size=300)

    assert byte_meta["dtype"] == "uint8"
    assert bpe_meta["dtype"] == "uint16"
    assert bpe_meta["vocab_size"] <= 300
    assert PreparedCorpus.load(tmp_path / "bpe").train.dtype == np.uint16


def test_bpe_prepare_round_trip_and_bytes(folder_corpus: Path, tmp_path: Path):
    meta = prepared(folder_corpus, tmp_path / "bpe", tokenizer="bpe", vocab_size=400)
    corpus = PreparedCorpus.load(tmp_path / "bpe")
    tokenizer = corpus.tokenizer

    assert meta["tokenizer"] == "bpe"
    assert meta["eot_id"] == tokenizer.eot_id
    assert meta["tokens"]["train"] < meta["bytes"]["train"]  # BPE merges bytes
    assert int(tokenizer.token_byte_lengths[corpus.val].sum()) == meta["val_bytes"]
    assert int(tokenizer.token_byte_lengths[corpus.train].sum()) == meta["bytes"]["train"]
    texts = {path.read_text() for path in folder_corpus.iterdir()}
    ids = np.asarray(corpus.val)
    boundaries = np.flatnonzero(ids == tokenizer.eot_id)
    first_document = tokenizer.decode(ids[: boundaries[0]])
    assert first_document in texts


def test_bpe_prepare_deterministic(folder_corpus: Path, tmp_path: Path):
    first = prepared(folder_corpus, tmp_path / "a", tokenizer="bpe", vocab_size=400)
    second = prepared(folder_corpus, tmp_path / "b", tokenizer="bpe", vocab_size=400)

    assert first["fingerprint"] == second["fingerprint"]
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


# ---- batches, validation windows, bits per byte ----


@pytest.fixture
def tokens() -> np.ndarray:
    return np.arange(10_000, dtype=np.uint16) % 251


def test_batch_shape_and_dtype(tokens: np.ndarray):
    batch = batch_at(tokens, 3, batch_size=8, seq_len=32, seed=0)

    assert batch.shape == (8, 33)
    assert batch.dtype == np.int32


def test_batch_rows_are_windows():
    sequence = np.arange(5_000, dtype=np.uint32)
    batch = batch_at(sequence, 11, batch_size=16, seq_len=64, seed=5)

    for row in batch:
        np.testing.assert_array_equal(row, np.arange(row[0], row[0] + 65))
    assert batch[:, -1].max() < len(sequence)


def test_batch_deterministic(tokens: np.ndarray):
    first = batch_at(tokens, 7, batch_size=4, seq_len=16, seed=1)
    second = batch_at(tokens, 7, batch_size=4, seq_len=16, seed=1)

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, batch_at(tokens, 8, batch_size=4, seq_len=16, seed=1))
    assert not np.array_equal(first, batch_at(tokens, 7, batch_size=4, seq_len=16, seed=2))
    # (seed, step) is a pair, not a sum: seed 2 at step 6 is another stream than seed 1 at step 7.
    assert not np.array_equal(first, batch_at(tokens, 6, batch_size=4, seq_len=16, seed=2))


def test_batch_resume_matches_uninterrupted(tokens: np.ndarray):
    uninterrupted = [batch_at(tokens, step, batch_size=4, seq_len=16, seed=3) for step in range(20)]
    # A resumed run starts at step 12 after other work has consumed random numbers elsewhere.
    np.random.default_rng(99).integers(0, 100, size=1000)
    np.random.seed(1)
    resumed = [batch_at(tokens, step, batch_size=4, seq_len=16, seed=3) for step in range(12, 20)]

    for expected, actual in zip(uninterrupted[12:], resumed):
        np.testing.assert_array_equal(expected, actual)


def test_batch_from_memmap(folder_corpus: Path, tmp_path: Path):
    prepared(folder_corpus, tmp_path / "out")
    corpus = PreparedCorpus.load(tmp_path / "out")
    batch = batch_at(corpus.train, 0, batch_size=2, seq_len=8, seed=0)

    assert batch.shape == (2, 9)
    assert isinstance(batch, np.ndarray) and not isinstance(batch, np.memmap)


def test_batch_corpus_too_small():
    with pytest.raises(UserError, match="corpus smaller than one sequence"):
        batch_at(np.zeros(16, np.uint8), 0, batch_size=1, seq_len=16, seed=0)


def test_batch_exact_fit():
    batch = batch_at(np.arange(17, dtype=np.uint8), 0, batch_size=3, seq_len=16, seed=0)

    np.testing.assert_array_equal(batch, np.tile(np.arange(17), (3, 1)))


def test_validation_windows_fixed_non_overlapping():
    val = np.arange(1_000, dtype=np.uint16)
    windows = validation_windows(val, eval_tokens=256, seq_len=64)

    assert windows.shape == (4, 65)
    assert windows.dtype == np.int32
    np.testing.assert_array_equal(windows, validation_windows(val, eval_tokens=256, seq_len=64))
    predicted = windows[:, 1:].reshape(-1)
    assert len(np.unique(predicted)) == predicted.size  # no target is scored twice
    np.testing.assert_array_equal(predicted, np.arange(1, 257))  # contiguous from the split's start


def test_validation_windows_capped_by_split():
    windows = validation_windows(np.arange(200, dtype=np.uint8), eval_tokens=10_000, seq_len=64)

    assert windows.shape == (3, 65)


def test_validation_windows_at_least_one():
    windows = validation_windows(np.arange(100, dtype=np.uint8), eval_tokens=10, seq_len=64)

    assert windows.shape == (1, 65)


def test_validation_windows_too_short():
    with pytest.raises(UserError, match="validation split has 64 tokens"):
        validation_windows(np.arange(64, dtype=np.uint8), eval_tokens=64, seq_len=64)


def test_predicted_bytes_matches_decoded_text():
    tokenizer = ByteTokenizer()
    text = "héllo wörld 🎉\n" * 40
    val = np.concatenate([tokenizer.encode(text), [tokenizer.eot_id], tokenizer.encode(text)])
    windows = validation_windows(val, eval_tokens=512, seq_len=100)

    predicted = windows[:, 1:].reshape(-1)
    expected = int((predicted != tokenizer.eot_id).sum())  # one byte per token, none for the separator
    assert predicted_bytes(windows, tokenizer) == expected


def test_epochs_for(folder_corpus: Path, tmp_path: Path):
    meta = prepared(folder_corpus, tmp_path / "out")
    corpus = PreparedCorpus.load(tmp_path / "out")

    assert epochs_for(meta["tokens"]["train"] * 3, corpus) == pytest.approx(3.0)
    assert epochs_for(meta["tokens"]["train"] // 2, meta) == pytest.approx(0.5, abs=1e-3)


# ---- default locations ----


def test_default_data_dir_names(tmp_path: Path):
    assert default_data_dir(PYTHON_STDLIB, "bytes", 4096, tmp_path) == tmp_path / "_data" / "python-stdlib-bytes"
    assert default_data_dir(PYTHON_STDLIB, "bpe", 4096, tmp_path) == tmp_path / "_data" / "python-stdlib-bpe-4096"


def test_default_data_dir_names_settings(tmp_path: Path):
    """Two preparations of one source with other settings never share (and so never replace) one folder."""
    named = default_data_dir(PYTHON_STDLIB, "bytes", 4096, tmp_path, val_fraction=0.3).name
    assert named == "python-stdlib-bytes-val0.3"
    assert default_data_dir("a.jsonl", "bytes", 4096, tmp_path, text_field="body text").name.startswith("a-")
    assert default_data_dir("a.jsonl", "bytes", 4096, tmp_path, text_field="body text").name.endswith(
        "-bytes-field-body_text")
    assert default_data_dir(PYTHON_STDLIB, "bytes", 4096, tmp_path, val_fraction=0.05, text_field="text").name == (
        "python-stdlib-bytes")


def test_val_fraction_separate_folders(tmp_path: Path):
    from sweeps.spec import parse_spec, prepare_data

    source = write_documents(tmp_path / "docs", 20)
    raw = {"name": "v", "data": {"source": str(source), "tokenizer": "bytes"}, "model": {"head_dim": 8},
           "train": {"seq_len": 16, "batch_size": 2, "eval_tokens": 64}, "grid": {"params": ["4K"], "tokens": ["8K"]}}
    first = prepare_data(parse_spec(raw), tmp_path / "runs", progress=False)
    second = prepare_data(parse_spec({**raw, "data": {**raw["data"], "val_fraction": 0.3}}), tmp_path / "runs",
                          progress=False)
    assert first.path != second.path
    assert first.meta["fingerprint"] == json.loads((first.path / "meta.json").read_text())["fingerprint"]


def test_default_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SCALING_RUNS", str(tmp_path / "env-runs"))

    assert default_data_dir(PYTHON_STDLIB, "bytes") == tmp_path / "env-runs" / "_data" / "python-stdlib-bytes"


def test_source_slug_distinguishes_same_name(tmp_path: Path):
    first = source_slug(str(tmp_path / "a" / "input.txt"))
    second = source_slug(str(tmp_path / "b" / "input.txt"))

    assert first.startswith("input-")
    assert first != second


def test_runs_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCALING_RUNS", raising=False)
    assert runs_root() == tmp_path / "runs"

    monkeypatch.setenv("SCALING_RUNS", str(tmp_path / "from-env"))
    assert runs_root() == tmp_path / "from-env"
    assert runs_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert runs_root("relative") == tmp_path / "relative"


@pytest.mark.parametrize("documents, val_fraction", [(3, 0.05), (40, 0.25)], ids=["three_documents", "forty_documents"])
def test_few_equal_documents_split_near_request(documents, val_fraction, tmp_path: Path, caplog):
    # A whole one of 3 equal documents would be a third of the bytes, so the tail of one is validation instead.
    source = tmp_path / "docs"
    source.mkdir()
    for index in range(documents):
        (source / f"doc{index:02d}.txt").write_text(f"document {index}\n" * 200)
    caplog.set_level(logging.WARNING)
    meta = prepare(str(source), tmp_path / "out", val_fraction=val_fraction, progress=False)

    share = meta["bytes"]["val"] / (meta["bytes"]["train"] + meta["bytes"]["val"])
    messages = [record.getMessage() for record in caplog.records if "validation split of" in record.getMessage()]
    assert not far_from_request(share, val_fraction)
    assert messages == []


def test_logs_in_a_pipe_are_one_line_each(tmp_path):
    """Logs written to a file or pipe are not folded at 80 columns, so a long path stays on its line."""
    import subprocess
    import sys

    source = tmp_path / "a_folder_with_a_long_name_so_that_the_log_line_passes_eighty_columns" / "text.txt"
    source.parent.mkdir()
    source.write_text("words and more words\n" * 200)
    done = subprocess.run([Path(sys.executable).with_name("scaling"), "data", "prepare", str(source),
                           "--out", str(tmp_path / "prepared")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if str(source.parent) in line]
    assert lines and all(line.startswith("[") and " INFO " in line for line in lines), done.stderr
    assert all(line == line.rstrip() for line in done.stderr.splitlines())


def test_validation_documents_are_named(folder_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Validation loss measures the held-out documents only, so meta.json and the log name them."""
    with caplog.at_level(logging.INFO, logger="scaling.data"):
        meta = prepared(folder_corpus, tmp_path / "out", val_fraction=0.1)
    named = meta["split"]["validation_documents"]
    assert len(named) == meta["documents"]["val"] >= 1
    held_out = b"".join((folder_corpus / name).read_bytes() for name in named)
    assert len(held_out) == meta["val_bytes"]
    assert f"of the bytes, in {named[0]}" in caplog.text
