"""Multi-turn chat memory: past turns kept as text and as the LLM's KV cache of that text.

The chat format (the training objective matches it)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n              SYSTEM_TURN, cached
    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n
                                                     text_turn() per past turn, cached
    [audio embeddings]<|im_start|>user\\nAnswer my question. <|im_end|>\\n<|im_start|>assistant\\n
                                                     the current question + question_suffix()

Past turns are remembered as text (the question's transcript and the answer), not as audio: a
turn's text costs a few dozen tokens where its audio costs one per 120 ms. After each answer the
cache is cropped back to the remembered prefix and the new turn's text is appended, so each
question runs only its own tokens through the LLM. When the context would exceed its budget the
oldest turns are dropped and the cache is rebuilt from the remaining text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from mooer.errors import ConfigError
from mooer.llm.decoding import DecodingOptions, EosBias, token_id
from mooer.llm.prompts import IM_END, TEMPLATE
from mooer.model import SpeechLLM

CHAT_INSTRUCTION = "Answer my question. "
SYSTEM_TURN = TEMPLATE.split("<|im_start|>user", 1)[0]  # the released system turn, byte for byte
CHAT = DecodingOptions(max_new_tokens=256)  # greedy: the replies of a small model stay on topic


def text_turn(question: str, answer: str) -> str:
    """A finished turn as the cached text remembers it."""
    return f"<|im_start|>user\n{question}{IM_END}\n<|im_start|>assistant\n{answer}{IM_END}\n"


def history_prefix(history: Sequence[tuple[str, str]]) -> str:
    """The text before the current question's audio: the system turn and past (question, answer)."""
    return SYSTEM_TURN + "".join(text_turn(question, answer) for question, answer in history)


def question_suffix(instruction: str = CHAT_INSTRUCTION) -> str:
    """What follows the current question's audio: the user turn and the assistant's opening."""
    return f"<|im_start|>user\n{instruction}{IM_END}\n<|im_start|>assistant\n"


@dataclass
class Turn:
    """One question and its answer; ``interrupted`` when the answer was cut short (barge-in)."""

    question: str
    answer: str
    interrupted: bool = False


