"""Where the LLM stage runs: the seam between a prompt with audio embeddings and its answer.

========  ==============================================================================
backend   runs the LLM
========  ==============================================================================
hf        in this process with transformers (the default): beam search, the token loop,
          chat memory as a KV cache, the speech head
vllm      on vLLM, in this process (``VllmBackend``) or on a separately started vLLM
          OpenAI server (``--llm-url``, ``RemoteBackend``): prompts go in as embeddings,
          greedy or sampled tokens stream back (``TokenStream``), and concurrent requests
          share one continuously batched engine
========  ==============================================================================

A backend answers with futures, so that a caller on the engine's worker can start several
decodes (several sessions', or one utterance's asr and ast prompts) and wait for them together:
the hf backend's futures are done when it returns (it computes in place), vLLM's are done when
its engine has the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Protocol, TypeVar

from torch import Tensor

from mooer.errors import ConfigError
from mooer.llm.decoding import DecodingOptions, answer_ids, generate_ids, splice
from mooer.llm.generation import Generation, turn_end_id

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

BACKENDS = ("hf", "vllm")
T = TypeVar("T")

# What a decode yields while it waits (the engine parks the job until the future is done).
Waiting = Generator[Future, None, T]


class LLMBackend(Protocol):
    """Answers prompts whose audio embeddings come first (the ``splice`` layout)."""

    name: str

    def answers(
        self,
        model: SpeechLLM,
        embeds: Tensor,
        lengths: Tensor,
        prompt: str,
        options: DecodingOptions,
        step_by_step: bool,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Future[str]]:
        """One answer text per item of ``embeds`` (B, Ta, H) with ``lengths`` (B,), all asked
        the templated ``prompt``; ``step_by_step``: the caller wants the token loop's answer
        (live partials), which a batching backend gives anyway. ``should_stop``, asked
        between the decode's steps (tokens, or beam search steps): True ends the answer where
        it is (a partial whose utterance has ended is not worth finishing: its final waits
        behind it; nor an early final whose pause was not the end)."""

    def close(self) -> None:
        """Stop the engine, if the backend has one."""


def done(value: T) -> Future[T]:
    """A future that already holds ``value``."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


def waiting(futures: Sequence[Future[T]]) -> Waiting[list[T]]:
    """Yield each future not yet done (a caller on the engine parks until it is); the results.

    Closed before the end (the engine dropped the job), it cancels what is still running.
    """
    try:
        for future in futures:
            if not future.done():
                yield future
    finally:
        for future in futures:
            future.cancel()  # a no-op on the done ones
    return [future.result() for future in futures]


def run_blocking(steps: Waiting[T]) -> T:
    """Drive ``steps`` to its end on this thread, blocking on each future it waits for."""
    try:
        while True:
            wait_futures([next(steps)])
    except StopIteration as finished:
        return finished.value


def one_by_one(model: SpeechLLM, embeds: Tensor, lengths: Tensor, prompt: str) -> Iterator[Tensor]:
    """Each item's audio (B, Ta, H) spliced before ``prompt`` alone, unpadded: (1, L_b, H)."""
    for b in range(len(embeds)):
        one, length = embeds[b : b + 1], lengths[b : b + 1]  # (1, Ta, H), (1,)
        yield splice(model.llm, model.tokenizer, one, length, [prompt])[0]


class HFBackend:
    """The LLM in this process with transformers: ``generate()`` (beam search) for whole
    answers, the token loop for ``step_by_step`` ones."""

    name = "hf"

    def answers(
        self,
        model: SpeechLLM,
        embeds: Tensor,
        lengths: Tensor,
        prompt: str,
        options: DecodingOptions,
        step_by_step: bool,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Future[str]]:
        if not step_by_step:
            prompts = [prompt] * len(embeds)
            ids = generate_ids(
                model.llm, model.tokenizer, embeds, lengths, prompts, options, None, should_stop
            )
            texts = [model.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]
            return [done(text) for text in texts]
        texts = []
        for inputs in one_by_one(model, embeds, lengths, prompt):
            generation = Generation(model.llm, model.tokenizer, inputs, options)
            for _ in generation:
                if should_stop is not None and should_stop():
                    generation.stop()
            texts.append(done(generation.text))
        return texts

    def close(self) -> None:
        pass


