"""Prepared corpora: tokenize a source once (`scaling data prepare`), then read its tokens memory-mapped.

A prepared corpus is a folder with
- `train.bin`, `val.bin`: every document's tokens followed by the end-of-document token, concatenated, in
  the smallest unsigned integer dtype that fits the vocabulary (uint8 for bytes, uint16 up to 65536 tokens);
- the tokenizer (`tokenizer.json`, plus `bpe.json` for BPE);
- `meta.json`: source, document, byte and token counts per split, tokenizer, dtype, end-of-document id,
  `val_bytes` and the fingerprint. The fingerprint is the first 16 hex digits of a SHA-256 over the
  preparation settings and every document's key and UTF-8 bytes in order. Runs record it, and
  `prepare` compares it to reuse a folder that is already up to date.

How training and evaluation cut windows from these tokens is in `scaling.batches`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scaling import paths
from scaling.corpus import (
    PYTHON_STDLIB,
    Corpus,
    Document,
    Split,
    balanced_split,
    far_from_request,
    source_slug,
    split_single_document,
)
from scaling.errors import UserError
from scaling.numbers import counted
from scaling.tokenizer import (
    BpeTokenizer,
    ByteTokenizer,
    Tokenizer,
    check_bpe_vocab_size,
    check_tokenizer_name,
    load_tokenizer,
    token_dtype,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the files' layout or meaning changes, so old folders are prepared again
META_FILE = "meta.json"
TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"
PREPARE_HINT = "run `scaling data prepare` first"
BPE_BATCH_CHARS = 4_000_000  # characters of text handed to the BPE encoder at once (its threads share them)
VALIDATION_DOCUMENTS_LISTED = 100  # meta.json names the validation documents when there are at most this many

# Added to the settings, and so to the fingerprint, only where `balanced_split` changed the split, so only those
# corpora are prepared again and every other one keeps its fingerprint. Bump it when the balancing rule changes.
SPLIT_BALANCE_VERSION = 1
NAMED_DOCUMENTS = 5  # a message about the split names up to this many validation documents


DEFAULT_VAL_FRACTION = 0.05
DEFAULT_TEXT_FIELD = "text"


def default_data_dir(
    source: str = PYTHON_STDLIB, tokenizer: str = "bytes", vocab_size: int = 4096, runs_root: str | Path | None = None,
    *, val_fraction: float = DEFAULT_VAL_FRACTION, text_field: str = DEFAULT_TEXT_FIELD,
) -> Path:
    """Return `<runs_root>/_data/<slug>-<tokenizer>[-<vocab_size>][-field-<text_field>][-val<val_fraction>]`.

    The vocabulary size is named for BPE only, the text field and the validation share only when they are
    not the defaults. Every setting that changes the prepared tokens is in the name, so two sweeps that
    prepare one source differently get two folders, and neither prepares the other's folder again while
    its runs read it.
    """
    name = f"{source_slug(source)}-{tokenizer}"
    if tokenizer == "bpe":
        name += f"-{vocab_size}"
    if text_field != DEFAULT_TEXT_FIELD:
        name += f"-field-{re.sub(r'[^A-Za-z0-9_.-]+', '_', text_field)}"
    if val_fraction != DEFAULT_VAL_FRACTION:
        name += f"-val{val_fraction:g}"
    return paths.data_root(runs_root) / name


@dataclass(frozen=True)
class _Scan:
    """Result of one reading pass over the source, made before anything is tokenized."""

    keys: list[str]  # keys of the non-empty documents, in order
    sizes: list[int]  # their UTF-8 lengths in bytes, aligned with keys
    digest: str  # SHA-256 hex over the keys and texts of those documents
    empty: int  # documents skipped because their text is empty
    invalid_utf8: int  # documents whose bytes needed U+FFFD replacement
    had_nul: int  # documents whose NUL characters were replaced


def prepare(
    source: str = PYTHON_STDLIB,
    out_dir: str | Path | None = None,
    *,
    tokenizer: str = "bytes",
    vocab_size: int = 4096,
    text_field: str = DEFAULT_TEXT_FIELD,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `source` into `out_dir` and return its meta (the contents of meta.json).

    `source` is `python-stdlib`, a text file, a folder, a glob pattern or a JSONL file (its text in
    `text_field`); see scaling.corpus. Documents are split by a hash of their keys: about `val_fraction` go to
    validation, with at least one document in each split. When few documents are expected in validation and
    the hash puts a byte share far from `val_fraction` there, documents are moved in hash order towards it
    (`scaling.corpus.balanced_split`); a share still far from the request is logged as a warning. A source
    with a single document is split by lines instead: its last `val_fraction` of lines (at least one) is the
    validation text.
    `vocab_size` applies to `tokenizer="bpe"` only, which trains on the training split.
    When `out_dir` already contains a corpus prepared from the same content with the same settings, it is
    reused unless `force` is set. The folder is written under a temporary name and renamed when complete,
    so an interrupted run never leaves a folder that looks prepared.
    """
    check_tokenizer_name(tokenizer)
    if tokenizer == "bpe":
        check_bpe_vocab_size(vocab_size)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction!r} must lie strictly between 0 and 1; try 0.05")

    corpus = Corpus(source, text_field)
    out = (Path(out_dir).expanduser() if out_dir is not None
           else default_data_dir(source, tokenizer, vocab_size, val_fraction=val_fraction, text_field=text_field))
    started = time.perf_counter()

    scan = _scan(corpus)
    settings = {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size if tokenizer == "bpe" else ByteTokenizer().vocab_size,
        "val_fraction": float(val_fraction),
    }
    plan = _plan_split(corpus, scan, val_fraction)
    if plan is not None and plan.balanced:
        settings["split_balance"] = SPLIT_BALANCE_VERSION
    fingerprint = _fingerprint(settings, scan.digest)

    if not force:
        existing = _reusable_meta(out, fingerprint)
        if existing is not None:
            log.info("reusing prepared corpus at %s (fingerprint %s)", out, fingerprint)
            _open_private_folder(out)
            return existing
    _check_replaceable(out)

    # A plain mkdir under a unique name, not tempfile.mkdtemp: mkdtemp makes the folder private (0700), and
    # the rename would carry that to the prepared corpus, which other users of a shared run store must read.
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as error:
        raise UserError(f"cannot write the prepared corpus to {out} ({error.strerror}); pass --out with a folder "
                        "you can write to") from None
    try:
        meta = _write_prepared(corpus, scan, plan, staging, tokenizer, vocab_size, val_fraction, progress)
        meta.update(fingerprint=fingerprint, settings=settings)
        _write_json(staging / META_FILE, meta)  # written last: its presence marks a complete folder
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    named = meta["split"].get("validation_documents")
    if named is not None:
        share = meta["val_bytes"] / max(1, sum(meta["bytes"].values()))
        log.info("validation split: %s of the bytes, in %s", _percent(share), _names(named))
    log.info(
        "prepared %s into %s in %.1f s: %d + %d documents, %d + %d tokens (train + val), fingerprint %s",
        corpus.source, out, time.perf_counter() - started, meta["documents"]["train"], meta["documents"]["val"],
        meta["tokens"]["train"], meta["tokens"]["val"], fingerprint,
    )
    return meta


