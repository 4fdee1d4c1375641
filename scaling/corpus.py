"""Corpus sources read as documents, and the deterministic train/validation split of those documents.

A source is one of:
- `python-stdlib`: the `.py` files under `sysconfig.get_paths()["stdlib"]`, without test folders (`test/`,
  `tests/`, `idlelib/idle_test/`, `lib2to3/tests/`, ...) and without `site-packages`;
- a text file, a folder (every non-hidden file below it, except files that describe the corpus, such as
  README or SOURCE.txt: see `DESCRIPTION_STEMS`), or a glob pattern (`data/**/*.txt`), which takes every
  file it matches;
- a JSONL file (`.jsonl` or `.ndjson`, also inside a folder or glob) whose records hold the text in a named field.

A document is one file or one JSONL record. Bytes that are not valid UTF-8 are decoded with
`errors="replace"` (each invalid sequence becomes U+FFFD) and the document is flagged, so the caller can
count and log how many needed it. NUL characters are replaced by U+FFFD too, because the byte tokenizer
uses NUL as its end-of-document token.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import UserError
from scaling.tokenizer import NUL_REPLACEMENT

PYTHON_STDLIB = "python-stdlib"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Folder names skipped inside the standard library: test suites (test/, tests/, idlelib/idle_test/,
# lib2to3/tests/, ...), installed third-party packages and bytecode caches.
STDLIB_EXCLUDED_FOLDERS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# Upper-case file names that describe a corpus folder rather than belong to it (README.md, SOURCE.txt,
# LICENSE). A folder source leaves them out, because a model should not train or validate on a provenance
# note. A glob pattern or a file source that names them keeps them.
DESCRIPTION_STEMS = frozenset({"README", "SOURCE", "SOURCES", "LICENSE", "LICENCE", "COPYING", "NOTICE", "CITATION",
                               "AUTHORS", "CHANGELOG", "CHANGES"})
SOURCE_HELP = "give python-stdlib, a text file, a folder, a glob pattern, or a .jsonl file"
# A validation byte share under a third or over three times the request is far from it. A factor of 2 would
# warn on the default corpus, whose 41 validation files contain 10.1% of its bytes for 5% requested (Python 3.11).
FAR_FACTOR = 3
# Below this many expected validation documents, whole documents are too coarse for the hash to reach the
# requested share reliably, so `balanced_split` may rebuild the split.
FEW_EXPECTED_VALIDATION = 10


@dataclass(frozen=True)
class Document:
    """One file or one JSONL record, decoded to text."""

    key: str  # stable identity: path relative to the source root, plus ":<line number>" for a JSONL record
    text: str  # the text, with invalid UTF-8 and NUL characters replaced by U+FFFD
    invalid_utf8: bool = False  # the raw bytes were not valid UTF-8
    had_nul: bool = False  # the text contained NUL characters
    binary: bool = False  # a file of binary data (an image, an archive): left out, so its text is empty


class Corpus:
    """A source resolved to a sorted list of files; `documents()` reads them lazily, always in the same order."""

    def __init__(self, source: str, text_field: str = "text") -> None:
        if not source:
            raise UserError(f"corpus source is empty; {SOURCE_HELP}")
        if not text_field:
            raise UserError("text_field is empty; name the JSONL field that contains the text, e.g. --text-field text")
        self.source = source
        self.text_field = text_field
        self.kind, self.root, self.files = _resolve(source)
        self.descriptions: list[str] = []  # files of a folder source left out as descriptions of the corpus
        if self.kind == "folder":
            self.files, described = _split_descriptions(self.files)
            self.descriptions = [path.relative_to(self.root).as_posix() for path in described]

    def documents(self) -> Iterator[Document]:
        """Yield every document of the source, empty ones included, in file order and then record order."""
        for path in self.files:
            relative = path.relative_to(self.root).as_posix()
            if path.suffix.lower() in JSONL_SUFFIXES:
                yield from _read_jsonl(path, relative, self.text_field)
            else:
                yield _make_document(relative, path.read_bytes())


def source_slug(source: str) -> str:
    """Return a folder-safe name for `source`: `python-stdlib`, or its file name plus a hash of its absolute path.

    The hash keeps two sources with the same file name (`a/input.txt`, `b/input.txt`) apart.
    """
    if source == PYTHON_STDLIB:
        return PYTHON_STDLIB
    path = Path(source.rstrip("/\\") or source)
    name = path.name if not _is_glob(path.name) else f"{path.parent.name}-{path.name}"
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem if not _is_glob(name) else name).strip("-")
    digest = hashlib.sha256(os.path.abspath(os.path.expanduser(source)).encode("utf-8")).hexdigest()[:8]
    return f"{readable or 'corpus'}-{digest}"


def validation_score(key: str) -> float:
    """Return a number in [0, 1) fixed by the document key alone (from SHA-256), so the split never depends on order."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_validation(keys: list[str], val_fraction: float) -> list[bool]:
    """Mark each document as validation (True) or training (False) by its key's `validation_score`.

    A document goes to validation when its score is below `val_fraction`. With two or more documents, the
    document with the lowest score is moved to validation if none landed there, and the one with the highest
    score is moved to training if all did, so both splits are non-empty.
    """
    in_val = [validation_score(key) < val_fraction for key in keys]
    if len(keys) < 2:
        return in_val
    scores = [validation_score(key) for key in keys]
    if not any(in_val):
        in_val[scores.index(min(scores))] = True
    if all(in_val):
        in_val[scores.index(max(scores))] = False
    return in_val


