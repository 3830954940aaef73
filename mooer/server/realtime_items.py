"""The Realtime conversation as ``/v1/realtime`` keeps it for its clients.

The items in order, as last sent (``conversation.item.retrieve``, ``previous_item_id``, errors
for unknown ids); a spoken reply's audio with what each part of it says, so that
``conversation.item.truncate`` cuts both to what the listener heard; and a client's
``conversation.item.create`` read into a message for the chat memory (``mooer.agent``), which
follows every change.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any

from mooer.server.connection import ProtocolError
from mooer.text import units

ROOT = "root"  # previous_item_id that puts an item first
KEPT_SPEECH = 8  # spoken replies whose audio is kept (truncate, retrieve); older ones drop it
# Content types each role's message may carry, and the field holding its text
CONTENT = {
    "user": {"input_text": "text", "input_audio": "transcript"},
    "assistant": {"output_text": "text", "output_audio": "transcript"},
    "system": {"input_text": "text"},
}


@dataclass
class Speech:
    """A spoken reply: its PCM16 audio at ``rate`` and its transcript, with the transcript's
    length at the end of each audio delta (``parts``: (audio bytes, transcript chars))."""

    rate: int
    pcm: bytearray = field(default_factory=bytearray)
    transcript: str = ""
    parts: list[tuple[int, int]] = field(default_factory=list)
    cut: bool = False  # truncated: what follows is not added

    def add_text(self, delta: str) -> None:
        if not self.cut:
            self.transcript += delta

    def add_audio(self, pcm: bytes) -> None:
        if not self.cut:
            self.pcm += pcm
            self.parts.append((len(self.pcm), len(self.transcript)))

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) // 2 * 1000 // self.rate

    def truncate(self, end_ms: int) -> str:
        """Keep the audio before ``end_ms`` and the transcript heard by then; that transcript.

        Within the audio delta playing at ``end_ms`` (a sentence, or a token of a speech
        head), the words heard are taken in proportion to its audio played, whole words only (a
        word cut short is not what was said); text after the last audio delta was never heard.
        """
        end = min(len(self.pcm), end_ms * self.rate // 1000 * 2)
        heard, start_bytes, start_chars = 0, 0, 0
        for stop_bytes, stop_chars in self.parts:
            if end >= stop_bytes:
                heard = stop_chars
            else:
                part = self.transcript[start_chars:stop_chars]
                share = len(part) * (end - start_bytes) // max(1, stop_bytes - start_bytes)
                heard = start_chars
                for unit in units(part):  # whole words only (a CJK character is one)
                    if heard + len(unit) > start_chars + share:
                        break
                    heard += len(unit)
                break
            start_bytes, start_chars = stop_bytes, stop_chars
        self.pcm = self.pcm[:end]
        self.transcript = self.transcript[:heard].strip()
        self.parts = [(min(b, end), min(c, heard)) for b, c in self.parts if b <= end]
        self.cut = True
        return self.transcript


class Items:
    """The conversation's items in order, by id (each a ``realtime.item`` object)."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self.speech: dict[str, Speech] = {}  # spoken replies' audio, the newest KEPT_SPEECH

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    @property
    def last(self) -> str | None:
        return self._order[-1] if self._order else None

    def add(self, item: dict[str, Any], after: str | None = None) -> str | None:
        """Put ``item`` last, or after the item ``after`` (``ROOT``: first); the id before it."""
        index = len(self._order)
        if after == ROOT:
            index = 0
        elif after is not None:
            index = self._order.index(after) + 1
        self._order.insert(index, item["id"])
        self._items[item["id"]] = item
        return self._order[index - 1] if index else None

    def update(self, item: dict[str, Any]) -> None:
        """The item as now sent (added first if it is new)."""
        if item["id"] not in self._items:
            self.add(item)
        self._items[item["id"]] = item

    def remove(self, item_id: str) -> None:
        del self._items[item_id]
        self._order.remove(item_id)
        self.speech.pop(item_id, None)

    def keep_speech(self, item_id: str, speech: Speech) -> None:
        self.speech[item_id] = speech
        while len(self.speech) > KEPT_SPEECH:
            del self.speech[next(iter(self.speech))]

    def get(self, item_id: object, param: str = "item_id") -> dict[str, Any]:
        """The item ``item_id``, or a ``ProtocolError`` naming ``param``."""
        if not isinstance(item_id, str):
            raise ProtocolError("invalid_value", f"{param} must be an item id string", param)
        if item_id not in self._items:
            raise ProtocolError(
                "item_not_found", f"no item with id {item_id!r} in the conversation", param
            )
        return self._items[item_id]

    def retrieved(self, item_id: str) -> dict[str, Any]:
        """The item as ``conversation.item.retrieved`` gives it: a spoken reply with its audio
        (base64 PCM16) while it is kept."""
        item = copy.deepcopy(self._items[item_id])
        speech = self.speech.get(item_id)
        if speech is not None:
            item["content"][0]["audio"] = base64.b64encode(bytes(speech.pcm)).decode("ascii")
        return item


