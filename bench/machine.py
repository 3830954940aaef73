"""The machine a benchmark ran on, named beside its figures (timings mean little without it).

This project's benchmarks run on small shared machines where other jobs (training runs, other
benchmarks) take CPU time too, so each report carries the load average, sampled while it ran.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from mooer.agent.engine import available_cores


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


def load_average() -> float:
    """The 1-minute load average (runnable processes, this one's threads included)."""
    return os.getloadavg()[0]


def describe() -> str:
    """One line naming the machine and how busy it is now."""
    one, five, fifteen = os.getloadavg()
    return (
        f"machine: {cpu_model()}, {available_cores()} cores; load average {one:.1f} / {five:.1f} / "
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


@dataclass(frozen=True)
class CpuShare:
    """How much CPU a process got over an interval, in cores (1.0: one core all the time)."""

    process: float  # all its threads
    worker: float  # its busiest thread but the main one (a mooer server's or engine's model worker)
    worker_waiting: float  # that thread runnable but waiting for a CPU other work held
    main: float = math.nan  # its main thread (a mooer server's event loop)


class CpuWatch:
    """Per-thread CPU time and run-queue wait of process ``pid`` between two moments.

    Linux's schedstat counts, per thread, the time spent on a CPU and the time spent ready to
    run but waiting for one; the latter shows how much a shared machine held a benchmark back.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self._start = time.perf_counter()
        self._times = self._read()

    def _read(self) -> dict[int, tuple[int, int]]:
        """Thread id -> (ns on a CPU, ns waiting for one)."""
        times = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                run_ns, wait_ns = (task / "schedstat").read_text().split()[:2]
            except (OSError, ValueError):  # the thread ended meanwhile
                continue
            times[int(task.name)] = (int(run_ns), int(wait_ns))
        return times

    def share(self) -> CpuShare:
        """The share since this watch began (or since the last ``share`` call), then restart."""
        now, times = time.perf_counter(), self._read()
        wall_ns = (now - self._start) * 1e9
        deltas = {
            tid: (run - self._times.get(tid, (0, 0))[0], wait - self._times.get(tid, (0, 0))[1])
            for tid, (run, wait) in times.items()
        }
        self._start, self._times = now, times
        busiest = max((d for tid, d in deltas.items() if tid != self.pid), default=(0, 0))
        return CpuShare(
            process=sum(run for run, _ in deltas.values()) / wall_ns,
            worker=busiest[0] / wall_ns,
            worker_waiting=busiest[1] / wall_ns,
            main=deltas.get(self.pid, (0, 0))[0] / wall_ns,
        )
