"""The command line as a user runs it: a real subprocess on fabricated checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.ports import free_port


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mooer.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_transcribe_mtl5k_json(fabricated, speech_wav, tmp_path):
    root = fabricated("mtl-5k")
    stereo = tmp_path / "stereo44k.wav"
    t = np.arange(5 * 44100) / 44100
    sf.write(
        stereo, np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3, 44100
    )
    proc = run(
        "transcribe", "--model", str(root), "--llm", str(root.parent / "llm"), "--task", "mtl",
        "--device", "cpu", "--json", "--max-new-tokens", "6", str(speech_wav), str(stereo),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["audio"] for d in lines] == [str(speech_wav), str(stereo)]
    assert all("text" in d and "translation" in d for d in lines)
    assert lines[1]["duration"] == 5.0


def test_transcribe_plain_omni(fabricated, speech_wav):
    proc = run("transcribe", "--model", str(fabricated("omni")), "--beam", "1",
               "--max-new-tokens", "4", str(speech_wav))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1


def test_errors_are_one_clear_line(fabricated, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    proc = run("transcribe", "--model", str(fabricated("omni")), str(junk))
    assert proc.returncode == 2
    assert "notes.txt" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("transcribe", "--model", str(tmp_path / "missing"), str(junk))
    assert proc.returncode == 2 and "model directory not found" in proc.stderr
    proc = run("serve", "--speaker-threshold", "2", "--port", "0")  # before any model loads
    assert proc.returncode == 2 and "SpeakerConfig.threshold=2.0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fabricate_command(tmp_path):
    proc = run("fabricate", str(tmp_path / "x"), "--layout", "mtl-80k")
    assert proc.returncode == 0, proc.stderr
    assert (
        tmp_path / "x" / "MooER-MTL-80K" / "asr" / "lora_weights" / "adapter_model.bin"
    ).exists()


def test_speak_and_s2st_round_trip_on_the_demo_model(tmp_path):
    """`mooer speak` writes speech; `mooer s2st` turns the Mandarin example into English speech
    whose transcript (by the same demo model) is the printed translation."""
    import soundfile as sf

    proc = run(
        "speak", "the park is to the north", "-o", str(tmp_path / "en.wav"), "--rate", "16000"
    )
    assert proc.returncode == 0, proc.stderr
    samples, rate = sf.read(tmp_path / "en.wav")
    assert rate == 16000 and 0.8 < len(samples) / rate < 4
    example = Path(__file__).parents[1] / "examples" / "audio" / "zh_translate.wav"
    proc = run("s2st", str(example), "-o", str(tmp_path / "out.wav"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "i want a blue bag"
    back = run("transcribe", "--device", "cpu", str(tmp_path / "out.wav"))
    assert back.stdout.strip() == "i want a blue bag"


EXAMPLE_DIR = Path(__file__).parents[1] / "examples" / "audio"


def test_transcribe_quantize_int8_on_the_demo_model():
    files = [str(EXAMPLE_DIR / "zh_weather.wav"), str(EXAMPLE_DIR / "en_directions.wav")]
    proc = run("transcribe", "--quantize", "int8", "--device", "cpu", *files)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{files[0]}\t星期一会下雨",
        f"{files[1]}\tthe park is to the north",
    ]
    proc = run("transcribe", "--quantize", "int4", "--device", "cpu", files[0])
    assert proc.returncode == 2 and "quantize 'int4': expected one of int8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_s2st_quantize_int8_on_the_demo_model(tmp_path):
    """The int8 encoder + adapter translate the Mandarin example as fp32 does (the round trip
    above), and write its speech."""
    import soundfile as sf

    example = EXAMPLE_DIR / "zh_translate.wav"
    out = tmp_path / "out.wav"
    proc = run("s2st", str(example), "-o", str(out), "--device", "cpu", "--quantize", "int8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "i want a blue bag"
    samples, rate = sf.read(out)
    assert samples.size > rate // 2
    proc = run("s2st", str(example), "-o", str(out), "--device", "cpu", "--quantize", "int4")
    assert proc.returncode == 2 and "quantize 'int4': expected one of int8" in proc.stderr


def test_serve_quantize_int8_answers_over_http(tmp_path):
    import signal
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mooer.cli", "serve", "--quantize", "int8", "--device", "cpu",
         "--port", str(port), "--threads", "1", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        with open(EXAMPLE_DIR / "en_directions.wav", "rb") as f:
            reply = httpx.post(
                f"{url}/v1/audio/transcriptions",
                data={"model": "mooer"},
                files={"file": ("en_directions.wav", f, "audio/wav")},
                timeout=60,
            )
        assert reply.status_code == 200, reply.text
        # what the fp32 model answers through the same path (VAD segments, the finals' options)
        assert reply.json()["text"] == _served_fp32_text(EXAMPLE_DIR / "en_directions.wav")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def _served_fp32_text(path: Path) -> str:
    """What fp32 gives for the file: the server cuts and decodes uploads as transcribe() does."""
    from mooer.model import load_model
    from mooer.transcribe import transcribe

    return transcribe(load_model(device="cpu"), [path])[0].text


def test_commands_without_a_model_do_not_import_torch(tmp_path):
    """``mooer --help`` and ``mooer meetings list`` answer in a blink: torch and transformers
    (seconds to import) load only when a command needs the model; ``mooer.transcribe`` is still
    the function once its module is imported."""
    import subprocess
    import sys

    script = (
        "import sys, contextlib, io\n"
        "from mooer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    with contextlib.suppress(SystemExit):\n"
        "        main(['--help'])\n"
        f"    main(['meetings', 'list', '--db', 'sqlite:///{tmp_path}/m.db'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'\n"
        "import mooer, mooer.transcribe\n"
        "assert callable(mooer.transcribe) and mooer.transcribe.__name__ == 'transcribe'\n"
        "assert 'torch' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line():
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "mooer.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "--port" in run.stderr
    assert "Traceback" not in run.stderr and "mooer: serving" not in run.stderr


def test_only_the_cli_parses_arguments():
    """argparse lives in mooer/cli.py alone, and nothing below the command line imports it:
    the training modules expose typed entry points that ``mooer train|eval|pseudo-label`` call."""
    import ast

    package = Path(__file__).parents[1] / "mooer"
    argparse_users, cli_users = [], []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            where = str(path.relative_to(package.parent))
            if any(name.split(".")[0] == "argparse" for name in names):
                argparse_users.append(where)
            if "mooer.cli" in names:
                cli_users.append(where)
    assert set(argparse_users) == {"mooer/cli.py"}
    assert set(cli_users) == {"mooer/__main__.py"}  # the top layer: `python -m mooer`
