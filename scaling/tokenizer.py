"""Tokenizers: raw UTF-8 bytes, or byte-level BPE trained with Hugging Face `tokenizers`.

Both share one interface: `encode(text) -> np.ndarray`, `decode(ids) -> str`, `vocab_size`, `eot_id`
(the end-of-document token placed after every document), `dtype` (the smallest unsigned integer type that
fits every id), `token_byte_lengths` (UTF-8 bytes each token stands for, 0 for the end-of-document token)
and `save(folder)`. `load_tokenizer(folder)` reads either kind back.

`token_byte_lengths` makes bits per byte exact for any window of tokens: the bytes a window covers are the
sum of its tokens' lengths, so no window has to be decoded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scaling.errors import UserError

log = logging.getLogger(__name__)

TOKENIZERS = ("bytes", "bpe")
DESCRIPTOR_FILE = "tokenizer.json"  # our own record: kind, vocabulary size, end-of-document id
BPE_MODEL_FILE = "bpe.json"  # the Hugging Face `tokenizers` serialisation of a trained BPE model
EOT_TEXT = "<|endoftext|>"  # the BPE end-of-document special token
BYTE_EOT_ID = 0  # NUL: see ByteTokenizer
NUL_REPLACEMENT = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER replaces NUL characters inside text
MIN_BPE_VOCAB = 257  # the 256 byte symbols of byte-level BPE plus the end-of-document token
MAX_VOCAB = 2**31 - 1  # batches hold ids as int32


def token_dtype(vocab_size: int) -> np.dtype:
    """Return the smallest unsigned integer dtype that fits ids 0 .. vocab_size - 1."""
    if vocab_size <= 2**8:
        return np.dtype(np.uint8)
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def replace_nul(text: str) -> str:
    """Return `text` with every NUL character replaced by U+FFFD, so NUL can mark the end of a document."""
    return text.replace("\0", NUL_REPLACEMENT) if "\0" in text else text


class Tokenizer(Protocol):
    """Interface of a tokenizer as the data pipeline, the trainer and generation use it."""

    name: str  # "bytes" or "bpe"

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def token_byte_lengths(self) -> np.ndarray: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int] | np.ndarray) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def save(self, folder: str | Path) -> None: ...


class ByteTokenizer:
    """Tokens are the 256 byte values of the UTF-8 encoding; byte 0 (NUL) marks the end of a document.

    NUL does not occur in text files, and `encode` replaces any NUL character in its input by U+FFFD, so a
    0 in a token stream is always a document boundary. Decoding skips it.
    """

    name = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def eot_id(self) -> int:
        return BYTE_EOT_ID

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @cached_property
    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes per token, shape [256] int64: 1 for every byte, 0 for the end-of-document token."""
        lengths = np.ones(self.vocab_size, dtype=np.int64)
        lengths[self.eot_id] = 0
        return lengths

    def encode(self, text: str) -> np.ndarray:
        """Return the UTF-8 bytes of `text` as uint8 ids (NUL characters become U+FFFD first)."""
        return np.frombuffer(replace_nul(text).encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Return the text of `ids`, skipping end-of-document tokens; invalid UTF-8 decodes to U+FFFD."""
        array = _as_id_array(ids, self.vocab_size)
        return array[array != self.eot_id].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}

    def save(self, folder: str | Path) -> None:
        _write_descriptor(Path(folder), {**self.settings(), "eot_id": self.eot_id})

    @classmethod
    def load(cls, folder: str | Path) -> ByteTokenizer:
        _read_descriptor(Path(folder), expected="bytes")
        return cls()


class BpeTokenizer:
    """Byte-level BPE from Hugging Face `tokenizers`, with `<|endoftext|>` as the end-of-document token.

    The literal text `<|endoftext|>` inside a document is encoded as ordinary bytes, never as the special
    token, so only the pipeline places end-of-document tokens. Decoding skips them.
    """

    name = "bpe"

    def __init__(self, hf_tokenizer: Any) -> None:
        # Without this flag, `tokenizers` would turn "<|endoftext|>" written in a document into the special
        # token. The flag is not part of the saved JSON (checked with tokenizers 0.23), so set it on every load.
        hf_tokenizer.encode_special_tokens = True
        self._hf = hf_tokenizer
        eot = hf_tokenizer.token_to_id(EOT_TEXT)
        if eot is None:
            raise UserError(f"BPE tokenizer has no {EOT_TEXT} token; re-run `scaling data prepare --force`")
        self._eot_id = int(eot)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, length: int | None = None) -> BpeTokenizer:
        """Train byte-level BPE on `texts` up to `vocab_size` tokens, the end-of-document token included.

        A small corpus may stop with fewer merges, so the trained `vocab_size` can be below the request.
        """
        check_bpe_vocab_size(vocab_size)
        tk = import_hf_tokenizers()
        hf = tk.Tokenizer(tk.models.BPE())
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],  # first special token, so it gets id 0
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
            show_progress=False,
        )
        hf.train_from_iterator((replace_nul(text) for text in texts), trainer=trainer, length=length)
        tokenizer = cls(hf)
        if tokenizer.vocab_size < vocab_size:
            log.info("BPE training stopped at %d tokens of the %d requested: the corpus has no more merges",
                     tokenizer.vocab_size, vocab_size)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    @property
    def eot_id(self) -> int:
        return self._eot_id

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @cached_property
    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes per token, shape [vocab_size] int64, 0 for the end-of-document token.

        Byte-level BPE spells each byte as one printable character, so a token's length in bytes is the
        length of its vocabulary string. Every character is checked against that alphabet.
        """
        alphabet = set(import_hf_tokenizers().pre_tokenizers.ByteLevel.alphabet())
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, index in self._hf.get_vocab(with_added_tokens=True).items():
            if index == self.eot_id:
                continue
            if not set(token) <= alphabet:
                raise ValueError(f"BPE token {token!r} (id {index}) is not in the byte-level alphabet")
            lengths[index] = len(token)
        return lengths

    def encode(self, text: str) -> np.ndarray:
        """Return the token ids of `text` in `self.dtype` (NUL characters become U+FFFD first)."""
        return np.asarray(self._hf.encode(replace_nul(text), add_special_tokens=False).ids, dtype=self.dtype)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Encode many texts at once; `tokenizers` spreads the work over the CPU cores."""
        cleaned = [replace_nul(text) for text in texts]
        # encode_batch_fast skips character offsets, which nothing here uses (tokenizers >= 0.21).
        encode_many = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        encodings = encode_many(cleaned, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=self.dtype) for encoding in encodings]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Return the text of `ids`, skipping end-of-document tokens; invalid UTF-8 decodes to U+FFFD."""
        array = _as_id_array(ids, self.vocab_size)
        return self._hf.decode(array.tolist(), skip_special_tokens=True)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(folder / BPE_MODEL_FILE))
        _write_descriptor(folder, {**self.settings(), "eot_id": self.eot_id, "model_file": BPE_MODEL_FILE})

    @classmethod
    def load(cls, folder: str | Path) -> BpeTokenizer:
        folder = Path(folder)
        descriptor = _read_descriptor(folder, expected="bpe")
        model_path = folder / descriptor.get("model_file", BPE_MODEL_FILE)
        if not model_path.is_file():
            raise UserError(f"BPE model {model_path} is missing; re-run `scaling data prepare --force`")
        return cls(import_hf_tokenizers().Tokenizer.from_file(str(model_path)))


