"""The vLLM side of tests/llm/test_vllm_backend.py, run by the python that has vLLM.

``python vllm_side.py OUT.json [--server]`` decodes the example recordings on the demo model
(fp32, greedy: the tasks, a two-turn chat spoken and one typed, live sessions on one engine) with the vllm backend
in this process, and with ``--server`` also through
``--llm-url`` to a vLLM OpenAI server it starts on the same export (then stops it, records what a decode
says while the server is gone, and decodes again once it is started anew). It writes what it got to OUT.json for the test to
compare with the hf backend's answers, which it computes itself, and how a partial's answer
stopped by its ``should_stop`` ends (the request aborted in vLLM, in the process and on the
server).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from mooer.agent import events as ev
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.errors import MooerError
from mooer.llm.backend import EmbedsBackend, TokenStream
from mooer.llm.conversation import CHAT, Conversation
from mooer.llm.decoding import STREAMING
from mooer.llm.prompts import build_prompt
from mooer.llm.vllm_export import merged_llm_dir
from mooer.llm.vllm_remote import server_command
from mooer.model import DEMO_MODEL_DIR, load_model
from mooer.tasks import TASKS, decode
from tests.agent.recorder import Recorder

EXAMPLES = DEMO_MODEL_DIR.parent.parent / "examples" / "audio"
WAVES = ("zh_weather.wav", "en_directions.wav", "zh_translate.wav")
CHAT_QUESTIONS = ("en_chat.wav", "zh_weather.wav")
TYPED_QUESTIONS = ("what is seven plus eight", "and plus one")  # the second needs the first
GREEDY = STREAMING
PORT = 18931
URL = f"http://127.0.0.1:{PORT}/v1"


def answers(model) -> dict:
    """Every task's texts of ``WAVES`` and a two-turn chat's answers, greedily."""
    embeds, lengths = model.embed([load_audio(EXAMPLES / name) for name in WAVES])
    got = {
        task: [asdict(t) for t in decode(model, embeds, lengths, task, GREEDY)] for task in TASKS
    }
    conversation = Conversation(model)
    turns = []
    for name in CHAT_QUESTIONS:
        q_embeds, q_lengths = model.embed([load_audio(EXAMPLES / name)])
        audio = q_embeds[0, : int(q_lengths[0])]  # (Ta, H)
        turns.append(conversation.answer(audio, CHAT, question=name).answer)
    got["chat"] = turns
    typed = Conversation(model)  # the prefix without the typed words, then the words
    got["typed"] = ["".join(t for _, t in typed.reply_text(q, CHAT)) for q in TYPED_QUESTIONS]
    got["live"] = live(model)
    got["chat_session"] = chat_session(model)
    return got


def chat_session(model) -> dict:
    """A spoken question's reply in a chat session on the engine: its text deltas and final
    text, and (``arrivals``, on a streaming backend) in how many pieces its tokens came back."""
    streams: list[TokenStream] = []
    backend = model.llm_backend
    if isinstance(backend, EmbedsBackend):
        ask = backend.stream

        def stream(*args) -> TokenStream:
            streams.append(ask(*args))
            return streams[-1]

        backend.stream = stream  # type: ignore[method-assign]
    engine = Engine(model, threads=1)
    recorder = Recorder()
    config = SessionConfig(mode="chat", turn_detection=False, final_options=GREEDY)
    session = engine.open(config, recorder)
    session.feed(load_audio(EXAMPLES / CHAT_QUESTIONS[0]))
    session.commit()
    recorder.wait_for(lambda event: isinstance(event, ev.ResponseDone), timeout=600)
    assert engine.close(timeout=600)
    if isinstance(backend, EmbedsBackend):
        del backend.stream
    return {
        "deltas": [e.delta for e in recorder.of(ev.ResponseTextDelta)],
        "text": [e.text for e in recorder.of(ev.ResponseDone)],
        "errors": [e.message for e in recorder.of(ev.Error)],
        "arrivals": streams[-1].arrivals if streams else None,  # the reply's, the last asked
    }


def live(model) -> dict:
    """Sessions on one engine, fed together in real time with partials due every 480 ms (on a
    batching backend their decodes are in flight at once): each one's final texts, and the
    errors any of them got."""
    engine = Engine(model, threads=1)
    config = SessionConfig(mode="asr+ast", turn_detection=False, final_options=GREEDY)
    recorders = [Recorder() for _ in WAVES]
    sessions = [engine.open(config, recorder) for recorder in recorders]
    audio = [load_audio(EXAMPLES / name) for name in WAVES]
    chunk = SAMPLE_RATE // 50
    for start in range(0, max(map(len, audio)), chunk):
        for session, samples in zip(sessions, audio):
            if start < len(samples):
                session.feed(samples[start : start + chunk])
        time.sleep(0.02)  # real time: partials come due and run between the chunks
    for session in sessions:
        session.commit()
    assert engine.close(timeout=600)
    return {
        "finals": [
            [e.text for e in r.events if isinstance(e, ev.Transcript | ev.Translation)]
            for r in recorders
        ],
        "errors": [e.message for r in recorders for e in r.of(ev.Error)],
    }


def stopped(model, running: Callable[[], int]) -> dict:
    """A partial's answer whose ``should_stop`` comes true at its third token, on a prompt that
    would otherwise run for 4000 tokens: the ids it holds, and how many requests the engine
    still ran (``running``) soon after (polled for up to 2 s; the whole answer takes longer)."""
    embeds, lengths = model.embed([load_audio(EXAMPLES / WAVES[1])])
    options = replace(GREEDY, max_new_tokens=4000, eos_bias=-100.0)  # never ends by itself
    backend = model.llm_backend
    streams: list[TokenStream] = []
    ask = backend.stream

    def stream(*args) -> TokenStream:
        streams.append(ask(*args))
        return streams[-1]

    backend.stream = stream  # type: ignore[method-assign]
    try:
        prompt = build_prompt("asr")
        [answer] = backend.answers(
            model, embeds, lengths, prompt, options, True, lambda: len(streams[0].ids()) >= 3
        )
        answer.result(timeout=120)
    finally:
        del backend.stream
    deadline = time.monotonic() + 2
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"ids": len(streams[0].done.result()), "running": running()}


def server_running() -> int:
    """Requests the vLLM server at ``URL`` is running, from its Prometheus metrics."""
    text = urllib.request.urlopen(URL.removesuffix("/v1") + "/metrics", timeout=5).read().decode()
    lines = [x for x in text.splitlines() if x.startswith("vllm:num_requests_running")]
    return int(sum(float(x.split()[-1]) for x in lines))


def start_server(folder: Path) -> subprocess.Popen:
    """A vLLM OpenAI server on ``folder`` at ``PORT``, once it answers."""
    command = [sys.executable, *server_command(folder).split()[1:]]
    command += ["--port", str(PORT), "--dtype", "float32", "--generation-config", "vllm"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(f"{URL}/models", timeout=5).read()
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("the vLLM server did not start") from None
            time.sleep(2)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(60)


def through_server(folder: Path) -> dict:
    """``answers`` through a server; then, with the server stopped, what a decode says; then,
    with it started again, what the same front end decodes."""
    server = start_server(folder)
    try:
        model = load_model(device="cpu", dtype="fp32", llm_backend="vllm", llm_url=URL)
        got = answers(model)
        got["stopped"] = stopped(model, server_running)
    finally:
        stop_server(server)
    embeds, lengths = model.embed([load_audio(EXAMPLES / WAVES[0])])
    try:
        decode(model, embeds, lengths, "asr", GREEDY)
        got["gone"] = None
    except MooerError as exc:
        got["gone"] = f"{type(exc).__name__}: {exc}"
    server = start_server(folder)
    try:
        got["back"] = decode(model, embeds, lengths, "asr", GREEDY)[0].transcript
    finally:
        stop_server(server)
    return got


def main() -> None:
    out = Path(sys.argv[1])
    model = load_model(device="cpu", dtype="fp32", llm_backend="vllm")
    result = {"in_process": answers(model)}
    engine = model.llm_backend._engine
    result["in_process"]["stopped"] = stopped(model, engine.get_num_unfinished_requests)
    model.llm_backend.close()
    if "--server" in sys.argv:
        result["server"] = through_server(merged_llm_dir(model))
    out.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