class PreparedCorpus:
    """A prepared corpus folder: memory-mapped token splits, its meta and its tokenizer."""

    def __init__(self, path: Path, meta: dict[str, Any], train: np.memmap, val: np.memmap, tokenizer: Tokenizer):
        self.path = path
        self.meta = meta
        self.train = train  # training tokens, dtype meta["dtype"]
        self.val = val  # validation tokens, dtype meta["dtype"]
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: str | Path) -> PreparedCorpus:
        """Open the prepared corpus at `path`; raises UserError when the folder is missing or incomplete."""
        path = Path(path).expanduser()
        if path.is_file() and path.parent.joinpath(META_FILE).is_file():
            raise UserError(f"data.path {path} is a file of a prepared corpus; set data.path to its folder "
                            f"{path.parent}")
        if path.is_file():
            raise UserError(f"prepared corpus folder {path} is a file, not a folder; {PREPARE_HINT}")
        if not path.is_dir() and path.is_absolute():
            raise UserError(f"prepared corpus folder {path} does not exist; {PREPARE_HINT}")
        if not path.is_dir():  # relative paths are read from the current folder, not from the config file's
            raise UserError(f"prepared corpus folder {path} does not exist in the current folder ({path.absolute()}); "
                            f"run from the folder it is relative to, give an absolute path, or {PREPARE_HINT}")
        meta = _read_meta(path)
        if meta is None:
            raise UserError(f"{path} is not a prepared corpus ({META_FILE} is missing or unreadable); {PREPARE_HINT}")
        if meta.get("format") != FORMAT_VERSION:
            raise UserError(
                f"prepared corpus at {path} has format {meta.get('format')!r}, this version reads {FORMAT_VERSION}; "
                "run `scaling data prepare --force`"
            )
        problem = _check_token_files(path, meta)
        if problem:
            raise UserError(f"prepared corpus at {path} is incomplete ({problem}); run `scaling data prepare --force`")
        dtype = np.dtype(meta["dtype"])
        train = np.memmap(path / TRAIN_FILE, dtype=dtype, mode="r")
        val = np.memmap(path / VAL_FILE, dtype=dtype, mode="r")
        return cls(path, meta, train, val, load_tokenizer(path))

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __repr__(self) -> str:
        return (f"PreparedCorpus({str(self.path)!r}, tokenizer={self.meta['tokenizer']!r}, "
                f"train={len(self.train)} tokens, val={len(self.val)} tokens)")