@dataclass(frozen=True)
class Split:
    """The train/validation assignment of documents, with the byte shares it was judged by."""

    in_val: list[bool]  # per document, in the order of the keys given
    hashed_share: float  # validation's share of the bytes under `assign_validation` alone
    share: float  # validation's share of the bytes in this split
    moved_in: list[str]  # keys that balancing moved into validation, in order of validation_score
    moved_out: list[str]  # keys that balancing moved out of validation, in order of validation_score
    tail_of: str | None = None  # the document whose last lines are validation, when whole documents could not be
    tail_fraction: float = 0.0  # the share of that document's lines in its validation tail

    @property
    def balanced(self) -> bool:
        """Whether balancing moved any document across or split one."""
        return bool(self.moved_in or self.moved_out or self.tail_of)


def far_from_request(share: float, val_fraction: float) -> bool:
    """Return whether a validation byte share differs from `val_fraction` by more than `FAR_FACTOR` either way,
    or leaves training less than 1 / `FAR_FACTOR` of the share it was meant to keep.

    The second test matters for large requests: at 0.5, a validation share of 0.9 is within a factor of 3
    of the request, but leaves training a fifth of its bytes.
    """
    too_small = share < val_fraction / FAR_FACTOR
    too_large = share > val_fraction * FAR_FACTOR or (1 - share) < (1 - val_fraction) / FAR_FACTOR
    return too_small or too_large


