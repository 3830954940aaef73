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
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mooer.asr.speakers import SpeakerConfig
from mooer.errors import ConfigError, MooerError
from mooer.server.config import ServerConfig

if TYPE_CHECKING:
    from mooer.meetings.store import MeetingStore
    from mooer.server.hub import Hub
    from mooer.server.ray_serve import RayOptions
    from mooer.server.reply_audio import ReplyAudio


@dataclass(frozen=True)
class HubRecipe:
    """What a server process loads: its limits and the model options of ``load_model``.

    ``mooer serve`` builds one hub from it; with ``--ray`` every replica builds its own from
    the same recipe (it is sent to them, so it holds only plain values).
    """

    config: ServerConfig
    model: str | None = None
    llm: str | None = None
    variant: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    heads: int = 4
    threads: int | None = None
    beam: int | None = None
    quantize: str | None = None
    llm_backend: str = "hf"
    llm_url: str | None = None

    def open_store(self) -> MeetingStore | None:
        """The meeting store, opened now so a bad one is a clear error before the model loads;
        None when nothing is recorded."""
        if not (self.config.record or self.config.meetings_db):
            return None
        from mooer.meetings import open_store

        store = open_store(self.config.meetings_db).open()
        print(f"mooer: meetings kept in {store.where}" + (" (recording every session)"
              if self.config.record else ""), file=sys.stderr, flush=True)  # fmt: skip
        return store

    def build(self, store: MeetingStore | None = None, replica: str | None = None) -> Hub:
        """Load the model and start its engine (``store``: an opened meeting store, else the
        hub opens ``config.meetings_db`` when first needed; ``replica``: see ``Hub``)."""
        from mooer.agent.engine import Engine
        from mooer.agent.session import SessionConfig
        from mooer.model import load_model
        from mooer.server.hub import Hub

        defaults = SessionConfig()
        if self.beam is not None:
            final = replace(defaults.final_options, num_beams=self.beam)
            defaults = replace(defaults, final_options=final)
        speech_llm = load_model(
            self.model,
            llm=self.llm,
            task="asr",
            variant=self.variant,
            device=self.device,
            dtype=self.dtype,
            attention_heads=self.heads,
            quantize=self.quantize,
            llm_backend=self.llm_backend,
            llm_url=self.llm_url,
        )
        engine = Engine(speech_llm, threads=self.threads)
        if self.config.record:  # every session is labelled: load the voice encoder now
            try:
                engine.speaker_encoder.load()
                labels = "on"
            except MooerError as exc:
                labels = f"off ({exc})"
            print(f"mooer: speaker labels {labels}", file=sys.stderr, flush=True)
        return Hub(speech_llm, engine, self.config, defaults, meetings=store, replica=replica)


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
    funasr_open: bool = False,
    allow_origins: Sequence[str] = (),
    max_sessions: int = 16,
    max_session_audio_s: float = 3600.0,
    max_request_audio_s: float = 3600.0,
    idle_timeout_s: float = 120.0,
    threads: int | None = None,
    beam: int | None = None,
    log_level: str = "info",
    record: bool = False,
    db: str | None = None,
    record_audio: bool = False,
    quantize: str | None = None,
    llm_backend: str = "hf",
    llm_url: str | None = None,
    speaker_threshold: float | None = None,
    ray: RayOptions | None = None,
) -> int:
    """Load the model once and serve every protocol until SIGINT/SIGTERM (then drain).

    ``api_key`` falls back to the ``MOOER_API_KEY`` environment variable; ``funasr_open``
    lets clients on ``funasr_port`` in without it. ``record`` keeps every live session as a
    meeting in ``db`` (clients may ask for it per session anyway), its finals labelled with
    speakers (``speaker_threshold``: see ``SpeakerConfig``), with each segment's audio when
    ``record_audio``. ``quantize``, ``llm_backend`` and ``llm_url``: see ``load_model``.
    ``ray``: serve from replicas behind Ray Serve's proxy instead (``mooer.server.ray_serve``).
    """
    speakers = SpeakerConfig() if speaker_threshold is None else SpeakerConfig(speaker_threshold)
    config = ServerConfig(
        host=host,
        port=port,
        funasr_port=funasr_port,
        api_key=api_key or os.environ.get("MOOER_API_KEY") or None,
        funasr_open=funasr_open,
        allowed_origins=tuple(allow_origins),
        max_sessions=max_sessions,
        max_session_audio_s=max_session_audio_s,
        max_request_audio_s=max_request_audio_s,
        idle_timeout_s=idle_timeout_s,
        model_name="mooer",
        record=record,
        meetings_db=db,
        speakers=speakers,
        record_audio=record_audio,
    )
    recipe = HubRecipe(
        config, model=model, llm=llm, variant=variant, device=device, dtype=dtype, heads=heads,
        threads=threads, beam=beam, quantize=quantize, llm_backend=llm_backend, llm_url=llm_url,
    )  # fmt: skip
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    if ray is not None:
        from mooer.server.ray_serve import serve_on_ray

        return serve_on_ray(recipe, ray, log_level=log_level)
    from mooer.server.app import run

    store = recipe.open_store()
    hub = recipe.build(store)
    where = f"{config.host}:{config.port}"
    funasr = f", FunASR ws://{config.host}:{config.funasr_port}" if config.funasr_port else ""
    serving = f"mooer: serving http://{where}/ (realtime ws://{where}/v1/realtime{funasr})"
    try:
        run(hub, log_level.lower(), lambda: print(serving, file=sys.stderr, flush=True))
    finally:
        hub.model.llm_backend.close()  # vLLM's engine process, if any
    return 0


