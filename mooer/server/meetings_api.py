"""The kept meetings over HTTP, behind the server's API key.

``GET /v1/meetings`` (``search``, ``limit``), ``GET /v1/meetings/{id}`` (the meeting with its
segments), ``GET /v1/meetings/{id}/export?format=srt|vtt|txt|json|md[&name=FILE]`` (a download),
``PATCH /v1/meetings/{id}/speakers`` (``{"old": NAME, "new": NAME}``: a rename),
``GET /v1/meetings/{id}/segments/{item_id}/audio`` (FLAC, where it was kept) and
``DELETE /v1/meetings/{id}``. A meeting still being recorded is served with what is stored
so far and marked in progress. Errors use OpenAI's error body: 404 ``meeting_not_found`` or
``not_found``, 400 for a bad parameter, 503 ``store_unavailable`` when the database fails (its
cause, never SQL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mooer.errors import ConfigError, MooerError
from mooer.server.connection import ProtocolError, parse_json_object
from mooer.server.http_api import error_response
from mooer.server.hub import Hub

MAX_SEARCH_CHARS = 200
MAX_LIMIT = 1000

MAX_BODY_BYTES = 4096  # a rename's JSON body
_STATUS = {"missing_api_key": 401, "invalid_api_key": 401, "meeting_not_found": 404,
           "not_found": 404, "store_unavailable": 503}  # fmt: skip


class MeetingsApi:
    """The meeting routes' handlers, bound to one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _route(self, name: str, handle: Callable[[Request], Awaitable[Response]]):
        async def route(request: Request) -> Response:
            try:
                error = self.hub.auth_error(request)
                if error is not None:
                    raise error
                response = await handle(request)
            except ProtocolError as error:
                self.hub.metrics.errors.inc(code=error.code)
                response = error_response(error, _STATUS.get(error.code, 400))
            self.hub.metrics.requests.inc(route=name, status=str(response.status_code))
            return response

        return route

    def routes(self) -> list[Route]:
        return [
            Route("/v1/meetings", self._route("meetings", self._list)),
            Route(
                "/v1/meetings/{meeting_id}",
                self._route("meeting", self._one),
                methods=["GET", "DELETE"],
            ),
            Route("/v1/meetings/{meeting_id}/export", self._route("meeting_export", self._export)),
            Route(
                "/v1/meetings/{meeting_id}/speakers",
                self._route("meeting_speakers", self._rename),
                methods=["PATCH"],
            ),
            Route(
                "/v1/meetings/{meeting_id}/segments/{item_id}/audio",
                self._route("meeting_audio", self._audio),
            ),
        ]

    async def _store(self, method: str, *args: Any) -> Any:
        """A store call off the event loop; its errors as ``ProtocolError``."""
        from mooer.meetings.store import NotFound, StoreError, UnknownMeeting

        try:
            store = self.hub.meeting_store()
            return await asyncio.to_thread(getattr(store, method), *args)
        except UnknownMeeting as exc:
            raise ProtocolError("meeting_not_found", str(exc), "meeting_id") from exc
        except NotFound as exc:
            raise ProtocolError("not_found", str(exc)) from exc
        except (StoreError, ConfigError) as exc:
            raise ProtocolError("store_unavailable", str(exc), kind="server_error") from exc

    async def _list(self, request: Request) -> Response:
        search = request.query_params.get("search") or None
        if search is not None and len(search) > MAX_SEARCH_CHARS:
            raise ProtocolError(
                "invalid_value", f"search is over {MAX_SEARCH_CHARS} characters", "search"
            )
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise ProtocolError(
                "invalid_value", f"limit {raw!r}: expected an integer in 1..{MAX_LIMIT}", "limit"
            )
        from mooer.meetings.export import info_dict

        found = await self._store("list", search, int(raw))
        return JSONResponse({"object": "list", "data": [info_dict(m) for m in found]})

    async def _one(self, request: Request) -> Response:
        meeting_id = request.path_params["meeting_id"]
        if request.method == "DELETE":
            await self._store("delete", meeting_id)
            return JSONResponse({"id": meeting_id, "object": "meeting", "deleted": True})
        from mooer.meetings.export import meeting_dict

        return JSONResponse(meeting_dict(await self._store("get", meeting_id)))

    async def _export(self, request: Request) -> Response:
        from mooer.meetings.export import FORMATS, export_format, export_name, render

        meeting_id = request.path_params["meeting_id"]
        fmt = _checked("format", export_format, request.query_params.get("format", "srt"))
        name = _checked("name", export_name, request.query_params.get("name"), meeting_id, fmt)
        meeting = await self._store("get", meeting_id)
        headers = {
            "Content-Disposition": f'attachment; filename="{_ascii(name)}"; '
            f"filename*=UTF-8''{quote(name)}",
            "X-Mooer-Meeting-Status": "in_progress" if meeting.info.in_progress else "ended",
        }
        body = render(meeting, fmt)
        return Response(body, media_type=f"{FORMATS[fmt]}; charset=utf-8", headers=headers)

    async def _rename(self, request: Request) -> Response:
        """``{"old": "speaker 1", "new": "Alice"}``: every segment of ``old`` becomes ``new``."""
        from mooer.meetings.store import check_speaker

        meeting_id = request.path_params["meeting_id"]
        body = b""
        async for chunk in request.stream():  # read no further than a rename can need
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ProtocolError("invalid_value", f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            fields = parse_json_object(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid_json", "the body is not UTF-8 text") from exc
        old = fields.get("old")
        if not isinstance(old, str) or not old:
            raise ProtocolError("invalid_value", "'old' must be the speaker's name now", "old")
        new = _checked("new", check_speaker, fields.get("new"))
        changed = await self._store("rename_speaker", meeting_id, old, new)
        return JSONResponse({"id": meeting_id, "object": "meeting.speaker", "old": old,
                             "new": new, "segments": changed})  # fmt: skip

    async def _audio(self, request: Request) -> Response:
        flac = await self._store(
            "audio", request.path_params["meeting_id"], request.path_params["item_id"]
        )
        return Response(flac, media_type="audio/flac")


def _ascii(name: str) -> str:
    """A quoted-string fallback of a file name for clients that ignore ``filename*``."""
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


def _checked(param: str, check: Callable[..., str], *args: Any) -> str:
    """``check(*args)``, its ``ConfigError`` a 400 naming ``param``."""
    try:
        return check(*args)
    except MooerError as exc:
        raise ProtocolError("invalid_value", str(exc), param) from exc
