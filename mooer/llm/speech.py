"""Audio-token generation for the speech models, collecting the vocoder's latents as it goes.

After ``<|audio_start|>`` the omni and S2ST models generate audio tokens ``<A_n>``. The vocoder
does not read those tokens: its input is the LLM's last hidden state (after the final norm, fp32)
at each position from ``<|audio_start|>`` on. The reference gets them from a second full forward
pass over the prompt and the L generated tokens (``<|im_end|>`` included) and keeps positions
``[audio_start, L - 6)``, the 6th-last excluded. A causal LM computes the same states while it
generates: a position's state is ready when its token is fed back in, so no second pass is needed
and the latents can be vocoded while the model is still speaking.

Alignment. The last token (``<|im_end|>``, or the last one allowed by ``max_new_tokens``) is
never fed back, so generation sees positions ``[audio_start, L - 1)``: ``TAIL_DROP`` = 5 more
than the reference keeps. Those are held back: the latent of position ``i`` is released when the
token at ``i + 6`` is chosen (its presence proves ``i < L - 6``), and the 5 still held when the
answer ends are dropped. The released latents are then exactly the reference's.

Spoken chat (``SpeechReply``) runs the same on a ``Conversation``'s KV cache: the released
``s2s_chat`` instruction in the chat layout, and the turn remembered as the answer's text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from mooer.llm.conversation import CHAT, Conversation, Reply
from mooer.llm.decoding import SPEECH, DecodingOptions, token_id
from mooer.llm.generation import Generation, TokenChooser, embed_ids
from mooer.llm.prompts import AUDIO_START, TASK_PROMPTS

TAIL_DROP = 5  # collected latents the reference does not keep (it drops 6 positions, one is eos)
SPOKEN_REPLY = replace(SPEECH, max_new_tokens=1000)  # audio tokens of a spoken chat turn: 46 s
SPEECH_CHAT_INSTRUCTION = TASK_PROMPTS["s2s_chat"]


@dataclass(frozen=True)
class SpeechStep:
    """One generated token and what it made final."""

    token: int  # the chosen id; the last step's is <|im_end|> when the answer ended by itself
    text: str  # text this token adds to the answer ("" from <|audio_start|> on)
    latents: Tensor  # (n, H) fp32, latents released by this step, in order; n is 0 or 1


def forward_hidden(
    llm: PreTrainedModel, cache: DynamicCache, inputs_embeds: Tensor
) -> tuple[Tensor, Tensor]:
    """Run (1, N, H) after the tokens ``cache`` holds, extending it.

    -> last hidden states (N, H) fp32 after the final norm, and the logits (V,) of the last.
    """
    start = cache.get_seq_length()
    positions = torch.arange(start, start + inputs_embeds.shape[1], device=inputs_embeds.device)
    out = llm.get_decoder()(
        inputs_embeds=inputs_embeds,
        position_ids=positions[None],  # (1, N)
        cache=cache,
        use_cache=True,
    )
    hidden = out.last_hidden_state[0]  # (N, H), normed
    logits = llm.get_output_embeddings()(hidden[-1:])[0]  # (1, H) -> (V,)
    return hidden.float(), logits


class SpeechGeneration(Generation):
    """A speech answer generated one token at a time; iterate it for ``SpeechStep`` s.

    Text tokens come first (``text`` is the answer before ``<|audio_start|>``), then audio tokens
    whose latents are released as described in the module docstring (``latents`` holds all of
    them). ``should_stop`` is asked before every step (barge-in): when it answers True the
    generation ends, interrupted, and the held-back latents are dropped.

    ``audio_options``: how the audio tokens are chosen; then ``options`` decode only the text
    (``<|audio_start|>`` included) and each part has its own ``max_new_tokens``. None (the
    reference): ``options`` throughout, their ``max_new_tokens`` counting every token.
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        inputs_embeds: Tensor,
        options: DecodingOptions = SPEECH,
        cache: DynamicCache | None = None,
        should_stop: Callable[[], bool] | None = None,
        audio_options: DecodingOptions | None = None,
    ) -> None:
        super().__init__(llm, tokenizer, inputs_embeds, options, cache)
        self.should_stop = should_stop
        self.audio_options = audio_options
        self._choose_audio = self._choose
        if audio_options is not None:
            self._choose_audio = TokenChooser(audio_options, self._eos)
        self.audio_start = token_id(tokenizer, AUDIO_START)
        self.audio_tokens = 0  # tokens chosen after <|audio_start|>
        self._feeding_audio = False  # the pending input is <|audio_start|> or an audio token
        self._held: list[Tensor] = []  # (H,) latents not yet released, at most TAIL_DROP + 1
        self._released: list[Tensor] = []

    @property
    def speaking(self) -> bool:
        """Whether ``<|audio_start|>`` has been chosen."""
        return self._feeding_audio

    @property
    def latents(self) -> Tensor:
        """Every latent released so far, (T, H) fp32."""
        width = self.llm.config.hidden_size
        if not self._released:
            return torch.zeros(0, width)
        return torch.stack(self._released)  # (T, H)

    @torch.inference_mode()
    def __next__(self) -> SpeechStep:
        if self.ended:
            raise StopIteration
        if self.should_stop is not None and self.should_stop():
            self.stop()
            raise StopIteration
        if self._full():
            self._end(interrupted=False)
            raise StopIteration
        hidden, logits = forward_hidden(self.llm, self.cache, self._pending)  # (N, H), (V,)
        if self._feeding_audio:
            self._held.append(hidden[-1])
        choose = self._choose_audio if self._feeding_audio else self._choose
        token = choose(logits, self.ids)
        # A token now exists six positions after the oldest held latent beyond the tail.
        released = self._held[: max(0, len(self._held) - TAIL_DROP)]
        del self._held[: len(released)]
        self._released += released
        latents = torch.stack(released) if released else hidden.new_zeros(0, hidden.shape[1])
        if token == self._eos:
            self._end(interrupted=False)
            return SpeechStep(token, "", latents)
        self.ids.append(token)
        self._pending = embed_ids(self.llm, [token])  # (1, 1, H)
        text = ""
        if self._feeding_audio:
            self.audio_tokens += 1
        elif token == self.audio_start:
            self._feeding_audio = True
        else:
            text = self._text.push(token)
        return SpeechStep(token, text, latents)

    def _full(self) -> bool:
        """Whether the answer has all the tokens it may have."""
        if self._feeding_audio and self.audio_options is not None:
            return self.audio_tokens >= self.audio_options.max_new_tokens
        return len(self.ids) >= self.options.max_new_tokens

    def _end(self, interrupted: bool) -> None:
        super()._end(interrupted)
        self._held.clear()  # the reference's dropped tail (see the module docstring)