class TokenStream:
    """The token ids of one answer as a backend makes them: added by the backend's thread,
    read by another (a chat reply's text streams out as they come). ``done`` holds them all
    once the answer has ended, or the backend's error; cancelling it stops the request, and so
    does a ``stop_when`` condition that comes true (``done`` then holds the ids come so far).
    A backend reading its request into the stream stops once ``done`` is done.
    ``arrivals``: how many times ids came in (more than one: they streamed)."""

    def __init__(self) -> None:
        self.done: Future[list[int]] = Future()
        self.arrivals = 0
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._more: Future[None] = Future()  # done at the next arrival or the end
        self._should_stop: Callable[[], bool] | None = None

    def stop_when(self, should_stop: Callable[[], bool]) -> None:
        """Ask ``should_stop`` at each arrival from now on (on the backend's thread): True
        ends the answer where it is (``LLMBackend.answers``' ``should_stop``)."""
        self._should_stop = should_stop

    def add(self, ids: Sequence[int]) -> None:
        """More ids of the answer (the backend's thread); none once it has ended (stopped)."""
        if not ids or self.done.done():
            return
        with self._lock:
            self._ids += ids
            self.arrivals += 1
            more, self._more = self._more, Future()
        more.set_result(None)
        if self._should_stop is not None and self._should_stop():
            self.finish()

    def finish(self, error: BaseException | None = None) -> None:
        """The answer has ended, or failed with ``error`` (the backend's thread)."""
        with self._lock:
            ids, more = list(self._ids), self._more
        try:
            if error is None:
                self.done.set_result(ids)
            else:
                self.done.set_exception(error)
        except InvalidStateError:  # cancelled meanwhile
            pass
        if not more.done():
            more.set_result(None)

    def ids(self, start: int = 0) -> list[int]:
        """The ids come so far, from the ``start``-th on."""
        with self._lock:
            return self._ids[start:]

    def more(self, seen: int) -> Future[None] | None:
        """A future done when ids past the first ``seen`` have come or the answer has ended;
        None when that is so already."""
        with self._lock:
            if len(self._ids) > seen or self.done.done():
                return None
            return self._more


class EmbedsBackend:
    """A backend that takes whole prompts as embeddings and streams back token ids (vLLM in
    this process or behind a server); subclasses implement ``stream``."""

    name = "vllm"

    def stream(self, inputs_embeds: Tensor, options: DecodingOptions) -> TokenStream:
        """The answer token ids to one prompt ``inputs_embeds`` (L, H), as they come, ending
        at ``<|im_end|>`` (which the stream includes)."""
        raise NotImplementedError

    def answers(
        self,
        model: SpeechLLM,
        embeds: Tensor,
        lengths: Tensor,
        prompt: str,
        options: DecodingOptions,
        step_by_step: bool,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Future[str]]:
        if options.hotwords is not None:
            check_hotwords(self)
        texts = []
        for inputs in one_by_one(model, embeds, lengths, prompt):
            stream = self.stream(inputs[0], options)
            if should_stop is not None:
                stream.stop_when(should_stop)  # the request is aborted when it answers True
            texts.append(self.text(model, stream.done))
        return texts

    @staticmethod
    def text(model: SpeechLLM, ids: Future[list[int]]) -> Future[str]:
        """The answer text of the token ids ``ids`` will hold, read as the hf backend reads its."""
        text: Future[str] = Future()
        eos = turn_end_id(model.tokenizer)

        def read(finished: Future[list[int]]) -> None:
            try:
                tokens = answer_ids(finished.result(), eos, eos)
                text.set_result(model.tokenizer.decode(tokens, skip_special_tokens=True).strip())
            except BaseException as exc:  # the engine's failure goes to whoever waits
                text.set_exception(exc)

        ids.add_done_callback(read)
        text.add_done_callback(lambda asked: asked.cancelled() and ids.cancel())
        return text

    def close(self) -> None:
        pass


def check_hotwords(backend: LLMBackend) -> None:
    """Refuse hotwords on a backend that cannot bias its decoding by them (vLLM: its requests
    carry no logits processor that follows each hypothesis)."""
    if backend.name != "hf":
        raise ConfigError(
            f"hotwords are not supported on the {backend.name} LLM backend: "
            "serve with --llm-backend hf to use them"
        )


def check_backend_name(name: str) -> None:
    if name not in BACKENDS:
        raise ConfigError(f"unknown llm_backend {name!r}: expected one of {', '.join(BACKENDS)}")


def embeds_for_vllm(inputs_embeds: Tensor) -> Tensor:
    """(L, H) on the CPU, contiguous: what vLLM and ``torch.save`` take."""
    return inputs_embeds.detach().to("cpu").contiguous()
