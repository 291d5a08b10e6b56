"""The emulator's HTTP face: an ASGI app the real ``anthropic`` SDK talks to.

Routes: ``POST /v1/messages`` (JSON, or SSE with ``stream: true``),
``POST /v1/messages/count_tokens``, ``GET /v1/models[/{id}]``, and the control endpoints
under ``/_emulator/`` (stats, clock, config, reset), which are not part of Anthropic's API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from convo import models, request_rules
from convo.emulator.config import EmulatorConfig
from convo.emulator.core import Emulator, Plan
from convo.emulator.errors import APIError, invalid

__all__ = ["DroppedStream", "create_app"]


class DroppedStream(Exception):
    """Raised inside a streaming body to close the connection mid-stream (fault
    ``stream_drop``); the server then closes it without finishing the chunked body."""


class _DroppedResponse(Response):
    """Starts a response, then ends the exchange without a body: the client sees a dropped
    connection (the server closes it because the response was never completed)."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")],
            }
        )


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(emulator: Emulator | None = None) -> Starlette:
    """Return the ASGI app serving *emulator* (a new default one if not given)."""
    emu = emulator or Emulator()

    def error_response(error: APIError, request_id: str) -> JSONResponse:
        emu.record_status(error.status)
        headers = {
            **error.headers,
            "request-id": request_id,
            "x-should-retry": error.headers.get("x-should-retry", ""),
        }
        if not headers["x-should-retry"]:
            del headers["x-should-retry"]
        return JSONResponse(error.body(request_id), status_code=error.status, headers=headers)

    async def read_json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object")
        return body

    async def checked_json(request: Request, endpoint: str) -> dict[str, Any]:
        """The body of an API request, refused as the API refuses it before running anything
        (``convo.request_rules``): 413 over 32 MB, then 401, then the header and body rules."""
        size = len(await request.body())
        too_large = request_rules.first_violation({}, encoded_size=size)
        if too_large is not None:
            raise APIError(too_large.type, too_large.message)
        emu.workspace(request.headers)
        body = await read_json(request)
        found = request_rules.first_violation(
            body,
            models=models.with_overrides(emu.config.models),
            headers=request.headers,
            encoded_size=size,
            endpoint=endpoint,
        )
        if found is not None:
            raise APIError(found.type, found.message)
        return body

    def require_version(request: Request) -> None:
        emu.workspace(request.headers)
        found = request_rules.first_violation({}, headers=request.headers)
        if found is not None:
            raise APIError(found.type, found.message)

    def api(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            request_id = emu.new_request_id()
            try:
                return await handler(request, request_id)
            except APIError as error:
                return error_response(error, request_id)

        return endpoint

    async def sleep(seconds: float) -> None:
        scaled = seconds * emu.config.time_scale
        if scaled > 0:
            await asyncio.sleep(scaled)

    async def messages(request: Request, request_id: str) -> Response:
        body = await checked_json(request, "messages")
        plan = emu.messages(request.headers, body)
        if plan.fault is not None and plan.fault.kind == "drop":
            await sleep(plan.time_to_first_byte)
            emu.record_status(0)
            return _DroppedResponse()
        headers = {**plan.headers, "request-id": request_id}
        if body.get("stream"):
            return _stream(plan, headers)
        try:
            await sleep(plan.time_to_first_byte)
        except BaseException:
            plan.abandon()
            raise
        plan.begin()
        await sleep(plan.decode_time)
        emu.record_status(200)
        return JSONResponse(plan.message, headers=headers)

    def _stream(plan: Plan, headers: dict[str, str]) -> Response:
        events = plan.events or []
        cut = plan.cut
        fault = plan.fault
        per_event = plan.decode_time / max(1, len(events))

        async def produce() -> AsyncIterator[bytes]:
            try:
                await sleep(plan.time_to_first_byte)
            except BaseException:
                plan.abandon()
                raise
            if cut is not None and not cut.started:
                plan.abandon()  # no message_start: the response never began, nothing billed
            else:
                plan.begin()
            if emu.config.time_scale == 0 and cut is None:
                # Nothing to pace: one write instead of one per event (same bytes on the wire).
                yield b"".join(_sse(name, data) for name, data in events)
                return
            for sent, (name, data) in enumerate(events):
                if cut is not None and fault is not None and sent == cut.at:
                    if fault.kind.startswith("stream_drop"):
                        raise DroppedStream(f"fault {fault.kind} after {sent} events")
                    error = {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    }
                    yield _sse("error", error)
                    return
                yield _sse(name, data)
                await sleep(per_event)
            # A cut at or past the end (after_events >= the events) never happens: the
            # stream completes, and is billed in full (stream.cut_for agrees).

        emu.record_status(200)
        return StreamingResponse(
            produce(),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    async def count_tokens(request: Request, request_id: str) -> Response:
        body = await checked_json(request, "count_tokens")
        result, headers = emu.count_tokens(request.headers, body)
        emu.record_status(200)
        return JSONResponse(result, headers={**headers, "request-id": request_id})

    def model_json(info: models.ModelInfo) -> dict[str, Any]:
        return {
            "type": "model",
            "id": info.id,
            "display_name": info.display_name,
            "created_at": f"{info.released.isoformat()}T00:00:00Z",
            "max_input_tokens": info.context_window,
            "max_tokens": info.max_output_tokens,
            "lifecycle": "active",
        }

    async def list_models(request: Request, request_id: str) -> Response:
        require_version(request)
        table = sorted(
            models.with_overrides(emu.config.models).values(),
            key=lambda m: m.released,
            reverse=True,
        )
        ids = [m.id for m in table]
        start, end = 0, len(table)
        if after := request.query_params.get("after_id"):
            start = ids.index(after) + 1 if after in ids else len(ids)
        if before := request.query_params.get("before_id"):
            end = ids.index(before) if before in ids else 0
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            raise invalid("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise invalid("limit: Input should be between 1 and 1000")
        page = table[start:end][:limit]
        data = [model_json(m) for m in page]
        return JSONResponse(
            {
                "data": data,
                "has_more": start + len(page) < end,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
            headers={"request-id": request_id},
        )

    async def get_model(request: Request, request_id: str) -> Response:
        require_version(request)
        model_id = request.path_params["model_id"]
        try:
            info = models.lookup(model_id, models.with_overrides(emu.config.models))
        except models.UnknownModel:
            raise APIError("not_found_error", f"model: {model_id}") from None
        return JSONResponse(model_json(info), headers={"request-id": request_id})

    async def control_stats(request: Request) -> Response:
        return JSONResponse(emu.stats())

    async def control_advance(request: Request, request_id: str) -> Response:
        body = await read_json(request)
        seconds = body.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise invalid('seconds: expected a number >= 0, as in {"seconds": 360}')
        emu.advance(float(seconds))
        return JSONResponse({"clock": emu.clock.now()})

    async def control_config(request: Request, request_id: str) -> Response:
        if request.method == "PUT":
            body = await read_json(request)
            try:
                emu.configure(EmulatorConfig.from_dict(body))
            except ValueError as exc:
                raise invalid(str(exc)) from None
        return JSONResponse(emu.config.to_dict())

    async def control_reset(request: Request, request_id: str) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw.strip() else {}
        emu.reset(config=bool(body.get("config", False)) if isinstance(body, dict) else False)
        return JSONResponse({"reset": True})

    routes = [
        Route("/v1/messages", api(messages), methods=["POST"]),
        Route("/v1/messages/count_tokens", api(count_tokens), methods=["POST"]),
        Route("/v1/models", api(list_models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", api(get_model), methods=["GET"]),
        Route("/_emulator/stats", control_stats, methods=["GET"]),
        Route("/_emulator/clock/advance", api(control_advance), methods=["POST"]),
        Route("/_emulator/config", api(control_config), methods=["GET", "PUT"]),
        Route("/_emulator/reset", api(control_reset), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.emulator = emu
    return app
