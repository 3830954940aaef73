"""The server's command-line entry points: ``mooer serve``, ``mooer stream``, ``mooer mic``.

Each takes plain parameters and returns an exit status, so ``mooer.cli`` only maps its
arguments onto them; errors a user can fix are raised as ``MooerError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

from mooer.errors import ConfigError
from mooer.server.config import ServerConfig


def serve_main(
    model: str | None = None,
    llm: str | None = None,
    variant: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    heads: int = 4,
    host: str = "127.0.0.1",
    port: int = 8000,
    funasr_port: int | None = None,
    api_key: str | None = None,
    allow_origins: Sequence[str] = (),
    max_sessions: int = 16,
    max_session_audio_s: float = 3600.0,
    idle_timeout_s: float = 120.0,
    threads: int | None = None,
    beam: int | None = None,
    log_level: str = "info",
) -> int:
    """Load the model once and serve every protocol until SIGINT/SIGTERM (then drain).

    ``api_key`` falls back to the ``MOOER_API_KEY`` environment variable.
    """
    config = ServerConfig(
        host=host,
        port=port,
        funasr_port=funasr_port,
        api_key=api_key or os.environ.get("MOOER_API_KEY") or None,
        allowed_origins=tuple(allow_origins),
        max_sessions=max_sessions,
        max_session_audio_s=max_session_audio_s,
        idle_timeout_s=idle_timeout_s,
        model_name="mooer",
    )
    from mooer.agent.engine import Engine
    from mooer.agent.session import SessionConfig
    from mooer.model import load_model
    from mooer.server.app import run
    from mooer.server.hub import Hub

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    defaults = SessionConfig()
    if beam is not None:
        defaults = replace(defaults, final_options=replace(defaults.final_options, num_beams=beam))
    speech_llm = load_model(
        model,
        llm=llm,
        task="asr",
        variant=variant,
        device=device,
        dtype=dtype,
        attention_heads=heads,
    )
    hub = Hub(speech_llm, Engine(speech_llm, threads=threads), config, defaults)
    where = f"{config.host}:{config.port}"
    funasr = f", FunASR ws://{config.host}:{config.funasr_port}" if config.funasr_port else ""
    print(
        f"mooer: serving http://{where}/ (realtime ws://{where}/v1/realtime{funasr})",
        file=sys.stderr,
        flush=True,
    )
    run(hub, log_level=log_level.lower())
    return 0


def stream_main(
    file: str,
    server: str = "http://127.0.0.1:8000",
    mode: str = "asr",
    api_key: str | None = None,
    realtime: bool = False,
) -> int:
    """Send an audio file to a running server as a live stream; print each utterance's result."""
    from mooer.audio import load_audio
    from mooer.server.client import Captions, file_chunks, run_session

    samples = load_audio(file)
    captions = Captions(mode, live=sys.stderr.isatty())
    key = api_key or os.environ.get("MOOER_API_KEY")
    asyncio.run(run_session(server, mode, file_chunks(samples, realtime=realtime), key, captions))
    return 1 if captions.errors else 0


def mic_main(
    server: str = "http://127.0.0.1:8000",
    mode: str = "asr",
    api_key: str | None = None,
    device: str | None = None,
) -> int:
    """Live captions (or chat) from the microphone until Ctrl+C."""
    from mooer.server.client import Captions, import_sounddevice, microphone_chunks, run_session

    import_sounddevice()  # fail early and clearly without PortAudio
    if mode not in ("asr", "ast", "asr+ast", "chat"):
        raise ConfigError(f"unknown mode {mode!r}: expected asr, ast, asr+ast or chat")
    captions = Captions(mode, live=sys.stderr.isatty())
    key = api_key or os.environ.get("MOOER_API_KEY")
    mic = int(device) if device is not None and device.isdigit() else device

    async def session() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        print("mooer: listening, Ctrl+C to stop", file=sys.stderr, flush=True)
        await run_session(server, mode, microphone_chunks(stop, mic), key, captions)

    asyncio.run(session())
    return 1 if captions.errors else 0
