"""What the server's log lines may say: no API key, each websocket handshake's real outcome, and
no traceback for a client's fault.

Clients send keys where logs look: browsers in the URL (``?api_key=``, which uvicorn's access
lines print) or a subprotocol, SDKs in an ``Authorization`` header, FunASR clients in their
first JSON message. ``ServerLogFilter`` sits on every handler the server's lines pass through and
blanks keys in all those forms, plus the configured key wherever it appears.

uvicorn logs ``"WebSocket /path" [accepted]`` when the app accepts the socket, but mooer
accepts first and checks the key, origin and session limit after (so that a refused client
gets an error event it can show): that line is dropped, and ``log_handshake`` writes the
outcome instead, in the same form, once it is known.

uvicorn also logs a client's text frame that is not UTF-8 as an error with a traceback (it then
closes the connection with 1007, as RFC 6455 asks): that becomes a one-line warning.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from starlette.websockets import WebSocket

REDACTED = "[redacted]"
# (what precedes a key, the key): query parameters, bearer headers, browser subprotocols, and
# a JSON field such as FunASR's first message.
SECRET_PATTERNS = (
    re.compile(r"(?i)(\bapi[_-]?key=)[^&\s\"'#]+"),
    re.compile(r"(?i)(\bbearer\s+)(?!KEY\b)[^\s\"',]+"),  # not the placeholder of our hints
    re.compile(r"(?i)(openai-insecure-api-key\.)[^\s\"',]+"),
    re.compile(r"(?i)([\"']api[_-]?key[\"']\s*:\s*[\"'])[^\"']*"),
)
MIN_LITERAL_KEY = 8  # shorter configured keys are blanked by the patterns only
HANDSHAKE = '%s - "WebSocket %s" [%s]'
UVICORN_ACCEPTED = '%s - "WebSocket %s" [accepted]'  # logged by uvicorn before the checks
# uvicorn's lines about a client's fault that come with a traceback
CLIENT_FAULTS = {"Invalid UTF-8 sequence received from client.": "closed it with 1007"}

_handshakes = logging.getLogger("uvicorn.error")  # where uvicorn writes its websocket lines


def redact(text: str, key: str | None = None) -> str:
    """``text`` with every API key blanked."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    if key is not None and len(key) >= MIN_LITERAL_KEY:
        for form in {key, quote(key, safe="")}:
            text = text.replace(form, REDACTED)
    return text


class ServerLogFilter(logging.Filter):
    """Blanks keys in a record's message, arguments and traceback; drops uvicorn's early
    ``[accepted]`` websocket line; turns its client-fault tracebacks into warnings."""

    def __init__(self, key: str | None) -> None:
        super().__init__("mooer-server")
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and record.msg == UVICORN_ACCEPTED:
            return False
        if record.name == "uvicorn.error" and record.msg in CLIENT_FAULTS:
            record.msg = f"{record.msg} {CLIENT_FAULTS[record.msg]}"
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, self.key)
        if isinstance(record.args, tuple):  # kept a tuple: uvicorn's access formatter unpacks it
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.key)
        return True

    def _clean(self, value: object) -> object:
        return redact(value, self.key) if isinstance(value, str) else value


def install_log_filter(key: str | None) -> None:
    """Put a ``ServerLogFilter`` on the handlers of the root logger and uvicorn's loggers (once
    each; uvicorn makes new handlers whenever it configures logging)."""
    for name in (None, "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, ServerLogFilter) for f in handler.filters):
                handler.addFilter(ServerLogFilter(key))


def log_handshake(websocket: WebSocket, outcome: str) -> None:
    """The access line of a websocket: ``accepted`` or why it was refused."""
    client = websocket.client
    address = f"{client.host}:{client.port}" if client else "-"
    path = quote(websocket.scope.get("path", ""))
    query = websocket.scope.get("query_string", b"").decode("latin-1")
    _handshakes.info(HANDSHAKE, address, redact(f"{path}?{query}" if query else path), outcome)