def epochs_for(tokens_planned: int, corpus: PreparedCorpus | Mapping[str, Any]) -> float:
    """Return passes over the training split that `tokens_planned` tokens amount to (>1 repeats data)."""
    meta = corpus.meta if isinstance(corpus, PreparedCorpus) else corpus
    train_tokens = int(meta["tokens"]["train"])
    return tokens_planned / train_tokens


def check_epochs(run_id: str, tokens_planned: int, corpus: PreparedCorpus | Mapping[str, Any],
                 max_epochs: float | None, key: str = "max_epochs") -> float:
    """Return the epochs `tokens_planned` amount to; raise UserError above `max_epochs` (None allows any).

    `key` names the setting in the message: "max_epochs" for a train config, "train.max_epochs" in a spec.
    """
    epochs = epochs_for(tokens_planned, corpus)
    if max_epochs is not None and epochs > max_epochs:
        meta = corpus.meta if isinstance(corpus, PreparedCorpus) else corpus
        raise UserError(
            f"run {run_id} plans {tokens_planned} tokens, {epochs:.2f} epochs over the corpus's "
            f"{int(meta['tokens']['train'])} training tokens, above {key}={max_epochs}; lower the token budget, "
            f"use a larger corpus, or raise {key}"
        )
    return epochs


def _scan(corpus: Corpus) -> _Scan:
    """Read every document once: keys, the content digest and counts of the replacements made."""
    digest = hashlib.sha256()
    keys: list[str] = []
    sizes: list[int] = []
    empty = invalid_utf8 = had_nul = 0
    binary: list[str] = []
    for document in corpus.documents():
        if document.binary:
            binary.append(document.key)
            continue
        if not document.text:
            empty += 1
            continue
        data = document.text.encode("utf-8")
        key = document.key.encode("utf-8")
        # Length prefixes keep document boundaries in the digest: "ab" + "c" differs from "a" + "bc".
        digest.update(len(key).to_bytes(8, "little") + key + len(data).to_bytes(8, "little"))
        digest.update(data)
        keys.append(document.key)
        sizes.append(len(data))
        invalid_utf8 += document.invalid_utf8
        had_nul += document.had_nul

    if corpus.descriptions:
        log.warning("left out %s of %s that describe%s the corpus (%s); a glob pattern such as '%s/*' keeps every "
                    "text file", counted(len(corpus.descriptions), "file"), corpus.source,
                    "s" if len(corpus.descriptions) == 1 else "", _names(corpus.descriptions),
                    corpus.source.rstrip("/"))
    if binary:
        log.warning("left out %s of %s (%s): not UTF-8 text, with NUL bytes", counted(len(binary), "binary file"),
                    corpus.source, _names(binary))
    if not keys:
        detail = f"all {empty} documents are empty" if empty else "it yields no documents"
        if binary:
            detail = f"its {len(binary)} files are binary, not text" if not empty else detail
        raise UserError(f"corpus source {corpus.source!r} has no text ({detail}); point it at files that contain text")
    if invalid_utf8:
        log.warning("%d of %d documents of %s were not valid UTF-8; their invalid bytes were decoded as U+FFFD",
                    invalid_utf8, len(keys), corpus.source)
    if had_nul:
        log.warning("%d documents of %s contained NUL characters, replaced by U+FFFD because NUL ends a document",
                    had_nul, corpus.source)
    if empty:
        log.debug("skipped %d empty documents of %s", empty, corpus.source)
    return _Scan(keys=keys, sizes=sizes, digest=digest.hexdigest(), empty=empty, invalid_utf8=invalid_utf8,
                 had_nul=had_nul)


