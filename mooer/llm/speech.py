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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from mooer.llm.conversation import Generation, embed_ids
from mooer.llm.decoding import SPEECH, DecodingOptions, token_id
from mooer.llm.prompts import AUDIO_START

TAIL_DROP = 5  # collected latents the reference does not keep (it drops 6 positions, one is eos)


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
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        inputs_embeds: Tensor,
        options: DecodingOptions = SPEECH,
        cache: DynamicCache | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(llm, tokenizer, inputs_embeds, options, cache)
        self.should_stop = should_stop
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
        if len(self.ids) >= self.options.max_new_tokens:
            self._end(interrupted=False)
            raise StopIteration
        hidden, logits = forward_hidden(self.llm, self.cache, self._pending)  # (N, H), (V,)
        if self._feeding_audio:
            self._held.append(hidden[-1])
        token = self._choose(logits, self.ids)
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

    def _end(self, interrupted: bool) -> None:
        super()._end(interrupted)
        self._held.clear()  # the reference's dropped tail (see the module docstring)
