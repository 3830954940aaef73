"""The server's limits and access rules, checked once when the server starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from mooer.asr.speakers import SpeakerConfig
from mooer.errors import ConfigError, check_number

MIB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``mooer serve`` can be told; defaults suit one machine on loopback.

    ``allowed_origins`` governs browser connections (those that send an ``Origin`` header):
    empty allows only pages served by this server itself, ``("*",)`` allows any page.
    Clients that send no ``Origin`` (the SDKs, curl) are not affected.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    funasr_port: int | None = None  # also serve the FunASR protocol at ws://host:funasr_port/
    api_key: str | None = None  # required from every client when set
    funasr_open: bool = False  # websockets on funasr_port need no api_key (a trusted network)
    allowed_origins: tuple[str, ...] = ()
    max_sessions: int = 16  # live websocket sessions; more are refused, not queued
    max_message_bytes: int = 1 * MIB  # one websocket message (base64 text or binary PCM)
    max_upload_bytes: int = 25 * MIB  # one HTTP audio upload (OpenAI's limit)
    max_session_audio_s: float = 3600.0  # audio one websocket session may send in all
    max_request_audio_s: float = 3600.0  # decoded audio in one HTTP upload or FunASR file
    idle_timeout_s: float = 120.0  # a session that sends nothing this long is closed
    shutdown_timeout_s: float = 10.0  # how long a shutdown waits for pending finals
    model_name: str = "mooer"  # the model id reported to clients
    record: bool = False  # keep every live session as a meeting (clients may ask: ?record=1)
    meetings_db: str | None = None  # the meeting store's URL or SQLite file; None: the default
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)  # labels of recorded finals
    record_audio: bool = False  # recorded meetings keep each segment's audio (FLAC)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"ServerConfig.host={self.host!r}: expected a host name or address")
        _check_port("port", self.port, allow_zero=True)
        if self.funasr_port is not None:
            _check_port("funasr_port", self.funasr_port, allow_zero=False)
            if self.funasr_port == self.port:
                raise ConfigError(
                    f"ServerConfig.funasr_port={self.funasr_port}: must differ from port"
                )
        if not isinstance(self.funasr_open, bool):
            raise ConfigError(f"ServerConfig.funasr_open={self.funasr_open!r}: expected a bool")
        if self.funasr_open and self.funasr_port is None:
            raise ConfigError(
                "ServerConfig.funasr_open: needs funasr_port (--funasr-open opens only FunASR's "
                "own port; /funasr on the main port keeps requiring the key)"
            )
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ConfigError("ServerConfig.api_key: expected a non-empty string or None")
        if isinstance(self.allowed_origins, str) or not all(
            isinstance(o, str) and o for o in self.allowed_origins
        ):
            raise ConfigError(
                f"ServerConfig.allowed_origins={self.allowed_origins!r}: expected a tuple of "
                "origins such as 'https://example.com', or ('*',)"
            )
        for name in ("max_sessions", "max_message_bytes", "max_upload_bytes"):
            check_number(getattr(self, name), f"ServerConfig.{name}", 1, integer=True)
        if self.max_message_bytes < 4096:
            raise ConfigError(
                f"ServerConfig.max_message_bytes={self.max_message_bytes}: expected >= 4096 "
                "(a session.update must fit)"
            )
        for name in (
            "max_session_audio_s",
            "max_request_audio_s",
            "idle_timeout_s",
            "shutdown_timeout_s",
        ):
            check_number(getattr(self, name), f"ServerConfig.{name}", above=0)
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ConfigError(f"ServerConfig.model_name={self.model_name!r}: expected a name")
        for name in ("record", "record_audio"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"ServerConfig.{name}={getattr(self, name)!r}: expected True or False"
                )
        if self.meetings_db is not None and (
            not isinstance(self.meetings_db, str) or not self.meetings_db
        ):
            raise ConfigError(
                f"ServerConfig.meetings_db={self.meetings_db!r}: expected a database URL or file"
            )
        if not isinstance(self.speakers, SpeakerConfig):
            raise ConfigError(f"ServerConfig.speakers={self.speakers!r}: expected a SpeakerConfig")

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a connection carrying ``Origin: origin`` to ``Host: host`` may proceed."""
        if origin is None:
            return True
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        # Same origin: the page was served by this server (scheme://host[:port] == Host header).
        return host is not None and origin.split("://", 1)[-1] == host


def _check_port(name: str, value: object, allow_zero: bool) -> None:
    check_number(value, f"ServerConfig.{name}", 0 if allow_zero else 1, 65535, integer=True)
