"""Choosing the torch device: ``auto`` prefers CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``auto``/``cuda``/``mps``/``cpu`` (or ``cuda:1``).

    Asking for a GPU that this machine does not have raises ``RuntimeError`` with
    a message that says what to choose instead.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was asked for but no CUDA GPU is available here; "
                "use device 'auto' or 'cpu'"
            )
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise RuntimeError(
                "device 'mps' was asked for but Apple MPS is not available here; "
                "use device 'auto' or 'cpu'"
            )
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}: use auto, cuda, mps or cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def fast_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively, so inference may run in it.

    CUDA: what the GPU reports. CPU: the AVX-512 BF16 or AMX instructions (recent
    Intel and AMD server and desktop chips); without them bfloat16 is emulated and
    slower than float32. Anything else: no.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a probe this torch lacks or cannot run: not fast
            continue
    return False


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished all its queued work (CPU: nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def describe(device: torch.device) -> str:
    """A short human description, e.g. ``cuda (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
