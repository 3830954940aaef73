"""Multi-turn chat memory: past turns kept as text and as the LLM's KV cache of that text.

The chat format (the training objective matches it)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n    system_turn(), cached
    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n
                                                     text_turn() per past turn, cached
    [audio embeddings]<|im_start|>user\\nAnswer my question. <|im_end|>\\n<|im_start|>assistant\\n
                                                     the current question + question_suffix()

A typed question (the last message, a user one of one line) is read as a spoken one is, its
words where the audio would be (``typed_question``), as the trainer lays out ``chat_text``
items; once answered it is remembered as a user message like any past turn. A reply with no
question (the assistant speaks first, or answers a context a client packed into one message of
several lines) reads ``<|im_start|>assistant\\n`` right after the remembered messages.

Past turns are remembered as text (the question's transcript and the answer), not as audio: a
turn's text costs a few dozen tokens where its audio costs one per 120 ms. After each answer the
cache is cropped back to the remembered prefix and the new turn's text is appended, so each
question runs only its own tokens through the LLM. When the context would exceed its budget the
oldest turns are dropped and the cache is rebuilt from the remaining text.

The memory is a list of messages (user, assistant or system, each a ``<|im_start|>role`` block;
a turn is a user message and the assistant's answer), so a live session can also add typed
messages anywhere, drop one, or cut an answer to what was heard (OpenAI Realtime's conversation
items): the cache keeps the messages before the first one changed and recomputes the rest.

On a backend that takes whole prompts as embeddings (vLLM) there is no cache here: each reply
re-sends the remembered prefix's embeddings before the question (vLLM's prefix caching reuses
what it computed for the same prefix), and the answer's tokens stream back (``StreamedReply``).

The system turn holds the session's instructions (OpenAI Realtime ``session.instructions``);
without any it is the released one byte for byte, the text the checkpoints were trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor
from transformers import DynamicCache

from mooer.errors import ConfigError, check_number
from mooer.llm.backend import EmbedsBackend, TokenStream
from mooer.llm.decoding import DecodingOptions
from mooer.llm.generation import (
    Generation,
    TextStream,
    embed_ids,
    forward_cached,
    require_single_beam,
    turn_end_id,
)
from mooer.llm.prompts import IM_END, TEMPLATE

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

CHAT_INSTRUCTION = "Answer my question. "
SYSTEM_TURN = TEMPLATE.split("<|im_start|>user", 1)[0]  # the released system turn, byte for byte
CHAT = DecodingOptions(max_new_tokens=256)  # greedy: the replies of a small model stay on topic
R = TypeVar("R", bound="Reply")


def system_turn(instructions: str = "") -> str:
    """The system turn with ``instructions`` as its content; blank: the released one."""
    if not isinstance(instructions, str):
        raise ConfigError(f"instructions must be a string, got {type(instructions).__name__}")
    if not instructions.strip():
        return SYSTEM_TURN
    return f"<|im_start|>system\n{instructions.strip()}{IM_END}\n"


ROLES = ("user", "assistant", "system")
REPLY_START = "<|im_start|>assistant\n"  # what the LLM reads before it answers


def message_text(role: str, text: str) -> str:
    """One remembered message as the cached text holds it."""
    return f"<|im_start|>{role}\n{text}{IM_END}\n"


def text_turn(question: str | None, answer: str | None) -> str:
    """A finished turn as the cached text remembers it; question None: the assistant spoke
    first (a greeting), no user message before its answer; answer None: a user message not
    answered (a client's context sent as one message before the assistant speaks)."""
    asked = "" if question is None else message_text("user", question)
    return asked + ("" if answer is None else message_text("assistant", answer))


def history_prefix(history: Sequence[tuple[str | None, str | None]], instructions: str = "") -> str:
    """The text before the current question's audio: the system turn and past (question, answer)
    turns (question None: the assistant spoke first, see ``text_turn``)."""
    turns = "".join(text_turn(question, answer) for question, answer in history)
    return system_turn(instructions) + turns


def question_suffix(instruction: str = CHAT_INSTRUCTION) -> str:
    """What follows the current question's audio: the user turn and the assistant's opening."""
    return message_text("user", instruction) + REPLY_START


def typed_question(text: str) -> str:
    """A typed question as the LLM reads it after the prefix: its words where a spoken
    question's audio goes, then ``question_suffix()`` (the trainer's ``chat_text`` layout)."""
    return text + question_suffix()


@dataclass
class Turn:
    """One question and its answer; ``interrupted`` when the answer was cut short (barge-in)."""

    question: str
    answer: str
    interrupted: bool = False


@dataclass
class Message:
    """One remembered message; ``id`` is its owner's name for it (a Realtime item id), if any;
    ``interrupted``: an answer cut short (barge-in, or cut to what was heard)."""

    role: str
    text: str
    id: str | None = None
    interrupted: bool = False


def is_typed_question(message: Message) -> bool:
    """Whether ``message``, last in the memory, is a question a reply answers in the
    ``typed_question`` layout: a user message of one line. Several lines are a context a client
    packed into one message (Pipecat sends its history so), after which the assistant speaks."""
    return message.role == "user" and "\n" not in message.text.strip()


class Conversation:
    """The chat state of one session: its messages and the KV cache of their text.

    Not thread-safe: one thread (the engine's worker) runs all of a conversation's model work.
    """

    def __init__(
        self, model: SpeechLLM, max_context_tokens: int = 2048, instructions: str = ""
    ) -> None:
        check_number(max_context_tokens, "max_context_tokens", low=64, integer=True)
        self.model = model
        self.max_context_tokens = max_context_tokens
        self.messages: list[Message] = []
        turn_end_id(model.tokenizer)  # fail early on a tokenizer without turns
        self._system_ids = self._ids(system_turn(instructions))
        self._instructions = instructions
        self._message_ids: list[list[int]] = []  # token ids of message_text() of each message
        self._cache: DynamicCache | None = None
        self._cached = 0  # messages whose text is in the cache, after the system turn
        self._active: Reply | None = None

    # -- memory -----------------------------------------------------------------------------

    @property
    def instructions(self) -> str:
        """The system turn's content ("" for the released one)."""
        return self._instructions

    @instructions.setter
    def instructions(self, instructions: str) -> None:
        """New instructions keep the turns; the cache is rebuilt at the next ``sync``."""
        system = system_turn(instructions)  # checks the type
        if instructions == self._instructions:
            return
        self._stop_active()
        self._instructions = instructions
        self._system_ids = self._ids(system)
        self._cache, self._cached = None, 0

    @property
    def turns(self) -> list[Turn]:
        """The remembered questions and answers: each assistant message after a user one."""
        pairs = zip(self.messages, self.messages[1:])
        return [
            Turn(q.text, a.text, a.interrupted)
            for q, a in pairs
            if q.role == "user" and a.role == "assistant"
        ]

    def reset(self) -> None:
        """Forget every message."""
        self._stop_active()
        self.messages.clear()
        self._message_ids.clear()
        self._cache, self._cached = None, 0

    def append(self, question: str, answer: str, interrupted: bool = False) -> Turn:
        """Remember a turn given as text (its tokens enter the cache at the next ``sync``)."""
        self.add(Message("user", question))
        answered = self.add(Message("assistant", answer, interrupted=interrupted))
        return Turn(self.messages[-2].text, answered.text, interrupted)

    def add(self, message: Message, index: int | None = None) -> Message:
        """Remember ``message`` (its text stripped) at ``index`` (default: last); the cache keeps
        the messages before it. A reply in progress ends first (and is remembered)."""
        if message.role not in ROLES:
            raise ConfigError(f"message role must be one of {', '.join(ROLES)}: {message.role!r}")
        if not isinstance(message.text, str):
            raise ConfigError(f"message text must be a string, got {type(message.text).__name__}")
        self._stop_active()
        message = replace(message, text=message.text.strip())
        index = len(self.messages) if index is None else max(0, min(index, len(self.messages)))
        self._uncache_from(index)
        self.messages.insert(index, message)
        self._message_ids.insert(index, self._ids(message_text(message.role, message.text)))
        return message

    def index_of(self, message_id: str) -> int | None:
        """Where the message named ``message_id`` is, or None (never given, or dropped)."""
        for index, message in enumerate(self.messages):
            if message.id == message_id:
                return index
        return None

    def remove(self, message_id: str) -> bool:
        """Forget the message named ``message_id``; False if there is none."""
        self._stop_active()
        index = self.index_of(message_id)
        if index is None:
            return False
        self._uncache_from(index)
        del self.messages[index], self._message_ids[index]
        return True

    def rewrite(self, message_id: str, text: str, interrupted: bool = True) -> bool:
        """Replace the text of the message named ``message_id`` (an answer cut to what was
        heard); False if there is none."""
        self._stop_active()
        index = self.index_of(message_id)
        if index is None:
            return False
        self._uncache_from(index)
        message = replace(self.messages[index], text=text.strip(), interrupted=interrupted)
        self.messages[index] = message
        self._message_ids[index] = self._ids(message_text(message.role, message.text))
        return True

    def prompt_text(self) -> str:
        """The remembered prefix as text: what the cache holds once synced."""
        messages = "".join(message_text(m.role, m.text) for m in self.messages)
        return system_turn(self.instructions) + messages

    @property
    def context_tokens(self) -> int:
        """Tokens of the remembered prefix (system turn and every message's text)."""
        return self._prefix_tokens(len(self.messages))

    def _prefix_tokens(self, count: int) -> int:
        """Tokens of the system turn and the first ``count`` messages' text."""
        return len(self._system_ids) + sum(len(ids) for ids in self._message_ids[:count])

    @property
    def cache(self) -> DynamicCache | None:
        """The KV cache of the remembered prefix (None before the first sync); read only."""
        return self._cache

    @property
    def cached_tokens(self) -> int:
        """Tokens the cache holds now (0 before the first sync)."""
        return 0 if self._cache is None else self._cache.get_seq_length()

    @torch.inference_mode()
    def sync(self, incoming: int = 0, held: int = 0) -> None:
        """Bring the cache up to date with ``messages`` but the last ``held`` (a typed question
        the reply reads in its own layout, within ``incoming``), keeping room for ``incoming``
        more tokens.

        The oldest messages are dropped while the prefix plus ``incoming`` exceeds the budget; a
        question too long for the budget even alone still runs, with nothing remembered.
        """
        dropped = 0
        while len(self.messages) > held and (
            self._prefix_tokens(len(self.messages) - held) + incoming > self.max_context_tokens
        ):
            self.messages.pop(0)
            self._message_ids.pop(0)
            dropped += 1
        if dropped and self._cached:  # cached keys carry their positions: rebuild
            self._cache = None
        end = len(self.messages) - held
        self._uncache_from(end)
        if self.backend is not None:  # the prefix is re-sent with each question
            self._cached = end
            return
        ids: list[int] = []
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.llm.config)
            self._cached = 0
            ids = list(self._system_ids)
        for message_ids in self._message_ids[self._cached : end]:
            ids += message_ids
        if ids:
            self._forward(self._embed_ids(ids))
        self._cached = end

    # -- answering --------------------------------------------------------------------------

    def reply(
        self,
        audio_embeds: Tensor,
        *,
        question: str,
        options: DecodingOptions = CHAT,
        instruction: str = CHAT_INSTRUCTION,
        question_id: str | None = None,
        answer_id: str | None = None,
        instructions: str = "",
    ) -> Reply:
        """Start answering the spoken question ``audio_embeds`` (Ta, H); iterate the Reply.

        ``question`` is its transcript, remembered in place of the audio once answered;
        ``question_id`` and ``answer_id`` name the two messages remembered; ``instructions``
        as for ``start``.
        """
        inputs = self.question_inputs(audio_embeds, instruction)
        return self.start(
            inputs,
            question,
            options,
            question_id=question_id,
            answer_id=answer_id,
            instructions=instructions,
        )

    def reply_text(self, question: str, options: DecodingOptions = CHAT) -> Reply:
        """Start answering a typed question (remembered at once)."""
        self.add(Message("user", question))
        return self.respond(options)

    def respond(
        self,
        options: DecodingOptions = CHAT,
        *,
        instructions: str = "",
        answer_id: str | None = None,
        remember: bool = True,
    ) -> Reply:
        """Start an answer to the remembered messages alone: the typed question last among
        them (``is_typed_question``) read in the ``typed_question`` layout, or none (the
        assistant speaks first); the arguments as for ``start``."""
        typed = bool(self.messages) and is_typed_question(self.messages[-1])
        text = typed_question(self.messages[-1].text) if typed else REPLY_START
        inputs = self._embed_ids(self._ids(text))  # (1, S, H)
        return self.start(
            inputs,
            None,
            options,
            answer_id=answer_id,
            remember=remember,
            instructions=instructions,
            held=int(typed),
        )

    def question_inputs(self, audio_embeds: Tensor, instruction: str = CHAT_INSTRUCTION) -> Tensor:
        """A spoken question as the LLM reads it after the prefix: its audio (Ta, H), then
        ``question_suffix(instruction)`` -> (1, Ta + S, H)."""
        hidden = self.model.llm.config.hidden_size
        if audio_embeds.ndim != 2 or audio_embeds.shape[1] != hidden:
            raise ConfigError(
                f"audio_embeds must be (Ta, {hidden}) for this LLM, "
                f"got shape {tuple(audio_embeds.shape)}"
            )
        suffix = self._embed_ids(self._ids(question_suffix(instruction)))  # (1, S, H)
        audio = audio_embeds.to(suffix.device, suffix.dtype)[None]  # (1, Ta, H)
        return torch.cat([audio, suffix], dim=1)

    def start(
        self,
        inputs_embeds: Tensor,
        question: str | None,
        options: DecodingOptions,
        *,
        kind: type[R] | None = None,
        new_tokens: int | None = None,
        question_id: str | None = None,
        answer_id: str | None = None,
        remember: bool = True,
        instructions: str = "",
        held: int = 0,
        **generation: Any,
    ) -> R:
        """Start a reply to ``inputs_embeds`` (1, N, H) after the remembered prefix.

        ``question``: the user message remembered before the answer (None: none, the question
        is already remembered or there is none); ``question_id`` and ``answer_id`` name the two
        messages; ``remember`` False: neither is remembered (the cache is only cropped back).
        ``instructions``: this reply's own, read as a system message just before
        ``inputs_embeds`` and not remembered (the system turn stays). ``held``: the last
        messages ``inputs_embeds`` holds (a typed question), left out of the cached prefix.
        ``kind``: a ``Reply`` subclass (default ``Reply``), made with ``generation`` as its
        further arguments (``mooer.llm.speech.SpeechReply`` speaks). ``new_tokens``: the most
        tokens it may add (default ``options.max_new_tokens``), for which the token budget
        keeps room.
        """
        require_single_beam(options)  # before anything changes
        if self.backend is not None and kind is not None:
            raise ConfigError(
                f"{kind.__name__} needs the LLM's hidden states, which the "
                f"{self.backend.name} backend does not return: use the hf backend"
            )
        self._stop_active()
        if instructions.strip():
            system = self._embed_ids(self._ids(message_text("system", instructions.strip())))
            inputs_embeds = torch.cat([system.to(inputs_embeds.dtype), inputs_embeds], dim=1)
        room = options.max_new_tokens if new_tokens is None else new_tokens
        self.sync(incoming=inputs_embeds.shape[1] + room, held=held)
        if self.backend is not None:
            cached = sum(self._message_ids[: self._cached], [])
            prefix = self._embed_ids(self._system_ids + cached)  # (1, P, H)
            whole = torch.cat([prefix, inputs_embeds.to(prefix.dtype)], dim=1)  # (1, P + N, H)
            asked = self.backend.stream(whole[0], options)
            reply: Reply | StreamedReply = StreamedReply(
                self, asked, question or "", whole.shape[1]
            )
        else:
            reply = (kind or Reply)(self, inputs_embeds, question or "", options, **generation)
        reply.memo = (
            Message("user", question, question_id) if question is not None else None,
            answer_id,
            remember,
        )
        self._active = reply
        return reply  # type: ignore[return-value]

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

    @property
    def backend(self) -> EmbedsBackend | None:
        """The model's LLM backend when it takes whole prompts (vLLM); None: the cache here."""
        backend = getattr(self.model, "llm_backend", None)  # None: an LLM and tokenizer alone
        return backend if isinstance(backend, EmbedsBackend) else None

    def _stop_active(self) -> None:
        if self._active is not None:
            self._active.stop()

    def _uncache_from(self, index: int) -> None:
        """The messages from ``index`` on leave the cache (``sync`` recomputes them)."""
        if self._cache is None or index >= self._cached:
            return
        keep = len(self._system_ids) + sum(len(ids) for ids in self._message_ids[:index])
        with torch.inference_mode():
            self._cache.crop(keep - self._cache.get_seq_length())
        self._cached = index

    def _finish(self, reply: Reply | StreamedReply) -> Turn:
        """Crop the cache back to the remembered prefix and remember the reply's messages."""
        if self._cache is not None:
            with torch.inference_mode():
                kept = self._prefix_tokens(self._cached)  # a typed question's text goes too
                self._cache.crop(kept - self._cache.get_seq_length())
        self._active = None
        question, answer_id, remember = reply.memo
        if remember:
            if question is not None:
                self.add(question)
            self.add(Message("assistant", reply.text, answer_id, reply.interrupted))
        return Turn(reply.question.strip(), reply.text.strip(), reply.interrupted)

    def _ids(self, text: str) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed_ids(self, ids: list[int]) -> Tensor:
        return embed_ids(self.model.llm, ids)

    def _forward(self, inputs_embeds: Tensor) -> Tensor:
        assert self._cache is not None
        return forward_cached(self.model.llm, self._cache, inputs_embeds)