class SpeechReply(Reply, SpeechGeneration):
    """A spoken chat answer: a ``SpeechGeneration`` after a conversation's cached prefix whose
    end crops the cache and remembers the turn as text (what preceded ``<|audio_start|>``)."""


def spoken_reply(
    conversation: Conversation,
    audio_embeds: Tensor,
    *,
    question: str,
    options: DecodingOptions = CHAT,
    audio_options: DecodingOptions = SPOKEN_REPLY,
    should_stop: Callable[[], bool] | None = None,
    question_id: str | None = None,
    answer_id: str | None = None,
    instructions: str = "",
) -> SpeechReply:
    """Start answering the spoken question ``audio_embeds`` (Ta, H) aloud, ``s2s_chat`` style.

    The text is decoded with ``options`` (a text reply's), the audio tokens with
    ``audio_options``; the budget keeps room for both. ``question`` (and the two ids) are
    remembered as for ``Conversation.reply``.
    """
    inputs = conversation.question_inputs(audio_embeds, SPEECH_CHAT_INSTRUCTION)  # (1, N, H)
    return conversation.start(
        inputs,
        question,
        options,
        kind=SpeechReply,
        new_tokens=options.max_new_tokens + audio_options.max_new_tokens,
        question_id=question_id,
        answer_id=answer_id,
        instructions=instructions,
        should_stop=should_stop,
        audio_options=audio_options,
    )
