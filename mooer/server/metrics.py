"""Counters, gauges and histograms rendered in Prometheus' text format for ``GET /metrics``.

Small on purpose (no client library): the server needs a handful of series, updated from the
event loop and, for a few, from worker threads, hence the lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _render_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    esc = (v.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, esc)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        self.name = name
        self.help = help_text
        self._lock = lock
        self.constant: Labels = ()  # on every series (the replica, behind Ray Serve)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing number per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_labels(labels), 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        lines += [
            f"{self.name}{_render_labels(self.constant + k)} {_number(v)}"
            for k, v in self._values.items()
        ]
        return lines


class Gauge(Counter):
    """A number that goes up and down (live sessions)."""

    kind = "gauge"

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, lock: threading.Lock, buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, lock)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * len(self.buckets), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(_labels(labels))
            return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = self.header()
        for own, (counts, total) in self._series.items():
            key = self.constant + own
            running = 0
            for bound, n in zip(self.buckets, counts):
                running += n
                le = (("le", _number(bound)),)
                lines.append(f"{self.name}_bucket{_render_labels(key, le)} {running}")
            lines.append(f"{self.name}_sum{_render_labels(key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_render_labels(key)} {running}")
        return lines


class Metrics:
    """The server's series. Label ``protocol`` is realtime, translation, funasr or http;
    ``constant`` labels go on every series (``replica``, so Prometheus keeps replicas apart)."""

    def __init__(self, constant: dict[str, str] | None = None) -> None:
        lock = threading.Lock()
        self._lock = lock
        self.sessions_active = Gauge("mooer_sessions_active", "Live websocket sessions.", lock)
        self.sessions_total = Counter(
            "mooer_sessions_total", "Websocket sessions accepted since start.", lock
        )
        self.sessions_refused = Counter(
            "mooer_sessions_refused_total",
            "Connections refused, by reason (auth, origin, limit, shutdown).",
            lock,
        )
        self.audio_seconds = Counter(
            "mooer_audio_seconds_total", "Seconds of audio received, by protocol.", lock
        )
        self.final_latency = Histogram(
            "mooer_final_latency_seconds",
            "From the end of an utterance (speech stopped or commit) to its final transcript.",
            lock,
            LATENCY_BUCKETS,
        )
        self.final_stage = Histogram(
            "mooer_final_stage_seconds",
            "Where the wait for a live final went, by stage: endpoint (the pause heard before "
            "the utterance was ended, audio time), queued (to its decode starting), decode.",
            lock,
            LATENCY_BUCKETS,
        )
        self.early_finals = Counter(
            "mooer_early_finals_total",
            "Live finals decoded early, in the pause that then ended their utterance, by protocol.",
            lock,
        )
        self.request_latency = Histogram(
            "mooer_http_request_seconds",
            "Time to answer an HTTP transcription or translation request.",
            lock,
            LATENCY_BUCKETS,
        )
        self.requests = Counter(
            "mooer_http_requests_total", "HTTP API requests, by route and status code.", lock
        )
        self.errors = Counter(
            "mooer_errors_total", "Error events and error responses sent, by code.", lock
        )
        self.text_revisions = Counter(
            "mooer_text_revisions_total",
            "Finals that contradicted text already sent on an append-only stream (the client "
            "keeps the retracted words), by protocol.",
            lock,
        )
        self._all: list[_Metric] = [
            self.sessions_active,
            self.sessions_total,
            self.sessions_refused,
            self.audio_seconds,
            self.final_latency,
            self.final_stage,
            self.early_finals,
            self.request_latency,
            self.requests,
            self.errors,
            self.text_revisions,
        ]
        for metric in self._all:
            metric.constant = _labels(constant or {})

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        with self._lock:
            lines = [line for metric in self._all for line in metric.render()]
        return "\n".join(lines) + "\n"
