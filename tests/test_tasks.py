"""The task recipe: prompts per task and model, answers read back, each utterance encoded once."""

import numpy as np
import pytest

from mooer.audio import load_audio
from mooer.errors import ConfigError
from mooer.llm.backend import run_blocking
from mooer.llm.decoding import STREAMING
from mooer.llm.prompts import build_prompt
from mooer.model import DEMO_MODEL_DIR, load_model
from mooer.tasks import Texts, check_task, decode, decode_waiting, prompt_tasks, read_answers
from mooer.train.data import Entry
from mooer.train.evaluate import evaluate
from mooer.train.talk import spoken_talk
from mooer.transcribe import transcribe

EXAMPLES = DEMO_MODEL_DIR.parent.parent / "examples" / "audio"
GREEDY = STREAMING


@pytest.fixture(scope="module")
def demo():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def mtl_model(fabricated):
    root = fabricated("mtl-5k")
    return load_model(root, llm=root.parent / "llm", task="mtl", device="cpu")


def test_prompts_follow_the_model(demo, mtl_model):
    assert not demo.is_mtl and mtl_model.is_mtl
    assert prompt_tasks(demo, "mtl") == ("asr", "ast")
    assert prompt_tasks(mtl_model, "mtl") == ("ast",)
    assert prompt_tasks(mtl_model, "ast") == ("ast",)
    assert prompt_tasks(demo, "asr") == ("asr",)


def test_answers_are_read_as_the_model_writes_them(demo, mtl_model):
    assert read_answers(mtl_model, "ast", ["今天\ntoday"]) == Texts(None, "today")
    assert read_answers(mtl_model, "mtl", ["今天\ntoday"]) == Texts("今天", "today")
    assert read_answers(mtl_model, "mtl", ["今天"]) == Texts("今天", "")
    assert read_answers(demo, "ast", ["today\nis"]) == Texts(None, "today\nis")
    assert read_answers(demo, "mtl", ["今天", "today"]) == Texts("今天", "today")
    with pytest.raises(ValueError):
        read_answers(demo, "mtl", ["one answer for two prompts"])


def test_mtl_on_a_two_prompt_model_encodes_once(demo, monkeypatch):
    wave = load_audio(EXAMPLES / "zh_translate.wav")
    asr = transcribe(demo, [wave], "asr")[0].text
    ast = transcribe(demo, [wave], "ast")[0].text
    calls = []
    encoder_forward = demo.encoder.forward
    monkeypatch.setattr(demo.encoder, "forward", lambda *a: calls.append(1) or encoder_forward(*a))
    (both,) = transcribe(demo, [wave], "mtl")
    assert (
        (both.text, both.translation) == (asr, ast) == ("我想要一个蓝色的包", "i want a blue bag")
    )
    assert len(calls) == 1


def test_a_translation_goes_on_from_the_words_already_sent(demo, mtl_model):
    """A live final continues the English its partials committed, so the client never reads a
    contradiction: here "it is", which partials of 今天是... agreed on (bench_simul), where the
    whole sentence alone is translated "today is ..."."""
    wave = spoken_talk([("今天是九月十九号", "")], 0.0, lead_s=0.2, tail_s=0.2).audio
    embeds, lengths = demo.embed([wave])

    def decoded(task: str, sent: str) -> Texts:
        return run_blocking(decode_waiting(demo, embeds, lengths, task, translation_from=sent))[0]

    assert decoded("ast", "") == Texts(None, "today is september nineteenth")
    forced = decoded("ast", "it is").translation
    assert forced.startswith("it is ") and len(forced.split()) > 2  # decoded on from there
    assert decoded("mtl", "it is") == Texts("今天是九月十九号", forced)
    # an MTL variant writes its transcript first: nothing is forced there
    audio, n = mtl_model.embed([wave])
    plain = run_blocking(decode_waiting(mtl_model, audio, n, "ast"))
    assert run_blocking(decode_waiting(mtl_model, audio, n, "ast", translation_from="x")) == plain


def test_a_token_loop_answer_stops_when_asked(demo):
    embeds, lengths = demo.embed([load_audio(EXAMPLES / "zh_translate.wav")])
    (whole,) = decode(demo, embeds, lengths, "asr", GREEDY, step_by_step=True)
    steps = []
    stopped = decode_waiting(
        demo, embeds, lengths, "asr", GREEDY, True, lambda: steps.append(1) or len(steps) > 2
    )
    (cut,) = run_blocking(stopped)
    assert whole.transcript == "我想要一个蓝色的包"
    assert len(steps) == 3 and whole.transcript.startswith(cut.transcript) and cut.transcript
    assert len(cut.transcript) < len(whole.transcript)


def test_step_by_step_equals_generate_for_greedy(demo):
    waves = [load_audio(EXAMPLES / f) for f in ("zh_weather.wav", "en_directions.wav")]
    embeds, lengths = demo.embed(waves)
    together = decode(demo, embeds, lengths, "mtl", GREEDY)
    alone = decode(demo, embeds, lengths, "mtl", GREEDY, step_by_step=True)
    assert together == alone
    assert together[0].transcript == "星期一会下雨"
    assert [t.transcript for t in together] == demo.generate(
        waves, [build_prompt("asr")] * 2, GREEDY
    )


def test_checks(demo, mtl_model, fabricated):
    with pytest.raises(ConfigError, match="unknown task 'dictation'"):
        check_task(demo, "dictation")
    root = fabricated("mtl-5k")
    asr_variant = load_model(root, llm=root.parent / "llm", task="asr", device="cpu")
    with pytest.raises(ConfigError, match="asr_ast_mtl variant"):
        check_task(asr_variant, "mtl")
    check_task(mtl_model, "mtl")


def test_eval_scores_an_mtl_models_ast_answer_by_its_translation(mtl_model, tmp_path):
    import soundfile as sf

    wave = np.random.default_rng(5).normal(0, 0.1, 16000).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, wave, 16000)
    (raw,) = mtl_model.generate([wave], [build_prompt("ast")], GREEDY)
    entry = Entry("a", str(path), "ast", "", translation="x")
    scored, _ = evaluate(mtl_model, [entry], options=GREEDY)
    translation = raw.partition("\n")[2].strip()
    assert scored[0].hyp_translation == translation
    assert raw.strip() and translation != raw.strip()  # the whole answer was scored before