def _fingerprint(settings: dict[str, Any], content_digest: str) -> str:
    payload = json.dumps(settings, sort_keys=True).encode("utf-8") + content_digest.encode("ascii")
    return hashlib.sha256(payload).hexdigest()[:16]


def _plan_split(corpus: Corpus, scan: _Scan, val_fraction: float) -> Split | None:
    """Return the document split of a multi-document source (None for a single document), logging how it went.

    Balancing is logged with the documents it moved. A byte share that stays far from `val_fraction` is
    warned about once the split is written (`_warn_if_far`).
    """
    if len(scan.keys) == 1:
        return None
    split = balanced_split(scan.keys, scan.sizes, val_fraction)
    n_val = sum(split.in_val)
    if split.tail_of:
        others = len(scan.keys) - 1
        log.info("no choice of whole documents of %s puts near the requested %s of its bytes in validation, so "
                 "validation is the tail of the lines of its largest document, %s, sized to about that share; %s",
                 corpus.source, _percent(val_fraction), split.tail_of,
                 "the other document trains" if others == 1 else f"the other {others} documents train")
    elif split.balanced:
        log.info(
            "the key hash put %s of the bytes of %s in validation, far from the requested %s, so documents were "
            "taken in hash order while they brought it closer: %d moved into validation (%s), %d out (%s). "
            "Validation now contains %s of the bytes in %d of %d documents",
            _percent(split.hashed_share), corpus.source, _percent(val_fraction), len(split.moved_in),
            _names(split.moved_in), len(split.moved_out), _names(split.moved_out), _percent(split.share), n_val,
            len(scan.keys),
        )
    return split


def _split_documents(
    corpus: Corpus, scan: _Scan, plan: Split | None, val_fraction: float
) -> tuple[Iterator[tuple[Document, bool]], str]:
    """Return an iterator of (document, is_validation) over the non-empty documents, and the split method.

    `plan` is `_plan_split`'s result, None for a source with a single document.
    """
    if plan is None:
        log.info("%s has a single document: its last %s of lines become the validation text",
                 corpus.source, _percent(val_fraction))

        def halves() -> Iterator[tuple[Document, bool]]:
            document = next(document for document in corpus.documents() if document.text)
            train, val = split_single_document(document, val_fraction)
            yield train, False
            yield val, True

        return halves(), "tail of the single document's lines"

    in_val = dict(zip(scan.keys, plan.in_val))

    def by_key() -> Iterator[tuple[Document, bool]]:
        for document in corpus.documents():
            if not document.text:
                continue
            if document.key == plan.tail_of:
                train, val = split_single_document(document, plan.tail_fraction)
                yield train, False
                yield val, True
            else:
                yield document, in_val[document.key]

    method = "documents by SHA-256 of their keys"
    if plan.tail_of:
        method = "tail of the largest document's lines; other documents train"
    elif plan.balanced:
        method += ", rebuilt in that order towards the requested share of bytes"
    return by_key(), method


def _warn_if_far(corpus: Corpus, scan: _Scan, plan: Split | None, counts: dict[str, dict[str, int]],
                 val_fraction: float) -> None:
    """Warn when the validation share of the bytes written is far from `val_fraction`, with the fix.

    Judged on what was written, since a split by lines can only approach the share its lines allow.
    """
    written = counts["train"]["bytes"] + counts["val"]["bytes"]
    share = counts["val"]["bytes"] / written if written else 0.0
    if not far_from_request(share, val_fraction):
        return
    if plan is None or plan.tail_of:
        where = f"the last lines of {plan.tail_of if plan else scan.keys[0]}"
        fix = "Use a longer text, with more lines, or another --val-fraction"
    else:
        val_keys = [key for key, is_val in zip(scan.keys, plan.in_val) if is_val]
        where = f"{len(val_keys)} of {len(scan.keys)} whole documents ({_names(val_keys)})"
        fix = "Split the corpus into more, smaller files (a book per chapter, say)"
        # A rebuilt split already aims at the request, so there another --val-fraction helps less than smaller files.
        if not plan.balanced:
            fix += f", or {'raise' if share < val_fraction else 'lower'} --val-fraction"
    log.warning("the validation split of %s contains %s of its bytes, far from the requested %s: it is %s. %s",
                corpus.source, _percent(share), _percent(val_fraction), where, fix)


def _percent(share: float) -> str:
    """Format a share as a percentage with two significant digits, so 0.00088 reads 0.088% and 0.101 reads 10%."""
    percent = 100 * share
    return f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%"  # .2g alone would print 100 as 1e+02


