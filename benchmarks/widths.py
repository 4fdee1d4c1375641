"""The `--sizes` option of the benchmarks whose models have heads of 32: a comma-separated list of d_model."""

from __future__ import annotations

HEAD_DIM = 32


def parse_widths(text: str) -> list[int]:
    """Return the d_model values listed in `text` ("64,512"); raise ValueError unless each is a multiple of
    HEAD_DIM."""
    try:
        widths = [int(width) for width in text.split(",")]
    except ValueError:
        widths = []
    if not widths or any(width < HEAD_DIM or width % HEAD_DIM for width in widths):
        raise ValueError(f"--sizes {text!r} must list multiples of {HEAD_DIM} (heads of {HEAD_DIM}), e.g. 64,512")
    return widths
