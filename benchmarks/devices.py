"""The device a benchmark runs on, and that device's roofline.

``--device`` on every benchmark that loads a model: default ``cuda`` when a GPU is visible, else ``cpu``.
On a GPU the roofline is the card's datasheet peak (dense bf16 tensor-core FLOP/s, no sparsity, and HBM
bandwidth) from ``KNOWN_GPUS``, matched on the name torch reports; an unknown card is said to be unknown
and no share of a roofline is printed for it. On a CPU the benchmarks measure the host's own peak.
"""
from __future__ import annotations

import sys

# (label, words that must all be in the reported name, words that must not be, bf16 dense TFLOP/s, HBM GB/s);
# the first match wins, so the more specific variants come first. Datasheet values (NVIDIA H100, H200 and A100).
KNOWN_GPUS = (
    ("H200 NVL", ("H200", "NVL"), (), 835.0, 4800.0),
    ("H200 SXM", ("H200",), (), 989.4, 4800.0),
    ("H100 NVL", ("H100", "NVL"), (), 835.0, 3900.0),
    ("H100 PCIe", ("H100", "PCIE"), (), 756.0, 2000.0),
    ("H100 SXM", ("H100",), (), 989.4, 3350.0),
    ("A100 PCIe 40GB", ("A100", "PCIE", "40GB"), (), 312.0, 1555.0),
    ("A100 PCIe 80GB", ("A100", "PCIE"), (), 312.0, 1935.0),
    ("A100 SXM 40GB", ("A100", "40GB"), (), 312.0, 1555.0),
    ("A100 SXM 80GB", ("A100",), (), 312.0, 2039.0),
)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> str:
    """The device to use (``None``: ``default_device()``); a CUDA device that is not there is one
    ``error:`` line and exit code 2, not a silent CPU run."""
    import torch

    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {device}: no CUDA device is visible; use --device cpu", file=sys.stderr)
        raise SystemExit(2)
    if not (device == "cpu" or device.startswith("cuda")):
        print(f"error: --device {device}: choose cpu, cuda or cuda:N", file=sys.stderr)
        raise SystemExit(2)
    return device


def gpu_roofline(name: str) -> tuple[str, float, float] | None:
    """(label, peak bf16 GFLOP/s, HBM GB/s) of a card from the name torch reports, or None when unknown."""
    upper = name.upper().replace("-", " ")
    for label, need, avoid, tflops, gbs in KNOWN_GPUS:
        if all(w in upper for w in need) and not any(w in upper for w in avoid):
            return label, tflops * 1e3, gbs
    return None


def gpu_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def describe(device: str) -> str:
    """One line: the device, and for a GPU its name and roofline (or that the card is not in the table)."""
    if not device.startswith("cuda"):
        return f"device {device} (the host CPU; its roofline is measured in this process)"
    name = gpu_name(device)
    known = gpu_roofline(name)
    if known is None:
        return (f"device {device}: {name}; roofline unknown (not in benchmarks/devices.py KNOWN_GPUS): "
                "no share of a roofline is printed")
    label, gflops, gbs = known
    return (f"device {device}: {name}; roofline of the {label}: {gflops / 1e3:.0f} TFLOP/s bf16 dense, "
            f"{gbs:.0f} GB/s HBM")


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work (a timer read after it then counts that work)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))
