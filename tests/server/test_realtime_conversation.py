"""The Realtime conversation model on /v1/realtime, driven by the openai SDK: items with the
client's ids (create, retrieve, delete, truncate), replies to the conversation alone, the
``response.create`` fields, and OpenAI's defaults.

The server runs the fabricated omni model (random words, deterministic): what the chat memory
holds is checked by answering offline with a ``Conversation`` given the same messages, which
must give the server's reply token for token.
"""

from __future__ import annotations

import asyncio
import base64

from mooer.llm.conversation import Conversation, Message
from tests.server.wire import at_24k, send_realtime

TEXT_CHAT = {
    "type": "realtime",
    "output_modalities": ["text"],
    "audio": {"input": {"turn_detection": None}},
}


def _message(role: str, text: str, item_id: str | None = None) -> dict:
    kind = {"user": "input_text", "system": "input_text", "assistant": "output_text"}[role]
    item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    if item_id is not None:
        item["id"] = item_id
    return item


async def _until(conn, kind: str) -> list:
    """Events up to and including the first of type ``kind``."""
    events = []
    async for event in conn:
        events.append(event)
        if event.type == kind:
            return events
    raise AssertionError(f"the connection ended before {kind}")


def _connect(server):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
    return client.realtime.connect(model="mooer")


def _offline(model, session_defaults, messages, **respond) -> str:
    """The reply of a fresh chat memory holding ``messages`` [(role, text)]."""
    conversation = Conversation(model)
    for role, text in messages:
        conversation.add(Message(role, text))
    reply = conversation.respond(session_defaults.chat_options, **respond)
    return "".join(delta for _, delta in reply)


def _text(done) -> str:
    part = done.response.output[0].content[0]
    return part.text if part.type == "output_text" else part.transcript


def test_items_keep_their_ids_and_the_memory_follows_create_and_delete(
    server, model, session_defaults
):
    async def run():
        async with _connect(server) as conn:
            await conn.session.update(session=TEXT_CHAT)  # type: ignore[arg-type]
            await conn.conversation.item.create(item=_message("user", "what is two plus two", "u1"))
            await conn.conversation.item.create(item=_message("assistant", "four", "a1"))
            await conn.conversation.item.create(  # first, before u1
                item=_message("system", "Answer in numbers.", "s1"), previous_item_id="root"
            )
            await conn.conversation.item.create(
                item=_message("user", "and three", "u2"), previous_item_id="a1"
            )
            await conn.conversation.item.create(item=_message("user", "scratch", "u3"))
            await conn.conversation.item.delete(item_id="u3")
            await conn.conversation.item.retrieve(item_id="a1", event_id="mine")
            await conn.conversation.item.retrieve(item_id="u3", event_id="gone")
            await conn.conversation.item.create(
                item=_message("user", "again", "u1"), event_id="taken"
            )
            await conn.conversation.item.create(
                item=_message("user", "x"), previous_item_id="nowhere", event_id="lost"
            )
            await conn.response.create()
            return await _until(conn, "response.done")

    events = asyncio.run(run())
    added = [e for e in events if e.type == "conversation.item.added"]
    assert [(e.item.id, e.previous_item_id) for e in added][:5] == [
        ("u1", None),
        ("a1", "u1"),
        ("s1", None),
        ("u2", "a1"),
        ("u3", "u2"),
    ]
    assert [e.item_id for e in events if e.type == "conversation.item.deleted"] == ["u3"]
    (retrieved,) = [e for e in events if e.type == "conversation.item.retrieved"]
    assert retrieved.item.id == "a1" and retrieved.item.content[0].text == "four"
    errors = [e.error for e in events if e.type == "error"]
    assert [(e.code, e.param, e.event_id) for e in errors] == [
        ("item_not_found", "item_id", "gone"),
        ("item_create_duplicate_item_id", "item.id", "taken"),
        ("item_not_found", "previous_item_id", "lost"),
    ]
    # No user turn was spoken: the reply answers the conversation as the memory holds it.
    expected = _offline(
        model,
        session_defaults,
        [
            ("system", "Answer in numbers."),
            ("user", "what is two plus two"),
            ("assistant", "four"),
            ("user", "and three"),
        ],
    )
    done = events[-1]
    assert done.response.status == "completed" and _text(done) == expected
    usage = done.response.usage  # the prompt came from the cache, the opening was read anew
    assert usage.input_tokens > usage.input_token_details.cached_tokens > 0
    assert (
        usage.output_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    )


