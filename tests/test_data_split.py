"""The train/validation split of corpora with few documents, and the permissions of prepared folders."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
from pathlib import Path

import pytest

from scaling.corpus import assign_validation, balanced_split, is_description, validation_score
from scaling.data import prepare

# A scaled-down copy of a folder of 15 books with two small notes beside them, under the books' real names.
# A glob over the folder keeps the notes. Under the key hash alone the 93-byte README is then the only
# validation document, 0.088% of the bytes.
BOOKS = {
    "README.nltk": 93, "SOURCE.txt": 35, "austen-emma.txt": 8871, "austen-persuasion.txt": 4663,
    "austen-sense.txt": 6730, "bible-kjv.txt": 43326, "blake-poems.txt": 382, "carroll-alice.txt": 1444,
    "chesterton-ball.txt": 4575, "chesterton-brown.txt": 4066, "chesterton-thursday.txt": 3205,
    "melville-moby_dick.txt": 12201, "milton-paradise.txt": 4682, "shakespeare-caesar.txt": 1123,
    "shakespeare-hamlet.txt": 1629, "shakespeare-macbeth.txt": 1004, "whitman-leaves.txt": 7112,
}


def write_sized(folder: Path, sizes: dict[str, int]) -> Path:
    """Write one ASCII file per name, of exactly the given number of bytes, and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        line = f"{name} says something plain.\n"
        (folder / name).write_text((line * (size // len(line) + 1))[:size])
    return folder


def val_share(meta: dict) -> float:
    return meta["bytes"]["val"] / (meta["bytes"]["train"] + meta["bytes"]["val"])


def split_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING and "validation split" in record.getMessage()]


def test_few_documents_reach_requested_share(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    keys = list(BOOKS)
    assert [key for key, is_val in zip(keys, assign_validation(keys, 0.05)) if is_val] == ["README.nltk"]
    source = write_sized(tmp_path / "books", BOOKS)
    caplog.set_level(logging.INFO, logger="scaling.data")

    meta = prepare(str(source / "*"), tmp_path / "out", val_fraction=0.05, progress=False)

    assert 0.025 <= val_share(meta) <= 0.1, meta["bytes"]
    assert meta["documents"]["train"] >= 1
    assert meta["documents"]["val"] >= 2
    assert meta["split"]["moved_to_validation"]
    assert meta["split"]["moved_to_training"] == []
    assert meta["settings"]["split_balance"] == 1  # a folder prepared under the hash alone is prepared again
    moved = [record.getMessage() for record in caplog.records if "moved into validation" in record.getMessage()]
    assert len(moved) == 1
    assert "0.088%" in moved[0]
    assert meta["split"]["moved_to_validation"][0] in moved[0]
    assert split_warnings(caplog) == []


def test_rebuilt_split_ignores_order_and_location(tmp_path: Path):
    first = prepare(str(write_sized(tmp_path / "a" / "books", BOOKS) / "*"), tmp_path / "out-a", progress=False)
    reversed_sizes = dict(reversed(list(BOOKS.items())))
    second_source = write_sized(tmp_path / "b" / "elsewhere", reversed_sizes) / "*"
    second = prepare(str(second_source), tmp_path / "out-b", progress=False)

    assert first["fingerprint"] == second["fingerprint"]
    assert first["split"] == second["split"]
    assert (tmp_path / "out-a" / "val.bin").read_bytes() == (tmp_path / "out-b" / "val.bin").read_bytes()
    keys, sizes = list(BOOKS), list(BOOKS.values())
    order = list(range(len(keys)))
    random.Random(0).shuffle(order)
    shuffled = balanced_split([keys[i] for i in order], [sizes[i] for i in order], 0.05)
    in_order = balanced_split(keys, sizes, 0.05)
    assert {keys[i]: flag for i, flag in zip(order, shuffled.in_val)} == dict(zip(keys, in_order.in_val))


def test_large_document_beside_a_note_gives_its_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # One large text beside a small note: neither whole file is near 5% of the bytes, so validation is the
    # last lines of the text, and the note trains.
    names = next((big, small) for big, small in (("input.txt", f"note{i}.txt") for i in range(100))
                 if assign_validation([big, small], 0.05) == [True, False])
    source = write_sized(tmp_path / "two", {names[0]: 100_000, names[1]: 900})
    caplog.set_level(logging.WARNING)

    meta = prepare(str(source), tmp_path / "out", progress=False)

    assert meta["documents"] == {"train": 2, "val": 1}
    assert meta["split"]["validation_tail_of"] == names[0]
    assert meta["split"]["moved_to_training"] == []  # its tail is validation, so it did not move out whole
    assert val_share(meta) == pytest.approx(0.05, rel=0.05)
    assert split_warnings(caplog) == []


def test_many_documents_keep_hashed_split(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # 400 documents, 20 expected in validation: the hashed split is kept even when tiny files land there.
    keys = [f"doc{i:03d}.txt" for i in range(400)]
    sizes = {key: 40 if validation_score(key) < 0.05 else 4000 for key in keys}
    source = write_sized(tmp_path / "many", sizes)
    caplog.set_level(logging.WARNING)

    meta = prepare(str(source), tmp_path / "out", progress=False)

    assert meta["documents"]["val"] == sum(assign_validation(keys, 0.05))
    assert "split_balance" not in meta["settings"]
    assert "moved_to_validation" not in meta["split"]
    warnings = split_warnings(caplog)
    assert len(warnings) == 1
    assert f"{100 * val_share(meta):.2g}%" in warnings[0]
    assert "raise --val-fraction" in warnings[0]


def test_share_near_request_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    keys = [f"doc{i:02d}.txt" for i in range(40)]
    source = write_sized(tmp_path / "even", {key: 2000 for key in keys})
    caplog.set_level(logging.INFO, logger="scaling.data")

    meta = prepare(str(source), tmp_path / "out", val_fraction=0.25, progress=False)

    assert meta["documents"]["val"] == sum(assign_validation(keys, 0.25))
    assert "moved_to_validation" not in meta["split"]
    assert split_warnings(caplog) == []
    assert not [record for record in caplog.records if "moved into validation" in record.getMessage()]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o002, 0o775)], ids=["022", "027", "002"])
def test_prepared_folder_follows_umask(umask: int, mode: int, tmp_path: Path):
    source = write_sized(tmp_path / "docs", {"a.txt": 3000, "b.txt": 3000, "c.txt": 3000})
    previous = os.umask(umask)
    try:
        prepare(str(source), tmp_path / "out", progress=False)
        prepare(str(source), tmp_path / "out", progress=False, force=True)  # replacing a folder keeps the rule
    finally:
        os.umask(previous)

    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert all(stat.S_IMODE(path.stat().st_mode) == mode & 0o666 for path in out.iterdir())
    assert json.loads((out / "meta.json").read_text())["documents"]["train"] >= 1


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="the umask is read from /proc/self/status")
def test_reused_private_folder_opened_to_umask(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # Earlier versions left prepared folders at mode 0700, and a reused folder is not written again.
    source = write_sized(tmp_path / "docs", {"a.txt": 3000, "b.txt": 3000, "c.txt": 3000})
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        prepare(str(source), out, progress=False)
        out.chmod(0o700)
        caplog.set_level(logging.INFO, logger="scaling.data")
        prepare(str(source), out, progress=False)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert "reusing prepared corpus" in caplog.text
    assert "from 0700 to 0755" in caplog.text


def test_short_tail_share_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # No whole file is near 5% of the bytes, and the larger one has 2 lines, so its tail is one line: 29%.
    source = tmp_path / "tiny"
    source.mkdir()
    (source / "a.txt").write_text("first line of file a\nsecond line, file a\n")
    (source / "b.txt").write_text("a single line in file b of 30\n")
    caplog.set_level(logging.WARNING)

    meta = prepare(str(source), tmp_path / "out", progress=False)

    warnings = split_warnings(caplog)
    assert len(warnings) == 1
    assert f"contains {100 * val_share(meta):.2g}% of its bytes, far from the requested 5%" in warnings[0]
    assert "the last lines of a.txt" in warnings[0]


def test_one_byte_documents_split_whole(tmp_path: Path):
    source = write_sized(tmp_path / "bytes", {"a.txt": 1, "b.txt": 1})
    meta = prepare(str(source), tmp_path / "out", progress=False)
    assert meta["documents"] == {"train": 1, "val": 1}


def test_binary_files_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    source = write_sized(tmp_path / "mixed", {"a.txt": 4000, "b.txt": 3000})
    (source / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    caplog.set_level(logging.WARNING)

    meta = prepare(str(source), tmp_path / "out", progress=False)

    assert meta["bytes"]["train"] + meta["bytes"]["val"] == 7000  # the two text files, nothing of the image
    binary = [record.getMessage() for record in caplog.records if "binary file" in record.getMessage()]
    assert len(binary) == 1
    assert "left out 1 binary file of" in binary[0]
    assert "image.png" in binary[0]


def test_folder_leaves_out_description_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    source = write_sized(tmp_path / "books", BOOKS)
    caplog.set_level(logging.WARNING)

    meta = prepare(str(source), tmp_path / "out", progress=False)

    assert meta["documents"]["train"] + meta["documents"]["val"] == 15
    assert meta["bytes"]["train"] + meta["bytes"]["val"] == sum(BOOKS.values()) - 93 - 35
    described = [record.getMessage() for record in caplog.records if "describe the corpus" in record.getMessage()]
    assert len(described) == 1
    assert "README.nltk, SOURCE.txt" in described[0]


def test_glob_keeps_description_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    source = write_sized(tmp_path / "books", BOOKS)
    caplog.set_level(logging.WARNING)

    meta = prepare(str(source / "*"), tmp_path / "out", progress=False)

    assert meta["documents"]["train"] + meta["documents"]["val"] == 17
    assert not [record for record in caplog.records if "describe the corpus" in record.getMessage()]


@pytest.mark.parametrize("name, described", [
    ("README.md", True), ("SOURCE.txt", True), ("LICENSE", True), ("README", True), ("CITATION.cff", True),
    ("readme.txt", False), ("Source.txt", False), ("SOURCE_CODE.txt", False), ("notes.txt", False),
])
def test_description_file_names(name: str, described: bool):
    assert is_description(name) == described


def test_folder_of_descriptions_only_kept(tmp_path: Path):
    source = write_sized(tmp_path / "notes", {"README.md": 3000, "LICENSE": 2000})

    meta = prepare(str(source), tmp_path / "out", progress=False)

    assert meta["bytes"]["train"] + meta["bytes"]["val"] == 5000


def test_far_from_request_judges_the_training_share_too():
    from scaling.corpus import far_from_request

    assert far_from_request(0.9, 0.5)  # training keeps 10% of the bytes, not 50%
    assert not far_from_request(0.379, 0.5)
    assert far_from_request(0.01, 0.05)
    assert not far_from_request(0.101, 0.05)
