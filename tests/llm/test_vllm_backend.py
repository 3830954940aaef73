"""The vllm LLM backend: greedy answers equal the hf backend's, in this process and through a
vLLM server; the merged export is keyed by its sources; missing pieces are clear errors.

vLLM is not installed beside the CI's python (it pulls wheels that break the CPU torch), so its
side runs in one subprocess of the python that has it: ``$MOOER_VLLM_PYTHON``, default
``/opt/mooer-vllm/bin/python`` (``scripts/setup.sh --tests`` makes it). Those tests are skipped, saying why, only
when that python or its vLLM is missing; the subprocess starts vLLM three times (about 5 to 8
minutes on two busy cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.errors import ConfigError, LLMServerError
from mooer.llm import vllm_engine
from mooer.llm.backend import EmbedsBackend, HFBackend
from mooer.llm.vllm_export import MANIFEST, export_name, merged_llm_dir
from mooer.llm.vllm_remote import RemoteBackend
from mooer.model import load_model
from tests.llm import vllm_side
from tests.other_env import environ, missing

VLLM_PYTHON = os.environ.get("MOOER_VLLM_PYTHON", "/opt/mooer-vllm/bin/python")
SIDE_TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def vllm_answers(tmp_path_factory) -> dict:
    reason = missing(VLLM_PYTHON, "vllm")
    if reason is not None:
        print(f"skipping the vLLM equality tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("vllm") / "answers.json"
    env = {**environ(), "MOOER_CACHE": str(out.parent / "cache"), "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run(
        [VLLM_PYTHON, str(Path(vllm_side.__file__)), str(out), "--server"],
        capture_output=True,
        text=True,
        timeout=SIDE_TIMEOUT_S,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_answers() -> dict:
    model = load_model(device="cpu", dtype="fp32")
    assert isinstance(model.llm_backend, HFBackend)
    return vllm_side.answers(model)


def _streamed(answers: dict) -> tuple[dict, int | None]:
    """``answers`` without the chat reply's ``arrivals`` (and a stopped answer's figures), and
    those arrivals."""
    chat = dict(answers["chat_session"])
    arrivals = chat.pop("arrivals")
    others = {k: v for k, v in answers.items() if k != "stopped"}
    return {**others, "chat_session": chat}, arrivals


@pytest.mark.parametrize("where", ["in_process", "server"])
def test_a_stopped_partial_aborts_its_vllm_request(vllm_answers, where):
    # should_stop came true at the third token of an answer that would run 4000: the answer
    # ends there and vLLM no longer runs the request (closing its stream aborted it).
    stopped = vllm_answers[where]["stopped"]
    assert 3 <= stopped["ids"] < 20
    assert stopped["running"] == 0


def test_vllm_in_process_answers_as_hf_does(vllm_answers, hf_answers):
    in_process, arrivals = _streamed(vllm_answers["in_process"])
    hf, _ = _streamed(hf_answers)
    assert in_process == hf
    # A chat reply's text goes out token by token as the tokens stream back from vLLM.
    assert arrivals > 1 and len(hf["chat_session"]["deltas"]) > 1
    assert "".join(hf["chat_session"]["deltas"]) == hf["chat_session"]["text"][0]
    assert hf["chat_session"]["errors"] == []
    assert hf_answers["asr"][0]["transcript"] == "星期一会下雨"
    assert len(hf_answers["chat"]) == 2
    assert hf_answers["typed"] == ["fifteen", "sixteen"]
    assert hf_answers["live"]["errors"] == []
    assert hf_answers["live"]["finals"][0] == ["星期一会下雨", "it will rain on monday"]


def test_a_vllm_server_answers_as_hf_does_and_a_restart_is_survived(vllm_answers, hf_answers):
    server, arrivals = _streamed(vllm_answers["server"])
    gone, back = server.pop("gone"), server.pop("back")
    assert server == _streamed(hf_answers)[0]
    assert arrivals > 1  # the Completions API streamed the reply's tokens
    assert back == hf_answers["asr"][0]["transcript"]  # the same front end, the server restarted
    assert gone.startswith("LLMServerError: the LLM server at http://127.0.0.1:")
    assert "api_server --model FOLDER --enable-prompt-embeds" in gone


def test_the_export_is_named_by_what_it_is_made_from(fabricated, tmp_path, monkeypatch):
    monkeypatch.setenv("MOOER_CACHE", str(tmp_path))
    root = fabricated("mtl-5k")
    model = load_model(root, llm=root.parent / "llm", task="asr", device="cpu")
    folder = merged_llm_dir(model)
    assert folder.name == export_name(model) and (folder / MANIFEST).is_file()
    assert (folder / "config.json").is_file() and not (folder / "generation_config.json").exists()
    written = (folder / MANIFEST).stat().st_mtime_ns
    assert merged_llm_dir(model) == folder and (folder / MANIFEST).stat().st_mtime_ns == written
    lora = model.paths.lora / "adapter_config.json"
    stat = lora.stat()
    try:
        os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert export_name(model) != folder.name  # a changed LoRA: exported afresh
    finally:
        os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_backend_choices_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match="unknown llm_backend 'tgi'"):
        load_model(device="cpu", llm_backend="tgi")
    with pytest.raises(ConfigError, match="llm_url needs llm_backend 'vllm'"):
        load_model(device="cpu", llm_url="http://127.0.0.1:1/v1")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="needs vLLM, which is not installed"):
            load_model(device="cpu", llm_backend="vllm")


def test_an_old_vllm_is_named(monkeypatch):
    monkeypatch.setattr(vllm_engine.metadata, "version", lambda dist: "0.10.1+cpu")
    with pytest.raises(ConfigError, match=r"needs vLLM >= 0\.32, found 0\.10\.1\+cpu: install"):
        vllm_engine.check_vllm()


def test_a_server_address_is_checked_at_start():
    model = load_model(device="cpu")
    with pytest.raises(ConfigError, match="http"):
        RemoteBackend("127.0.0.1:8000", model)
    with pytest.raises(LLMServerError, match="is not answering"):
        RemoteBackend("http://127.0.0.1:9/v1", model)  # nothing listens on the discard port


def test_the_speech_head_is_refused_by_name_on_vllm(omni_model):
    engine = Engine(omni_model, threads=1)
    try:
        omni_model.llm_backend = EmbedsBackend()
        with pytest.raises(ConfigError, match="hidden states.*--llm-backend hf"):
            engine.open(SessionConfig(speech_output=True, turn_detection=False))
    finally:
        omni_model.llm_backend = HFBackend()
        engine.close(timeout=10)