def read_message(item: dict[str, Any], name: str = "item") -> tuple[str, str, dict[str, Any]]:
    """A ``conversation.item.create`` item -> (role, its text, the item as stored and echoed);
    ``name``: the item's place in the event, for errors.

    Messages only (mooer has no tools); audio content is taken by its ``transcript``.
    """
    kind = item.get("type", "message")
    if kind != "message":
        raise ProtocolError(
            "unsupported_value",
            f"{name}.type {kind!r} is not served: mooer takes messages (it has no tools)",
            f"{name}.type",
        )
    role = item.get("role")
    if role not in CONTENT:
        raise ProtocolError(
            "invalid_value",
            f"{name}.role {role!r}: expected 'user', 'assistant' or 'system'",
            f"{name}.role",
        )
    parts = item.get("content")
    if not isinstance(parts, list):
        raise ProtocolError(
            "invalid_value",
            f"{name}.content must be a list of content parts",
            f"{name}.content",
        )
    texts = []
    for i, part in enumerate(parts):
        param = f"{name}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in CONTENT[role]:
            raise ProtocolError(
                "unsupported_value",
                f"{param}.type {kind!r}: a {role} message takes {', '.join(CONTENT[role])}",
                f"{param}.type",
            )
        key = CONTENT[role][kind]
        text = part.get(key)
        if not isinstance(text, str) or not text.strip():
            how = "send speech with input_audio_buffer.append" if key == "transcript" else ""
            raise ProtocolError(
                "invalid_value",
                f"{param} needs its {key} as a non-empty string" + (f" ({how})" if how else ""),
                f"{param}.{key}",
            )
        texts.append(text.strip())
    if not texts:
        raise ProtocolError("invalid_value", f"{name}.content has no part", f"{name}.content")
    stored = {
        "id": item.get("id"),
        "object": "realtime.item",
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [{k: v for k, v in p.items() if k != "audio"} for p in parts],
    }
    return role, " ".join(texts), stored


def read_input(entries: object, items: Items) -> list[tuple[str, str]]:
    """A ``response.create``'s ``input`` -> the (role, text) messages of the reply's own context:
    messages given there, and items of the conversation named by ``item_reference``."""
    if not isinstance(entries, list):
        raise ProtocolError(
            "invalid_value", "response.input must be a list of items", "response.input"
        )
    context = []
    for i, entry in enumerate(entries):
        name = f"response.input[{i}]"
        if not isinstance(entry, dict):
            raise ProtocolError("invalid_value", f"{name} must be an object", name)
        if entry.get("type") != "item_reference":
            role, text, _ = read_message(entry, name)
            context.append((role, text))
            continue
        item = items.get(entry.get("id"), f"{name}.id")
        texts = [
            part.get(CONTENT[item["role"]].get(part.get("type"), ""))
            for part in item.get("content", [])
            if item.get("type") == "message" and item.get("role") in CONTENT
        ]
        text = " ".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
        if not text:
            raise ProtocolError(
                "invalid_value",
                f"{name}.id {entry['id']!r} names an item without text (yet)",
                f"{name}.id",
            )
        context.append((item["role"], text))
    return context