class Reply(Generation):
    """A chat answer: a Generation after the conversation's cached prefix, whose end crops the
    cache and remembers the turn (then ``turn`` is set).

    ``generation``: further arguments of the Generation class that a subclass mixes in after
    this one (``SpeechReply(Reply, SpeechGeneration)``).
    """

    def __init__(
        self,
        conversation: Conversation,
        inputs_embeds: Tensor,
        question: str,
        options: DecodingOptions,
        **generation: Any,
    ) -> None:
        model = conversation.model
        super().__init__(
            model.llm, model.tokenizer, inputs_embeds, options, conversation.cache, **generation
        )
        self.conversation = conversation
        self.question = question
        self.turn: Turn | None = None
        self.cached_tokens = conversation.cached_tokens  # the prefix it reads from the cache
        self.input_tokens = self.cached_tokens + inputs_embeds.shape[1]  # all it reads
        # What the end remembers: the question's message, the answer's id, whether at all
        self.memo: tuple[Message | None, str | None, bool] = (None, None, True)

    def pending(self, whole: bool = False) -> Future | None:
        """Nothing to wait for: the tokens are computed here, one per step."""
        return None

    def _end(self, interrupted: bool) -> None:
        super()._end(interrupted)
        self.turn = self.conversation._finish(self)