def import_hf_tokenizers() -> Any:
    """Import Hugging Face `tokenizers` on first use, so byte-level runs do not need it installed."""
    try:
        import tokenizers
    except ImportError as error:
        raise UserError(
            "the bpe tokenizer needs the Hugging Face `tokenizers` package; install it with "
            "pip install -e '.[hf]' or use --tokenizer bytes"
        ) from error
    # The submodules are imported explicitly because `import tokenizers` alone does not promise them.
    import tokenizers.decoders
    import tokenizers.models
    import tokenizers.pre_tokenizers
    import tokenizers.trainers

    return tokenizers


def check_bpe_vocab_size(vocab_size: int) -> None:
    """Raise UserError unless `vocab_size` fits byte-level BPE: at least 257, at most 2**31 - 1."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise UserError(f"vocab_size={vocab_size!r} must be an integer; try 4096")
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UserError(
            f"vocab_size={vocab_size} is out of range for byte-level BPE; "
            f"choose between {MIN_BPE_VOCAB} (256 bytes + end-of-document) and {MAX_VOCAB}, e.g. 4096"
        )


def check_tokenizer_name(name: str) -> None:
    """Raise UserError unless `name` is one of TOKENIZERS."""
    if name not in TOKENIZERS:
        raise UserError(f"tokenizer {name!r} is unknown; choose one of: {', '.join(TOKENIZERS)}")


def load_tokenizer(folder: str | Path) -> ByteTokenizer | BpeTokenizer:
    """Load the tokenizer saved in `folder` by `save`, whichever kind it is."""
    descriptor = _read_descriptor(Path(folder), expected=None)
    if descriptor["name"] == "bytes":
        return ByteTokenizer.load(folder)
    return BpeTokenizer.load(folder)


def _as_id_array(ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got range [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def _write_descriptor(folder: Path, descriptor: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DESCRIPTOR_FILE).write_text(json.dumps(descriptor, indent=2, sort_keys=True) + "\n")


def _read_descriptor(folder: Path, expected: str | None) -> dict[str, Any]:
    path = folder / DESCRIPTOR_FILE
    if not path.is_file():
        raise UserError(f"no tokenizer found in {folder} ({DESCRIPTOR_FILE} is missing); run `scaling data prepare` first")
    try:
        descriptor = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); re-run `scaling data prepare --force`") from error
    name = descriptor.get("name")
    if name not in TOKENIZERS or (expected is not None and name != expected):
        wanted = expected or " or ".join(TOKENIZERS)
        raise UserError(f"{path} names tokenizer {name!r}, expected {wanted}; re-run `scaling data prepare --force`")
    return descriptor
