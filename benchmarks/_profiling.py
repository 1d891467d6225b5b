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
