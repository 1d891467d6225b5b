"""Shared summary of a torch.profiler run for the benchmarks."""

from __future__ import annotations

from typing import Any


def op_summary(events: Any, per: int, top: int, cuda: bool, unit: str = "step") -> dict:
    """Operations issued, device kernel time and the costliest operations, per ``unit``.

    ``events``: ``profile.key_averages()``; ``per``: how many units (steps, runs)
    the profile covered, so that every figure is per unit. Rows read
    ``"<ms> ms <calls>x <operation>"``.
    """
    per = max(1, int(per))
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::")) / per

    def table(key: str) -> list[str]:
        rows = sorted(events, key=lambda e: -getattr(e, key, 0.0))[:top]
        return [f"{getattr(e, key, 0.0) / per / 1000:8.3f} ms {e.count // per:5d}x {e.key}"
                for e in rows]

    out: dict[str, Any] = {f"aten_calls_per_{unit}": round(aten_calls, 1),  # nested included
                           f"host_ms_per_{unit}_by_op": table("self_cpu_time_total")}
    if cuda:
        device_us = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / per
        out[f"device_kernel_ms_per_{unit}"] = round(device_us / 1000, 2)
        out[f"device_ms_per_{unit}_by_op"] = table("self_device_time_total")
    return out


def status_mb(key: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Restart the peak-RSS count from the current RSS (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak_rss` (whole life elsewhere)."""
    import resource

    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rss_mb() -> float:
    """Resident memory now (the peak where the current figure is not known)."""
    current = status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()