class StreamedReply:
    """A chat answer from a backend that streams it (vLLM): iterating gives its tokens as they
    come, as a ``Reply`` does, and the end (or ``stop``) remembers the turn.

    Iterating blocks until the next token has come: engine work yields ``pending()`` first,
    so that the worker serves others meanwhile.
    """

    def __init__(
        self, conversation: Conversation, stream: TokenStream, question: str, inputs: int
    ) -> None:
        self.conversation = conversation
        self.stream = stream
        self.question = question
        self.ids: list[int] = []
        self.ended = False
        self.interrupted = False
        self.turn: Turn | None = None
        self.cached_tokens = 0  # the whole prompt is sent each time
        self.input_tokens = inputs
        self.memo: tuple[Message | None, str | None, bool] = (None, None, True)
        self._text = TextStream(conversation.model.tokenizer)
        self._eos = turn_end_id(conversation.model.tokenizer)
        self._read = 0  # of the stream's ids

    @property
    def text(self) -> str:
        return self._text.text

    def pending(self, whole: bool = False) -> Future | None:
        """What to wait for before the next step runs without blocking: the next token (or
        the end), or with ``whole`` the end; None when it is there."""
        if whole:
            return None if self.stream.done.done() else self.stream.done
        return self.stream.more(self._read)

    def __iter__(self) -> StreamedReply:
        return self

    def __next__(self) -> tuple[int, str]:
        if self.ended:
            raise StopIteration
        while (more := self.stream.more(self._read)) is not None:
            wait_futures([more])
        came = self.stream.ids(self._read)
        if not came or came[0] == self._eos:
            self.stream.done.result()  # the backend's error, if it failed
            self._end(interrupted=False)
            raise StopIteration
        token = came[0]
        self._read += 1
        self.ids.append(token)
        return token, self._text.push(token)

    def stop(self) -> None:
        """End now (barge-in): the answer still being made is dropped; a no-op once ended."""
        if not self.ended:
            self.stream.done.cancel()
            self._end(interrupted=True)

    def _end(self, interrupted: bool) -> None:
        self.ended, self.interrupted = True, interrupted
        self.turn = self.conversation._finish(self)
