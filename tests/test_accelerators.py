"""Published accelerator peaks: the table's values, unknown chips, and the summed peak of a run's devices."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scaling.accelerators import devices_peak_flops, known_parts, published_bf16_peak


@pytest.mark.parametrize("device_kind, name, tflops", [
    # Device kinds as JAX reports them. Peaks are the datasheets' dense bf16 figures, half the sparse ones.
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
    ("NVIDIA H200", "H200 SXM", 989.5),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("TPU v4", "TPU v4", 275.0),
    ("TPU v5 lite", "TPU v5e", 197.0),
    ("TPU v5", "TPU v5p", 459.0),
    ("TPU v6 lite", "TPU v6e", 918.0),
])
def test_published_peak_of_known_chips(device_kind, name, tflops):
    peak = published_bf16_peak(device_kind)
    assert peak is not None and peak.name == name
    assert peak.bf16_flops == pytest.approx(tflops * 1e12)
    assert peak.source


@pytest.mark.parametrize("device_kind", ["cpu", "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", "",
                                         "NVIDIA H100 NVL", "NVIDIA H200 NVL"])
def test_unknown_chip_has_no_guessed_peak(device_kind):
    assert published_bf16_peak(device_kind) is None


def test_known_parts_are_listed_once():
    parts = known_parts()
    assert len(parts) == len(set(parts))
    assert "H100 SXM" in parts
    assert "TPU v5e" in parts


def device(platform: str, kind: str) -> SimpleNamespace:
    """Return a stand-in for a jax.Device: no GPU or TPU can run here, and only these two fields are read."""
    return SimpleNamespace(platform=platform, device_kind=kind)


def test_devices_peak_sums_known_chips():
    devices = [device("gpu", "NVIDIA H100 80GB HBM3")] * 4
    assert devices_peak_flops(devices) == pytest.approx(4 * 989.5e12)


@pytest.mark.parametrize("devices", [
    [device("cpu", "cpu")],
    [device("gpu", "NVIDIA H100 80GB HBM3"), device("gpu", "NVIDIA GeForce RTX 4090")],
    [],
])
def test_devices_peak_is_none_unless_all_known(devices):
    assert devices_peak_flops(devices) is None
