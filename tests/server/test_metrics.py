from __future__ import annotations

import math

from mooer.server.metrics import Metrics


def _lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


def test_counters_and_gauges_render_per_label_set():
    m = Metrics()
    m.sessions_total.inc(protocol="realtime")
    m.sessions_total.inc(protocol="realtime")
    m.sessions_total.inc(protocol="funasr")
    m.sessions_active.inc(protocol="realtime")
    m.sessions_active.dec(protocol="realtime")
    m.audio_seconds.inc(1.5, protocol="http")
    text = m.render()
    assert "# TYPE mooer_sessions_total counter" in text
    assert "# TYPE mooer_sessions_active gauge" in text
    assert _lines(text, "mooer_sessions_total") == [
        'mooer_sessions_total{protocol="realtime"} 2',
        'mooer_sessions_total{protocol="funasr"} 1',
    ]
    assert _lines(text, "mooer_sessions_active") == ['mooer_sessions_active{protocol="realtime"} 0']
    assert _lines(text, "mooer_audio_seconds_total") == [
        'mooer_audio_seconds_total{protocol="http"} 1.5'
    ]
    assert text.endswith("\n")


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    m = Metrics()
    for value in (0.04, 0.3, 0.3, 100.0):
        m.final_latency.observe(value, protocol="realtime")
    lines = _lines(m.render(), "mooer_final_latency_seconds")
    buckets = {
        line.split('le="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
        for line in lines
        if "_bucket" in line
    }
    assert buckets["0.05"] == 1 and buckets["0.25"] == 1 and buckets["0.5"] == 3
    assert buckets["30"] == 3 and buckets["+Inf"] == 4
    assert 'mooer_final_latency_seconds_count{protocol="realtime"} 4' in lines
    total = next(line for line in lines if "_sum" in line).rsplit(" ", 1)[1]
    assert math.isclose(float(total), 100.64)
    assert m.final_latency.count(protocol="realtime") == 4


def test_label_values_are_escaped():
    m = Metrics()
    m.errors.inc(code='bad "quote"\\\n')
    assert 'mooer_errors_total{code="bad \\"quote\\"\\\\\\n"} 1' in m.render()


def test_docs_list_every_series_with_its_type():
    """docs/protocol.md's metrics table is what operators build dashboards from."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`mooer_"):
            rows[cells[0].strip("`")] = cells[1]
    kinds = {}
    for line in Metrics().render().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            kinds[name] = kind
    assert rows == kinds