def _names(keys: list[str]) -> str:
    """Return up to NAMED_DOCUMENTS keys joined by commas, with how many more there are, or "none"."""
    listed = ", ".join(keys[:NAMED_DOCUMENTS]) or "none"
    return listed if len(keys) <= NAMED_DOCUMENTS else f"{listed} and {len(keys) - NAMED_DOCUMENTS} more"


def _build_tokenizer(
    name: str, vocab_size: int, corpus: Corpus, scan: _Scan, plan: Split | None, val_fraction: float
) -> Tokenizer:
    if name == "bytes":
        return ByteTokenizer()
    documents, _ = _split_documents(corpus, scan, plan, val_fraction)
    training_texts = (document.text for document, is_val in documents if not is_val)
    log.info("training byte-level BPE with %d tokens on the training split of %s", vocab_size, corpus.source)
    return BpeTokenizer.train(training_texts, vocab_size, length=len(scan.keys))


def _write_prepared(
    corpus: Corpus, scan: _Scan, plan: Split | None, folder: Path, tokenizer_name: str, vocab_size: int,
    val_fraction: float, progress: bool,
) -> dict[str, Any]:
    """Tokenize every document into folder/train.bin and folder/val.bin, save the tokenizer, return the meta."""
    tokenizer = _build_tokenizer(tokenizer_name, vocab_size, corpus, scan, plan, val_fraction)
    tokenizer.save(folder)
    dtype = token_dtype(tokenizer.vocab_size)
    eot = np.asarray([tokenizer.eot_id], dtype=dtype)
    documents, split_method = _split_documents(corpus, scan, plan, val_fraction)

    counts = {split: {"documents": 0, "bytes": 0, "tokens": 0} for split in ("train", "val")}
    n_documents = len(scan.keys) + 1 if plan is None or plan.tail_of else len(scan.keys)  # a split one counts twice
    columns = (TextColumn("tokenizing documents"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        open(folder / TRAIN_FILE, "wb") as train_file,
        open(folder / VAL_FILE, "wb") as val_file,
        Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar,
    ):
        task = bar.add_task("tokenize", total=n_documents)
        val_keys: list[str] = []  # the first VALIDATION_DOCUMENTS_LISTED + 1, to name them in meta.json
        files = {"train": train_file, "val": val_file}
        for chunk in _chunks(documents, tokenizer):
            for (document, is_val), ids in chunk:
                split = "val" if is_val else "train"
                files[split].write(ids.astype(dtype, copy=False).tobytes())
                files[split].write(eot.tobytes())
                counts[split]["documents"] += 1
                counts[split]["bytes"] += len(document.text.encode("utf-8"))
                counts[split]["tokens"] += len(ids) + 1
                if is_val and len(val_keys) <= VALIDATION_DOCUMENTS_LISTED:
                    val_keys.append(document.key)
            bar.advance(task, len(chunk))

    _warn_if_far(corpus, scan, plan, counts, val_fraction)
    split_meta: dict[str, Any] = {"method": split_method, "val_fraction": float(val_fraction)}
    if len(val_keys) <= VALIDATION_DOCUMENTS_LISTED:
        # With few documents, validation loss measures those documents only: name them.
        split_meta["validation_documents"] = sorted(val_keys)
    if plan is not None and plan.balanced:  # only then, so the meta of every other corpus reads as before
        split_meta.update(moved_to_validation=plan.moved_in, moved_to_training=plan.moved_out)
        if plan.tail_of:
            split_meta["validation_tail_of"] = plan.tail_of
    return {
        "format": FORMAT_VERSION,
        "source": corpus.source,
        "source_kind": corpus.kind,
        "source_root": os.path.abspath(corpus.root),  # normalised: no "..", as a user would write the path
        "text_field": corpus.text_field,
        "split": split_meta,
        "documents": {split: counts[split]["documents"] for split in counts},
        "bytes": {split: counts[split]["bytes"] for split in counts},
        "tokens": {split: counts[split]["tokens"] for split in counts},
        "val_bytes": counts["val"]["bytes"],
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "eot_id": tokenizer.eot_id,
        "documents_skipped_empty": scan.empty,
        "documents_with_invalid_utf8": scan.invalid_utf8,
        "documents_with_nul": scan.had_nul,
    }


def _chunks(
    documents: Iterator[tuple[Document, bool]], tokenizer: Tokenizer
) -> Iterator[list[tuple[tuple[Document, bool], np.ndarray]]]:
    """Yield lists of ((document, is_validation), token ids); BPE encodes each list in one parallel batch."""
    if not isinstance(tokenizer, BpeTokenizer):
        for item in documents:
            yield [(item, tokenizer.encode(item[0].text))]
        return

    pending: list[tuple[Document, bool]] = []
    pending_chars = 0
    for item in documents:
        pending.append(item)
        pending_chars += len(item[0].text)
        if pending_chars >= BPE_BATCH_CHARS:
            yield list(zip(pending, tokenizer.encode_batch([document.text for document, _ in pending])))
            pending, pending_chars = [], 0
    if pending:
        yield list(zip(pending, tokenizer.encode_batch([document.text for document, _ in pending])))


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_token_files(folder: Path, meta: Mapping[str, Any]) -> str | None:
    """Return what is wrong with the token files of `folder` against `meta`, or None when they match."""
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        expected = {TRAIN_FILE: meta["tokens"]["train"], VAL_FILE: meta["tokens"]["val"]}
    except (KeyError, TypeError) as error:
        return f"{META_FILE} lacks {error}"
    for name, tokens in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != tokens * itemsize:
            return f"{name} has {path.stat().st_size} bytes, expected {tokens * itemsize}"
    return None


def _reusable_meta(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """Return the meta of `folder` when it is a complete corpus with `fingerprint`, else None."""
    meta = _read_meta(folder)
    if meta is None:
        return None
    if meta.get("fingerprint") != fingerprint:
        log.info("prepared corpus at %s is out of date (fingerprint %s, now %s); preparing it again",
                 folder, meta.get("fingerprint"), fingerprint)
        return None
    problem = _check_token_files(folder, meta)
    if problem:
        log.warning("prepared corpus at %s is incomplete (%s); preparing it again", folder, problem)
        return None
    return meta


def _check_replaceable(out: Path) -> None:
    """Raise UserError if `out` exists and is neither empty nor a prepared corpus, so user files are never deleted."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder; choose another --out folder")
    entries = {entry.name for entry in out.iterdir()}
    if entries and META_FILE not in entries:
        raise UserError(
            f"output folder {out} is not empty and contains no prepared corpus ({META_FILE} is missing); "
            "choose a new or empty --out folder"
        )


def _install(staging: Path, out: Path) -> None:
    """Move the complete `staging` folder to `out`, replacing an older prepared corpus there.

    An older corpus of other content (its source was edited) is kept beside it as `<out>.<old fingerprint>`:
    runs trained on those tokens may still need them, and the edited source can no longer give them back.
    """
    retired = None
    if out.exists():
        old_fingerprint = (_read_meta(out) or {}).get("fingerprint")
        new_fingerprint = (_read_meta(staging) or {}).get("fingerprint")
        old_folder = out.with_name(f"{out.name}.{old_fingerprint}") if isinstance(old_fingerprint, str) else None
        if old_folder is not None and old_fingerprint != new_fingerprint and not old_folder.exists():
            out.rename(old_folder)
            log.warning("the source of the prepared corpus %s changed since it was prepared (fingerprint %s, now "
                        "%s); kept the old tokens in %s for the runs trained on them, delete that folder when no "
                        "run needs it", out, old_fingerprint, new_fingerprint, old_folder)
        else:
            retired = out.with_name(f".{out.name}.retired-{uuid.uuid4().hex[:8]}")
            out.rename(retired)
    staging.rename(out)
    if retired is not None:
        # Processes that still map the old token files keep reading them: unlinked files live until closed.
        shutil.rmtree(retired, ignore_errors=True)


def _umask() -> int | None:
    """Return this process's umask from /proc/self/status (Linux), or None where that file does not report it.

    Setting a new umask to learn the old one would change it for every thread for a moment.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _open_private_folder(folder: Path) -> None:
    """Give a reused folder that earlier versions left at mode 0700 the mode the umask gives a new folder.

    Those versions staged the folder with tempfile.mkdtemp, which made it private regardless of the umask.
    """
    umask = _umask()
    if umask is None or stat.S_IMODE(folder.stat().st_mode) != 0o700:
        return
    mode = 0o777 & ~umask
    if mode == 0o700:
        return
    try:
        folder.chmod(mode)
    except OSError as error:
        log.warning("prepared corpus at %s is readable by its owner only (mode 0700) and could not be changed to "
                    "%04o (%s); run `chmod %04o %s`", folder, mode, error, mode, folder)
        return
    log.info("changed the mode of prepared corpus folder %s from 0700 to %04o, as the umask %04o gives new folders",
             folder, mode, umask)


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