def stream_main(
    file: str,
    server: str = "http://127.0.0.1:8000",
    mode: str = "asr",
    api_key: str | None = None,
    realtime: bool = False,
    audio_out: str | None = None,
    play: bool = False,
    output_device: str | None = None,
) -> int:
    """Send an audio file to a running server as a live stream; print each utterance's result.

    Chat replies are also spoken with ``audio_out`` (a wav file to write) or ``play`` (on
    ``output_device``, default the system's).
    """
    from mooer.audio import load_audio
    from mooer.server.client import Captions, file_chunks, run_session

    samples = load_audio(file)
    speech = _reply_audio(mode, audio_out, play, output_device)
    captions = Captions(mode, live=sys.stderr.isatty())
    key = api_key or os.environ.get("MOOER_API_KEY")
    chunks = file_chunks(samples, realtime=realtime)
    _run(run_session(server, mode, chunks, key, captions, speech), mode, speech, audio_out)
    return 1 if captions.errors else 0


def mic_main(
    server: str = "http://127.0.0.1:8000",
    mode: str = "asr",
    api_key: str | None = None,
    device: str | None = None,
    audio_out: str | None = None,
    play: bool = False,
    output_device: str | None = None,
) -> int:
    """Live captions (or chat) from the microphone until Ctrl+C.

    ``audio_out`` / ``play`` as for ``stream_main``; with ``play``, use headphones: the
    microphone hearing the reply is the user speaking over it (barge-in).
    """
    from mooer.server.client import Captions, import_sounddevice, microphone_chunks, run_session

    import_sounddevice()  # fail early and clearly without PortAudio
    if mode not in ("asr", "ast", "asr+ast", "chat"):
        raise ConfigError(f"unknown mode {mode!r}: expected asr, ast, asr+ast or chat")
    speech = _reply_audio(mode, audio_out, play, output_device)
    captions = Captions(mode, live=sys.stderr.isatty())
    key = api_key or os.environ.get("MOOER_API_KEY")

    async def session() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        print("mooer: listening, Ctrl+C to stop", file=sys.stderr, flush=True)
        chunks = microphone_chunks(stop, _device(device))
        await run_session(server, mode, chunks, key, captions, speech)

    _run(session(), mode, speech, audio_out)
    return 1 if captions.errors else 0


def _device(name: str | None) -> str | int | None:
    """A sounddevice device: an index given as digits, else a name (None: the default)."""
    return int(name) if name is not None and name.isdigit() else name


def _reply_audio(
    mode: str, audio_out: str | None, play: bool, output_device: str | None
) -> ReplyAudio | None:
    """Where spoken replies go, or None when they are not asked for (then none are requested)."""
    if audio_out is None and not play:
        return None
    from mooer.server.client import check_speech_output
    from mooer.server.reply_audio import ReplyAudio

    check_speech_output(mode, True)  # before a file is created or a device opened
    return ReplyAudio(audio_out, play, _device(output_device))


def _run(
    session: Coroutine[Any, Any, Any],
    mode: str,
    speech: ReplyAudio | None,
    audio_out: str | None,
) -> None:
    """Run a client session; then let the last reply play out and close the reply audio."""
    if speech is None:
        asyncio.run(session)
        return
    with speech:
        asyncio.run(session)
        speech.finish()
    if audio_out is not None:
        seconds = speech.samples / speech.rate
        what = "spoken replies" if mode == "chat" else "spoken translations"
        print(f"mooer: wrote {seconds:.1f} s of {what} to {audio_out}", file=sys.stderr)
