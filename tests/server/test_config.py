from __future__ import annotations

import pytest

from mooer.errors import ConfigError
from mooer.server.config import ServerConfig


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"funasr_port": 8000}, "funasr_port"),
        ({"funasr_port": 0}, "funasr_port"),
        ({"api_key": ""}, "api_key"),
        ({"allowed_origins": "https://a.example"}, "allowed_origins"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"max_message_bytes": 100}, "max_message_bytes"),
        ({"max_upload_bytes": 1.5}, "max_upload_bytes"),
        ({"idle_timeout_s": 0}, "idle_timeout_s"),
        ({"max_session_audio_s": float("nan")}, "max_session_audio_s"),
        ({"host": ""}, "host"),
        ({"record": "yes"}, "record"),
        ({"record_audio": 1}, "record_audio"),
        ({"meetings_db": ""}, "meetings_db"),
    ],
)
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(ConfigError, match=rf"ServerConfig\.{field}\b"):
        ServerConfig(**changes)


def test_origin_rules():
    same_only = ServerConfig()
    assert same_only.origin_allowed(None, "127.0.0.1:8000")  # SDKs send no Origin
    assert same_only.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not same_only.origin_allowed("https://evil.example", "127.0.0.1:8000")
    listed = ServerConfig(allowed_origins=("https://app.example",))
    assert listed.origin_allowed("https://app.example", "127.0.0.1:8000")
    assert not listed.origin_allowed("https://other.example", "127.0.0.1:8000")
    assert ServerConfig(allowed_origins=("*",)).origin_allowed("https://any.example", "h:1")
