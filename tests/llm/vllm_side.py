"""The vLLM side of tests/llm/test_vllm_backend.py, run by the python that has vLLM.

``python vllm_side.py OUT.json [--server]`` decodes the example recordings on the demo model
(fp32, greedy) with the vllm backend in this process, and with ``--server`` also through
``--llm-url`` to a vLLM OpenAI server it starts on the same export (then stops it, and records
what a decode says once the server is gone). It writes what it got to OUT.json for the test to
compare with the hf backend's answers, which it computes itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from mooer.audio import load_audio
from mooer.errors import MooerError
from mooer.llm.conversation import CHAT, Conversation
from mooer.llm.decoding import STREAMING
from mooer.llm.vllm_export import merged_llm_dir
from mooer.llm.vllm_remote import server_command
from mooer.model import DEMO_MODEL_DIR, load_model
from mooer.tasks import TASKS, decode

EXAMPLES = DEMO_MODEL_DIR.parent.parent / "examples" / "audio"
WAVES = ("zh_weather.wav", "en_directions.wav", "zh_translate.wav")
CHAT_QUESTIONS = ("en_chat.wav", "zh_weather.wav")
GREEDY = STREAMING
PORT = 18931


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
    return got


def through_server(folder: Path) -> dict:
    url = f"http://127.0.0.1:{PORT}/v1"
    command = [sys.executable, *server_command(folder).split()[1:]]
    command += ["--port", str(PORT), "--dtype", "float32", "--generation-config", "vllm"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the vLLM server did not start") from None
                time.sleep(2)
        model = load_model(device="cpu", dtype="fp32", llm_backend="vllm", llm_url=url)
        got = answers(model)
    finally:
        server.terminate()
        server.wait(60)
    embeds, lengths = model.embed([load_audio(EXAMPLES / WAVES[0])])
    try:
        decode(model, embeds, lengths, "asr", GREEDY)
        got["gone"] = None
    except MooerError as exc:
        got["gone"] = f"{type(exc).__name__}: {exc}"
    return got


def main() -> None:
    out = Path(sys.argv[1])
    model = load_model(device="cpu", dtype="fp32", llm_backend="vllm")
    result = {"in_process": answers(model)}
    model.llm_backend.close()
    if "--server" in sys.argv:
        result["server"] = through_server(merged_llm_dir(model))
    out.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