class Conversation:
    """The chat state of one session: its turns and the KV cache of their text.

    Not thread-safe: one thread (the engine's worker) runs all of a conversation's model work.
    """

    def __init__(self, model: SpeechLLM, max_context_tokens: int = 2048) -> None:
        if isinstance(max_context_tokens, bool) or not isinstance(max_context_tokens, int):
            raise ConfigError(f"max_context_tokens must be an int, got {max_context_tokens!r}")
        if max_context_tokens < 64:
            raise ConfigError(f"max_context_tokens must be >= 64, got {max_context_tokens}")
        self.model = model
        self.max_context_tokens = max_context_tokens
        self.turns: list[Turn] = []
        self._eos = token_id(model.tokenizer, IM_END)
        self._system_ids = self._ids(SYSTEM_TURN)
        self._turn_ids: list[list[int]] = []  # token ids of text_turn() of each turn
        self._cache: DynamicCache | None = None
        self._cached_turns = 0  # turns whose text is in the cache, after the system turn
        self._active: Reply | None = None

    # -- memory -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every turn."""
        self._stop_active()
        self.turns.clear()
        self._turn_ids.clear()
        self._cache, self._cached_turns = None, 0

    def append(self, question: str, answer: str, interrupted: bool = False) -> Turn:
        """Remember a turn given as text (its tokens enter the cache at the next ``sync``)."""
        turn = Turn(question.strip(), answer.strip(), interrupted)
        self.turns.append(turn)
        self._turn_ids.append(self._ids(text_turn(turn.question, turn.answer)))
        return turn

    def prompt_text(self) -> str:
        """The remembered prefix as text: what the cache holds once synced."""
        return history_prefix([(t.question, t.answer) for t in self.turns])

    @property
    def context_tokens(self) -> int:
        """Tokens of the remembered prefix (system turn and every turn's text)."""
        return len(self._system_ids) + sum(len(ids) for ids in self._turn_ids)

    @property
    def cache(self) -> DynamicCache | None:
        """The KV cache of the remembered prefix (None before the first sync); read only."""
        return self._cache

    @property
    def cached_tokens(self) -> int:
        """Tokens the cache holds now (0 before the first sync)."""
        return 0 if self._cache is None else self._cache.get_seq_length()

    @torch.inference_mode()
    def sync(self, incoming: int = 0) -> None:
        """Bring the cache up to date with ``turns``, keeping room for ``incoming`` more tokens.

        The oldest turns are dropped while the prefix plus ``incoming`` exceeds the budget; a
        question too long for the budget even alone still runs, with no turns remembered.
        """
        dropped = 0
        while self.turns and self.context_tokens + incoming > self.max_context_tokens:
            self.turns.pop(0)
            self._turn_ids.pop(0)
            dropped += 1
        if dropped and self._cached_turns:  # cached keys carry their positions: rebuild
            self._cache = None
        ids: list[int] = []
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.llm.config)
            self._cached_turns = 0
            ids = list(self._system_ids)
        for turn_ids in self._turn_ids[self._cached_turns :]:
            ids += turn_ids
        if ids:
            self._forward(self._embed_ids(ids))
        self._cached_turns = len(self.turns)

    # -- answering --------------------------------------------------------------------------

    def reply(
        self,
        audio_embeds: Tensor,
        *,
        question: str,
        options: DecodingOptions = CHAT,
        instruction: str = CHAT_INSTRUCTION,
    ) -> Reply:
        """Start answering the spoken question ``audio_embeds`` (Ta, H); iterate the Reply.

        ``question`` is its transcript, remembered in place of the audio once answered.
        """
        hidden = self.model.llm.config.hidden_size
        if audio_embeds.ndim != 2 or audio_embeds.shape[1] != hidden:
            raise ConfigError(
                f"audio_embeds must be (Ta, {hidden}) for this LLM, "
                f"got shape {tuple(audio_embeds.shape)}"
            )
        suffix = self._embed_ids(self._ids(question_suffix(instruction)))  # (1, S, H)
        audio = audio_embeds.to(suffix.device, suffix.dtype)[None]  # (1, Ta, H)
        return self._start(torch.cat([audio, suffix], dim=1), question, options)

    def reply_text(self, question: str, options: DecodingOptions = CHAT) -> Reply:
        """Start answering a typed question."""
        return self._start(self._embed_ids(self._ids(question_suffix(question))), question, options)

    def answer(
        self,
        audio_embeds: Tensor,
        options: DecodingOptions = CHAT,
        should_stop: Callable[[], bool] | None = None,
        on_token: Callable[[int, str], None] | None = None,
        *,
        question: str,
    ) -> Turn:
        """Answer the spoken question ``audio_embeds`` (Ta, H) and remember the turn.

        ``should_stop`` is asked before each token (barge-in: the turn is kept, flagged
        ``interrupted``); ``on_token`` gets each token id and the text it adds.
        """
        reply = self.reply(audio_embeds, question=question, options=options)
        while not (should_stop is not None and should_stop()):
            step = next(reply, None)
            if step is None:
                break
            if on_token is not None:
                on_token(*step)
        reply.stop()
        assert reply.turn is not None
        return reply.turn

    def _start(self, inputs_embeds: Tensor, question: str, options: DecodingOptions) -> Reply:
        if options.num_beams != 1:
            raise ConfigError(
                f"a chat reply is decoded token by token: num_beams must be 1, got {options.num_beams}"
            )
        self._stop_active()
        self.sync(incoming=inputs_embeds.shape[1] + options.max_new_tokens)
        self._active = Reply(self, inputs_embeds, question, options)
        return self._active

    def _stop_active(self) -> None:
        if self._active is not None:
            self._active.stop()

    def _finish(self, reply: Reply, interrupted: bool) -> Turn:
        """Crop the cache back to the remembered prefix and remember the reply's turn."""
        assert self._cache is not None
        with torch.inference_mode():
            self._cache.crop(self.context_tokens - self._cache.get_seq_length())
        self._active = None
        return self.append(reply.question, reply.text, interrupted)

    # -- the LLM ----------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed_ids(self, ids: list[int]) -> Tensor:
        embed = self.model.llm.get_input_embeddings()
        return embed(torch.tensor([ids], device=embed.weight.device))  # (1, N, H)

    def _forward(self, inputs_embeds: Tensor) -> Tensor:
        """Run (1, N, H) after the cached tokens, extending the cache; logits (V,) of the last."""
        assert self._cache is not None
        start = self._cache.get_seq_length()
        positions = torch.arange(start, start + inputs_embeds.shape[1], device=inputs_embeds.device)
        out = self.model.llm(
            inputs_embeds=inputs_embeds,
            position_ids=positions[None],  # (1, N)
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[0, -1]  # (V,)


class Reply:
    """One answer being generated. Each ``next()`` runs one LLM step and gives
    ``(token id, text delta)``; the turn is remembered when it ends (``<|im_end|>``,
    max_new_tokens, or ``stop()``), after which ``turn`` is set."""

    def __init__(
        self,
        conversation: Conversation,
        inputs_embeds: Tensor,
        question: str,
        options: DecodingOptions,
    ) -> None:
        self.conversation = conversation
        self.question = question
        self.options = options
        self.ids: list[int] = []
        self.turn: Turn | None = None
        self._pending: Tensor | None = inputs_embeds  # (1, N, H) not yet run
        self._choose = TokenChooser(options, conversation._eos)
        self._text = TextStream(conversation.model.tokenizer)

    @property
    def text(self) -> str:
        """The answer so far: the concatenation of the deltas given."""
        return self._text.text

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return self

    @torch.inference_mode()
    def __next__(self) -> tuple[int, str]:
        if self.turn is not None:
            raise StopIteration
        if len(self.ids) >= self.options.max_new_tokens:
            self._end(interrupted=False)
            raise StopIteration
        assert self._pending is not None
        logits = self.conversation._forward(self._pending)  # (V,)
        token = self._choose(logits, self.ids)
        if token == self.conversation._eos:
            self._end(interrupted=False)
            raise StopIteration
        self.ids.append(token)
        self._pending = self.conversation._embed_ids([token])  # (1, 1, H)
        return token, self._text.push(token)

    def stop(self) -> None:
        """End the answer now (barge-in); a no-op once it has ended."""
        if self.turn is None:
            self._end(interrupted=True)

    def _end(self, interrupted: bool) -> None:
        self.turn = self.conversation._finish(self, interrupted)


class TokenChooser:
    """Picks the next token from the LLM's scores as ``DecodingOptions`` say (greedy or sampled)."""

    def __init__(self, options: DecodingOptions, eos_id: int) -> None:
        self.sample = options.do_sample
        self.processors = LogitsProcessorList()
        if options.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        if options.eos_bias:
            self.processors.append(EosBias(eos_id, options.eos_bias))
        if options.do_sample and options.temperature != 1.0:
            self.processors.append(TemperatureLogitsWarper(options.temperature))
        if options.do_sample and options.top_p < 1.0:
            self.processors.append(TopPLogitsWarper(options.top_p))

    def __call__(self, logits: Tensor, generated: list[int]) -> int:
        """logits (V,), the answer's tokens so far -> the next token id."""
        previous = torch.tensor([generated], dtype=torch.long, device=logits.device)  # (1, n)
        scores = self.processors(previous, logits.float()[None])  # (1, V)
        if self.sample:
            return int(torch.multinomial(scores.softmax(-1), 1)[0, 0])
        return int(scores[0].argmax())


class TextStream:
    """Token ids -> text deltas that never need taking back; they concatenate to ``text``.

    Text is held back while it ends in an incomplete UTF-8 character (a byte-level token can
    split one) or in whitespace (the answer is stripped); leading whitespace is dropped.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # given out so far

    def push(self, token: int) -> str:
        """The text that ``token`` adds (often "", while a character or word is incomplete)."""
        self.ids.append(token)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        decoded = decoded.rstrip("\ufffd").strip()
        if not decoded.startswith(self.text):
            return ""  # the tokenizer rewrote earlier text; keep what was given
        delta = decoded[len(self.text) :]
        self.text = decoded
        return delta
