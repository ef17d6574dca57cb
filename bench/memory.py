"""Peak resident memory of a block of code (Linux): reset the high-water mark, run, read it back."""

from __future__ import annotations

import gc
from pathlib import Path


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> int:
    """Reset VmHWM to the current RSS; return the current RSS in bytes."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


def peak_since(base: int) -> int:
    """Peak RSS above ``base`` bytes since the last reset."""
    return max(0, _status("VmHWM") - base)