def test_a_truncated_reply_is_remembered_as_heard(server, model, session_defaults):
    async def run():
        async with _connect(server) as conn:
            spoken = {**TEXT_CHAT, "output_modalities": ["audio"]}
            await conn.session.update(session=spoken)  # type: ignore[arg-type]
            await conn.response.create()  # the assistant speaks first
            first = await _until(conn, "response.done")
            item_id = first[-1].response.output[0].id
            pcm = b"".join(
                base64.b64decode(e.delta) for e in first if e.type == "response.output_audio.delta"
            )
            heard_ms = len(pcm) // 2 * 1000 // 24000 // 2  # half of it was played
            await conn.conversation.item.truncate(
                item_id=item_id, content_index=0, audio_end_ms=10**6, event_id="far"
            )
            await conn.conversation.item.truncate(
                item_id=item_id, content_index=0, audio_end_ms=-1, event_id="negative"
            )
            await conn.conversation.item.truncate(
                item_id=item_id, content_index=0, audio_end_ms=heard_ms
            )
            await conn.conversation.item.retrieve(item_id=item_id)
            later = await _until(conn, "conversation.item.retrieved")
            await conn.conversation.item.create(item=_message("user", "go on"))
            await conn.response.create(response={"output_modalities": ["text"]})
            second = await _until(conn, "response.done")
            return first, pcm, heard_ms, later, second

    first, pcm, heard_ms, later, second = asyncio.run(run())
    said = _text(first[-1])
    assert said == _offline(model, session_defaults, [])  # from the system turn alone
    assert pcm and first[-1].response.output_modalities == ["audio"]
    errors = {e.error.event_id: e.error for e in later if e.type == "error"}
    assert set(errors) == {"far", "negative"}
    assert all(error.param == "audio_end_ms" for error in errors.values())
    assert "1000000" in errors["far"].message
    assert errors["negative"].message == "audio_end_ms=-1: expected an integer >= 0"
    truncated = next(e for e in later if e.type == "conversation.item.truncated")
    assert truncated.audio_end_ms == heard_ms
    retrieved = later[-1].item
    heard = retrieved.content[0].transcript
    assert said.startswith(heard) and len(heard) < len(said.strip())
    assert len(base64.b64decode(retrieved.content[0].audio)) == heard_ms * 24000 // 1000 * 2
    # The memory holds what was heard, not what was said.
    expected = _offline(model, session_defaults, [("assistant", heard), ("user", "go on")])
    assert _text(second[-1]) == expected
    assert second[-1].response.output_modalities == ["text"]
    assert not any(e.type == "response.output_audio.delta" for e in second)


def test_response_fields_metadata_instructions_and_out_of_band(server, model, session_defaults):
    async def run():
        async with _connect(server) as conn:
            await conn.session.update(session=TEXT_CHAT)  # type: ignore[arg-type]
            await conn.conversation.item.create(item=_message("user", "hello"))
            await conn.response.create(
                response={
                    "conversation": "none",
                    "instructions": "Say goodbye.",
                    "metadata": {"client_event_id": "c1"},
                }
            )
            aside = await _until(conn, "response.done")
            await conn.response.create(response={"metadata": {"k": "v"}})
            await conn.response.create(event_id="twice")  # one is in progress
            reply = await _until(conn, "response.done")
            await conn.response.cancel(event_id="none left")
            cancel = await _until(conn, "error")
            return aside, reply, cancel

    aside, reply, cancel = asyncio.run(run())
    created = next(e for e in aside if e.type == "response.created")
    assert created.response.metadata == aside[-1].response.metadata == {"client_event_id": "c1"}
    assert aside[-1].response.conversation_id is None
    after = aside[aside.index(created) :]
    assert not any(e.type.startswith("conversation.item.") for e in after)
    with_instructions = _offline(
        model, session_defaults, [("user", "hello")], instructions="Say goodbye."
    )
    assert _text(aside[-1]) == with_instructions
    # The aside was not remembered: the next reply answers "hello" as if it never happened.
    assert _text(reply[-1]) == _offline(model, session_defaults, [("user", "hello")])
    assert _text(reply[-1]) != with_instructions
    assert reply[-1].response.metadata == {"k": "v"} and reply[-1].response.conversation_id
    busy = next(e.error for e in reply if e.type == "error")
    assert busy.code == "conversation_already_has_active_response" and busy.event_id == "twice"
    assert cancel[-1].error.code == "response_cancel_not_active"
    assert cancel[-1].error.event_id == "none left"