def balanced_split(keys: list[str], sizes: list[int], val_fraction: float) -> Split:
    """Assign documents by `assign_validation`; when they are few and bytes land far from the request, rebuild it.

    `sizes` are the documents' lengths in bytes, aligned with `keys`. The hashed assignment is kept unless
    fewer than `FEW_EXPECTED_VALIDATION` documents are expected in validation and its byte share is
    `far_from_request`. Then validation is rebuilt from the documents in order of `validation_score`, which is
    the order in which the hash admits them as `val_fraction` grows. Each document joins if that brings
    validation's bytes closer to `val_fraction` of the total. Joining stops once validation's bytes reach that
    or when one training document is left. When no choice of whole documents comes within `FAR_FACTOR` of the
    request, the largest document is split instead: its last lines, about `val_fraction` of the corpus's
    bytes, are validation (`tail_of`), and every other document trains. The result depends on keys and sizes
    alone, never on their order.
    """
    in_val = assign_validation(keys, val_fraction)
    total = sum(sizes)
    hashed_share = sum(size for size, is_val in zip(sizes, in_val) if is_val) / total if total else 0.0
    # Corpora with many documents keep the hashed assignment whatever its share, because prepared corpora and
    # the runs that recorded their fingerprints depend on it.
    many = len(keys) * val_fraction >= FEW_EXPECTED_VALIDATION
    if len(keys) < 2 or many or not far_from_request(hashed_share, val_fraction):
        return Split(in_val=in_val, hashed_share=hashed_share, share=hashed_share, moved_in=[], moved_out=[])

    target = val_fraction * total
    order = sorted(range(len(keys)), key=lambda index: (validation_score(keys[index]), keys[index]))
    chosen: list[int] = []
    val_bytes = 0
    for index in order:
        if val_bytes >= target or len(chosen) == len(keys) - 1:
            break
        # Joining brings validation closer to the target only if the document is under twice the shortfall.
        if sizes[index] < 2 * (target - val_bytes):
            chosen.append(index)
            val_bytes += sizes[index]
    largest = max(range(len(keys)), key=lambda index: (sizes[index], keys[index]))
    # A document of one byte cannot be split, so then the whole documents chosen stay (or the smallest one).
    if (not chosen or far_from_request(val_bytes / total, val_fraction)) and sizes[largest] >= 2:
        # Whole documents cannot come near the request: one document has most of the text (a book beside
        # its licence file, say). Its last lines become validation, as for a source of a single document.
        return Split(in_val=[False] * len(keys), hashed_share=hashed_share, share=target / total,
                     moved_in=[], moved_out=[keys[index] for index in order if in_val[index] and index != largest],
                     tail_of=keys[largest], tail_fraction=min(target / sizes[largest], 0.5))
    if not chosen:
        smallest = min(order, key=lambda index: sizes[index])  # min keeps the first of equal sizes: hash order
        chosen, val_bytes = [smallest], sizes[smallest]
    rebuilt = [False] * len(keys)
    for index in chosen:
        rebuilt[index] = True
    return Split(
        in_val=rebuilt,
        hashed_share=hashed_share,
        share=val_bytes / total,
        moved_in=[keys[index] for index in order if rebuilt[index] and not in_val[index]],
        moved_out=[keys[index] for index in order if in_val[index] and not rebuilt[index]],
    )


def split_single_document(document: Document, val_fraction: float) -> tuple[Document, Document]:
    """Split a lone document into a training head and a validation tail of about `val_fraction` of its lines.

    The tail has at least one line and the head keeps at least one. A document of a single line is split by
    characters the same way. Raises UserError when the text has fewer than two characters.
    """
    lines = document.text.splitlines(keepends=True)
    if len(lines) >= 2:
        pieces, unit = lines, "lines"
    elif len(document.text) >= 2:
        pieces, unit = list(document.text), "characters"
    else:
        raise UserError(
            f"the only document ({document.key}) has {len(document.text)} characters, too few to split into "
            "training and validation text; use a larger corpus"
        )
    n_val = min(max(1, round(len(pieces) * val_fraction)), len(pieces) - 1)
    head = "".join(pieces[: len(pieces) - n_val])
    tail = "".join(pieces[len(pieces) - n_val :])
    flags = {"invalid_utf8": document.invalid_utf8, "had_nul": document.had_nul}
    train = Document(key=f"{document.key}#train-{unit}", text=head, **flags)
    val = Document(key=f"{document.key}#val-{unit}", text=tail, **flags)
    return train, val


