"""Keys blanked in log lines, in every form a client sends them."""

from __future__ import annotations

import logging
import sys

import pytest

from mooer.server.logs import CLIENT_FAULTS, UVICORN_ACCEPTED, ServerLogFilter, redact

KEY = "sk-live-0123456789"


@pytest.mark.parametrize(
    "line",
    [
        f"GET /v1/models?api_key={KEY} HTTP/1.1",
        f"GET /v1/models?model=x&api_key={KEY}&intent=transcription HTTP/1.1",
        f"Authorization: Bearer {KEY}",
        f"Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.{KEY}",
        f'{{"mode": "offline", "api_key": "{KEY}"}}',
        f"the key was {KEY}",  # the configured key anywhere
        "GET /?api_key=sk-live-0123456789%2B HTTP/1.1",  # percent-encoded
    ],
)
def test_keys_are_redacted_in_every_form(line):
    clean = redact(line, KEY)
    assert "0123456789" not in clean and "[redacted]" in clean


def test_other_text_is_left_alone():
    hint = "send 'Authorization: Bearer KEY' (browsers: the api_key query parameter)"
    assert redact(hint, KEY) == hint
    assert redact("GET /health HTTP/1.1", KEY) == "GET /health HTTP/1.1"


def _record(name: str, msg: str, args: tuple) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


def test_filter_keeps_uvicorn_access_arguments_a_tuple_and_drops_its_early_accepted_line():
    secrets = ServerLogFilter(KEY)
    access = _record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", f"/?api_key={KEY}", "1.1", 200),
    )
    assert secrets.filter(access)
    assert access.args == ("1.2.3.4:5", "GET", "/?api_key=[redacted]", "1.1", 200)
    early = _record("uvicorn.error", UVICORN_ACCEPTED, ("1.2.3.4:5", f"/v1/realtime?api_key={KEY}"))
    assert not secrets.filter(early)
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        failed = logging.LogRecord(
            "mooer.server", logging.ERROR, __file__, 1, "x", (), sys.exc_info()
        )
    assert secrets.filter(failed) and KEY not in failed.exc_text


def test_a_clients_fault_logged_with_a_traceback_becomes_a_one_line_warning():
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        info = sys.exc_info()
    (fault,) = CLIENT_FAULTS
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, fault, (), info)
    assert ServerLogFilter(None).filter(record)
    assert (record.levelname, record.exc_info, record.exc_text) == ("WARNING", None, None)
    assert record.getMessage() == f"{fault} closed it with 1007"