def test_a_response_with_input_answers_those_items_alone(server, model, session_defaults):
    async def run():
        async with _connect(server) as conn:
            await conn.session.update(session=TEXT_CHAT)  # type: ignore[arg-type]
            await conn.conversation.item.create(item=_message("user", "what is two plus two", "u1"))
            await conn.conversation.item.create(item=_message("assistant", "four", "a1"))
            await conn.response.create(  # a context of its own: a reference and a new message
                response={
                    "conversation": "none",
                    "input": [{"type": "item_reference", "id": "u1"}, _message("user", "hello")],
                }
            )
            aside = await _until(conn, "response.done")
            await conn.response.create(response={"input": [_message("user", "good morning")]})
            kept = await _until(conn, "response.done")
            await conn.response.create(response={})  # the conversation, with the kept reply
            after = await _until(conn, "response.done")
            await conn.response.create(
                event_id="bad", response={"input": [{"type": "item_reference", "id": "nope"}]}
            )
            unknown = await _until(conn, "error")
            await conn.response.create(
                event_id="tool", response={"input": [{"type": "function_call_output"}]}
            )
            tool = await _until(conn, "error")
            return aside, kept, after, unknown[-1].error, tool[-1].error

    aside, kept, after, unknown, tool = asyncio.run(run())
    own = [("user", "what is two plus two"), ("user", "hello")]
    assert _text(aside[-1]) == _offline(model, session_defaults, own)
    assert aside[-1].response.conversation_id is None
    assert _text(kept[-1]) == _offline(model, session_defaults, [("user", "good morning")])
    assert kept[-1].response.conversation_id  # conversation "auto": the reply is remembered
    remembered = [("user", "what is two plus two"), ("assistant", "four")]
    remembered += [("assistant", _text(kept[-1]))]  # "good morning" itself was not
    assert _text(after[-1]) == _offline(model, session_defaults, remembered)
    assert (unknown.code, unknown.param, unknown.event_id) == (
        "item_not_found",
        "response.input[0].id",
        "bad",
    )
    assert (tool.code, tool.param, tool.event_id) == (
        "unsupported_value",
        "response.input[0].type",
        "tool",
    )


def test_defaults_are_openais_and_transcription_null_sends_none(server, speech):
    async def run():
        async with _connect(server) as conn:
            created = await _until(conn, "session.created")
            quiet = {**TEXT_CHAT, "audio": {"input": {"transcription": None}}}
            await conn.session.update(session=quiet)  # type: ignore[arg-type]
            await send_realtime(conn, at_24k(speech[0]))  # server VAD: the turn is answered
            events = await _until(conn, "response.done")
            return created, events

    created, events = asyncio.run(run())
    session = created[-1].session
    assert session.output_modalities == ["audio"]
    assert session.audio.input.transcription is not None  # mooer transcribes by default
    kinds = [e.type for e in events]
    assert "input_audio_buffer.committed" in kinds and "response.created" in kinds
    assert not [k for k in kinds if k.startswith("conversation.item.input_audio_transcription")]
    done = next(e for e in events if e.type == "conversation.item.done" and e.item.role == "user")
    assert done.item.content[0].transcript is None
