"""Published dense bfloat16 peaks of common accelerators, for model FLOPs utilisation (MFU) on them.

MFU on an accelerator is usually quoted against the vendor's peak rate. Vendors often print matrix rates
"with sparsity", which 2:4 structured sparsity doubles. The values here are the dense ones, half of those.

`published_bf16_peak(device_kind)` matches the `device_kind` string JAX reports (for example "NVIDIA H100
80GB HBM3", "NVIDIA H200", "TPU v5 lite") against the table, most specific entry first. On a chip not in
the table it returns None, so that a benchmark requests the peak instead of guessing it. The NVL boards of
the H100 and H200 run at lower clocks than the SXM parts; their peaks are not in the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedPeak:
    name: str  # the part, as its datasheet names it
    bf16_flops: float  # dense bfloat16 matrix FLOP/s of one chip
    source: str  # where the number is printed


H100_SOURCE = "NVIDIA H100 Tensor Core GPU datasheet (BF16 Tensor Core, half the 'with sparsity' figure)"
H200_SOURCE = "NVIDIA H200 Tensor Core GPU datasheet (BF16 Tensor Core, half the 'with sparsity' figure)"
A100_SOURCE = "NVIDIA A100 Tensor Core GPU datasheet (BFLOAT16 Tensor Core, dense)"
TPU_SOURCE = "Google Cloud TPU system architecture pages (peak compute per chip, bf16)"

# (lower-case substrings that must all appear in device_kind, peak), most specific first. A peak of None
# marks a variant whose name contains a known part's but whose peak differs and is not recorded here.
_TABLE: tuple[tuple[tuple[str, ...], PublishedPeak | None], ...] = (
    (("h200", "nvl"), None),
    (("h200",), PublishedPeak("H200 SXM", 989.5e12, H200_SOURCE)),
    (("h100", "nvl"), None),
    (("h100", "pcie"), PublishedPeak("H100 PCIe", 756.5e12, H100_SOURCE)),
    (("h100",), PublishedPeak("H100 SXM", 989.5e12, H100_SOURCE)),
    (("a100",), PublishedPeak("A100", 312e12, A100_SOURCE)),
    (("tpu v4",), PublishedPeak("TPU v4", 275e12, TPU_SOURCE)),
    (("tpu v5 lite",), PublishedPeak("TPU v5e", 197e12, TPU_SOURCE)),
    (("tpu v5e",), PublishedPeak("TPU v5e", 197e12, TPU_SOURCE)),
    (("tpu v5p",), PublishedPeak("TPU v5p", 459e12, TPU_SOURCE)),
    (("tpu v5",), PublishedPeak("TPU v5p", 459e12, TPU_SOURCE)),
    (("tpu v6 lite",), PublishedPeak("TPU v6e", 918e12, TPU_SOURCE)),
    (("tpu v6e",), PublishedPeak("TPU v6e", 918e12, TPU_SOURCE)),
)


def published_bf16_peak(device_kind: str) -> PublishedPeak | None:
    """Return the published dense bfloat16 peak of the chip JAX names `device_kind`, or None if unknown."""
    kind = device_kind.lower()
    for needles, peak in _TABLE:
        if all(needle in kind for needle in needles):
            return peak
    return None


def known_parts() -> list[str]:
    """Return the names of the parts in the table, for error messages."""
    return list(dict.fromkeys(peak.name for _, peak in _TABLE if peak is not None))


def devices_peak_flops(devices) -> float | None:
    """Return the summed published bfloat16 peak of `devices`, or None unless every one is a known GPU or TPU."""
    total = 0.0
    for device in devices:
        peak = published_bf16_peak(device.device_kind) if device.platform in ("gpu", "cuda", "rocm", "tpu") else None
        if peak is None:
            return None
        total += peak.bf16_flops
    return total or None
