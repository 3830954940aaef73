"""docs/protocol.md's coverage table names every GA Realtime event of the installed openai SDK,
and every client event it calls supported is served by a real server."""

from __future__ import annotations

import asyncio
import json
import re
import typing
from pathlib import Path

import websockets

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
STATUSES = {"supported", "not sent", "not applicable"}


def _event_types(union: object) -> set[str]:
    """The ``type`` literals of a union of the SDK's event models."""
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    kinds = set()
    for model in typing.get_args(union):
        if typing.get_origin(model) is typing.Annotated:
            model = typing.get_args(model)[0]
        kinds.update(typing.get_args(model.model_fields["type"].annotation))
    return kinds


def _table() -> dict[tuple[str, str], str]:
    """(event, client|server) -> status, from the coverage table."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### Coverage of the GA events", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z_.]+)` \| (client|server) \| ([a-z ]+) \|", section, re.M)
    table = {(event, side): status for event, side, status in rows}
    assert len(table) == len(rows), "an event is listed twice"
    return table


def test_the_table_lists_every_event_of_the_installed_sdk():
    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

    table = _table()
    assert set(table.values()) <= STATUSES
    for side, union in (("client", RealtimeClientEvent), ("server", RealtimeServerEvent)):
        listed = {event for event, s in table if s == side}
        sdk = _event_types(union)
        assert sdk - listed == set(), f"{side} events missing from docs/protocol.md"
        assert listed - sdk == set(), f"{side} events in docs/protocol.md the SDK lacks"


def test_every_supported_client_event_is_served(server):
    supported = sorted(
        e for (e, side), s in _table().items() if side == "client" and s == "supported"
    )

    async def run() -> list[dict]:
        url = f"ws://{server.host}:{server.port}/v1/realtime?model=mooer"
        async with websockets.connect(url, max_size=None) as ws:
            for kind in supported:
                await ws.send(json.dumps({"type": kind, "event_id": kind}))
            await ws.send(json.dumps({"type": "session.update", "session": {}, "event_id": "end"}))
            events = []
            while not events or events[-1]["type"] != "session.updated":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return events

    errors = [e["error"] for e in asyncio.run(run()) if e["type"] == "error"]
    assert not [e for e in errors if e["code"] in ("unknown_event", "unsupported_event")]
    assert {e["event_id"] for e in errors} <= set(supported)  # each names its event
