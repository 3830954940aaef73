"""The machine a benchmark ran on, named beside its figures (timings mean little without it).

This project's benchmarks run on small shared machines where other jobs (training runs, other
benchmarks) take CPU time too, so each report carries the load average, sampled while it ran.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (runnable processes, this one's threads included)."""
    return os.getloadavg()[0]


def describe() -> str:
    """One line naming the machine and how busy it is now."""
    one, five, fifteen = os.getloadavg()
    return (
        f"machine: {cpu_model()}, {cores()} cores; load average {one:.1f} / {five:.1f} / "
        f"{fifteen:.1f} (1 / 5 / 15 min)"
    )


@dataclass
class LoadLog:
    """1-minute load averages sampled during a benchmark, for the line printed beside it."""

    samples: list[float] = field(default_factory=list)

    def sample(self) -> float:
        value = load_average()
        self.samples.append(value)
        return value

    def summary(self) -> str:
        if not self.samples:
            return "load average not sampled"
        low, high = min(self.samples), max(self.samples)
        mean = sum(self.samples) / len(self.samples)
        return f"load average during the run {low:.1f} to {high:.1f} (mean {mean:.1f})"


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB -> MB
    raise OSError(f"no VmRSS for process {pid}")