def _resolve(source: str) -> tuple[str, Path, list[Path]]:
    """Return (kind, root, files) for `source`; keys of documents are paths relative to `root`."""
    if source == PYTHON_STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        if not root.is_dir():
            raise UserError(f"Python's standard library folder {root} was not found; name a corpus file or folder instead")
        files = _walk(root, keep=lambda name: name.endswith(".py"), skip_folders=STDLIB_EXCLUDED_FOLDERS)
        kind = "python standard library"
    else:
        path = Path(source).expanduser()
        if path.is_file():
            root, files, kind = path.parent, [path], "file"
        elif path.is_dir():
            root, files, kind = path, _walk(path, keep=lambda name: True, skip_folders=frozenset()), "folder"
        elif _is_glob(source):
            matches = sorted(Path(match) for match in glob.glob(os.path.expanduser(source), recursive=True))
            files = [match for match in matches if match.is_file()]
            root = Path(os.path.commonpath([match.parent.absolute() for match in files])) if files else Path(".")
            files = [match.absolute() for match in files]
            kind = "glob"
        else:
            where = "" if path.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
            raise UserError(f"corpus source {source!r} was not found{where}; {SOURCE_HELP}")
    if not files:
        raise UserError(f"corpus source {source!r} contains no files; {SOURCE_HELP} that matches text files")
    return kind, root, files


def _walk(root: Path, keep, skip_folders: frozenset[str]) -> list[Path]:
    """Return the regular files below `root` whose names pass `keep`, sorted, skipping hidden entries."""
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in skip_folders and not name.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and keep(name) and path.is_file():
                found.append(path)
    return sorted(found)


def is_description(name: str) -> bool:
    """Return whether a file name such as README.md, SOURCE.txt or LICENSE describes a corpus folder."""
    stem = name.split(".", 1)[0]
    return stem.isupper() and stem in DESCRIPTION_STEMS


def _split_descriptions(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Return (corpus files, described): a folder's files without those that describe it, unless that leaves none."""
    described = [path for path in files if is_description(path.name)]
    corpus_files = [path for path in files if not is_description(path.name)]
    return (corpus_files, described) if corpus_files else (files, [])


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


BINARY_SNIFF_BYTES = 8192  # how much of a file is searched for a NUL byte when it is not UTF-8


def _make_document(key: str, raw: bytes) -> Document:
    try:
        text = raw.decode("utf-8")
        invalid = False
    except UnicodeDecodeError:
        # Text in a legacy encoding has no NUL bytes; images and archives have them early. Those are left out
        # rather than decoded into replacement characters that a model would learn.
        if b"\0" in raw[:BINARY_SNIFF_BYTES]:
            return Document(key=key, text="", binary=True)
        text = raw.decode("utf-8", errors="replace")
        invalid = True
    return _clean(key, text, invalid)


def _clean(key: str, text: str, invalid_utf8: bool) -> Document:
    had_nul = "\0" in text
    if had_nul:
        text = text.replace("\0", NUL_REPLACEMENT)
    return Document(key=key, text=text, invalid_utf8=invalid_utf8, had_nul=had_nul)


def _read_jsonl(path: Path, relative: str, text_field: str) -> Iterator[Document]:
    """Yield one document per JSONL record; blank lines are skipped, a bad record is a UserError naming its line."""
    with path.open("rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
                invalid = False
            except UnicodeDecodeError:
                line = raw_line.decode("utf-8", errors="replace")
                invalid = True
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: invalid JSON ({error.msg}); each line must be one JSON object") from error
            if not isinstance(record, dict):
                raise UserError(f"{path}:{line_number}: expected a JSON object, found {type(record).__name__}")
            if text_field not in record:
                fields = ", ".join(sorted(map(str, record))) or "none"
                raise UserError(
                    f"{path}:{line_number}: record has no field {text_field!r} (fields: {fields}); "
                    "pass --text-field with the field that contains the text"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise UserError(
                    f"{path}:{line_number}: field {text_field!r} is {type(text).__name__}, not a string; "
                    "pass --text-field with the field that contains the text"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # A JSON escape such as "\ud800" decodes to a lone surrogate, which has no UTF-8 form.
                text = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
                invalid = True
            yield _clean(f"{relative}:{line_number}", text, invalid)
