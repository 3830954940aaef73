from __future__ import annotations

from transformers import AutoTokenizer

from mooer.llm.decoding import token_id
from mooer.llm.prompts import AUDIO_START, IM_END, PAD, build_prompt
from mooer.train.tokenizer import SPECIAL_TOKENS, train_tokenizer


def test_small_tokenizer_keeps_qwen_specials_and_round_trips(tmp_path):
    texts = ["today is wednesday", "今天星期三", "what is three plus four", "seven"] * 20
    out = train_tokenizer(texts, tmp_path / "tok", vocab_size=400)
    tok = AutoTokenizer.from_pretrained(out)
    assert [token_id(tok, t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.unk_token is None
    assert tok.eos_token == IM_END and tok.pad_token == PAD
    for text in [build_prompt("asr") + "今天星期三", "unseen words: 你好 xyz", AUDIO_START + "a"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok(" wednesday", add_special_tokens=False)["input_ids"]) <= 2
    assert len(tok) < 500
