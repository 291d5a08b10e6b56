"""The one place convo calls the ``anthropic`` SDK, and the one place its errors are read.

Every attempt, plain or streaming, goes through :func:`send` / :func:`send_async` or
:func:`open_stream` / :func:`open_stream_async`. None of them raises for a failed attempt:
each returns an :class:`Outcome` holding either the answer or the exception together with
the *facts* of the attempt (status, error type, request id, the server's retry hint, its
headers, and the usage it reported before failing). The session's retry loop and ledger
read those facts; nothing else in convo inspects an SDK exception.

:data:`CATEGORY` names every exception class the SDK exports; ``tests/test_sdk.py`` fails
when the SDK grows one that is not in it, the way httpx tests its own mapping.

A stream is one attempt up to its first content event: until then nothing has reached the
caller, so a failure (an HTTP error, an ``error`` event, a dropped connection) is retryable
like any other. The usage a ``message_start`` reported before such a failure is billed by
the API and so is kept in the facts.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import math
import time
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import anthropic
import attrs
import httpx2
import pydantic
from anthropic._base_client import BaseClient
from anthropic._constants import DEFAULT_TIMEOUT, MODEL_NONSTREAMING_TOKENS, RAW_RESPONSE_HEADER
from anthropic._data import DEPRECATED_MODELS, MODELS_TO_WARN_WITH_THINKING_ENABLED
from anthropic._models import add_response_ids
from anthropic._streaming import AsyncStream, Stream
from anthropic.lib._stainless_helpers import (
    HELPER_METHOD_STREAM,
    STAINLESS_HELPER_METHOD_HEADER,
    STAINLESS_STREAM_HELPER_HEADER,
)
from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager
from anthropic.types import Message, RawMessageStreamEvent
from opentelemetry import trace

from convo import tokens, wire
from convo.usage import Usage, UsageAccumulator

__all__ = [
    "CATEGORY",
    "AttemptFacts",
    "OpenStream",
    "Outcome",
    "category_of",
    "delta_text",
    "facts_of",
    "open_stream",
    "open_stream_async",
    "parse_retry_after",
    "send",
    "send_async",
]

# The documented error type of each status, so an `error` event inside a 200 stream (which
# the SDK raises as an APIStatusError with the stream's status, 200) is judged by the status
# the same error would have had as a response.
STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

#: How each exception class the SDK exports is read. ``status``: an HTTP error response (or
#: an ``error`` event in a stream); ``connection`` / ``timeout``: no response; ``retryable``:
#: a user's opt-in to a retry; ``client``: a local failure of the SDK itself (credentials, a
#: response it could not validate), never worth another attempt.
CATEGORY: Mapping[str, str] = {
    "AnthropicError": "client",
    "APIError": "status",
    "APIStatusError": "status",
    "APIConnectionError": "connection",
    "APITimeoutError": "timeout",
    "APIResponseValidationError": "client",
    "APIWebhookValidationError": "client",
    "CredentialsError": "client",
    "IdentityTokenFileError": "client",
    "WorkloadIdentityError": "client",
    "RetryableError": "retryable",
    # Every HTTP error class: its status and body say the rest.
    **dict.fromkeys(
        (
            "AuthenticationError",
            "BadRequestError",
            "CMEKContextUnavailableError",
            "CMEKKeyDisabledError",
            "CMEKKeyNetworkBlockedError",
            "CMEKKeyUnreachableError",
            "ClaudeCodeKeyCreatorNotMemberError",
            "ClaudeCodeVersionTooOldError",
            "ClientClosedRequestError",
            "ConflictError",
            "ContentTooLargeError",
            "ContractSpendLimitReachedError",
            "DeadlineExceededError",
            "EnforcedSpendLimitReachedError",
            "GatewayTimeoutError",
            "HTTPNotImplementedError",
            "InternalServerError",
            "LinkedOrganizationBillingUnavailableError",
            "LinkedOrganizationSpendLimitReachedError",
            "NotFoundError",
            "OrganizationOnHoldError",
            "OrganizationTypeNotSupportedError",
            "OverloadedError",
            "ParentOrganizationRequiredError",
            "PaymentRequiredError",
            "PermissionDeniedError",
            "PreconditionFailedError",
            "RampLimitExceededError",
            "RateLimitError",
            "RequestBodyEncodingInvalidError",
            "RequestBodyEncodingUnsupportedError",
            "RequestBodyTooLargeAfterDecodingError",
            "RequestHeaderFieldsTooLargeError",
            "RequestTimeoutError",
            "RequestTooLargeError",
            "SandboxEgressRestrictedError",
            "ServiceUnavailableError",
            "UnprocessableEntityError",
            "WorkspaceHumanReviewDisabledError",
        ),
        "status",
    ),
}


def category_of(error: BaseException) -> str | None:
    """How *error* is read: a :data:`CATEGORY` value, ``"transport"`` for an httpx2 error
    raised while a stream's body was read, or ``None`` for anything else (a bug, a
    cancellation), which is not an attempt's outcome and is re-raised."""
    for klass in type(error).__mro__:
        if klass.__module__.startswith("anthropic") and klass.__name__ in CATEGORY:
            return CATEGORY[klass.__name__]
    if isinstance(error, httpx2.TransportError):
        return "transport"
    return None


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Read the server's hinted wait from response headers, in seconds.

    ``retry-after-ms`` comes first (it is the more precise); then ``retry-after`` as a
    number of seconds (a float is accepted, as the SDK does) or as an HTTP date, taken
    relative to ``now`` (pass the injected clock). A date already past gives 0.0. No upper
    cap is applied here: the policy's ``max_wait`` decides what to do with a long wait.

    Args:
        headers: Response headers (an ``httpx`` ``Headers`` or any mapping; names are
            matched without regard to case).
        now: The current wall-clock time as a Unix epoch (``time.time()``).

    Returns:
        Seconds to wait, or ``None`` when neither header holds a usable value.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = _non_negative_number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_number(value)
    if seconds is not None:
        return seconds
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed)) - now)


def _non_negative_number(text: str | None) -> float | None:
    try:
        number = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


@attrs.frozen
class AttemptFacts:
    """What one attempt came to, as the ledger and the retry policy need it.

    Attributes:
        status: HTTP status (200 on success; for an ``error`` event inside a stream, the
            status its error type stands for); ``None`` when no response came.
        error_type: The API's error type (``"overloaded_error"``), else the exception's
            class name; ``None`` on success.
        request_id: The server's ``request-id``, when there was a response.
        retry_after: The server's hinted wait in seconds, when it gave one.
        headers: The response headers (rate-limit readings), when there was a response.
        usage: What the response reported before the attempt ended (a stream's
            ``message_start`` and ``message_delta`` events), or ``None``.
        usage_estimated: ``usage.output`` is estimated from the text delivered, because the
            stream ended before any ``message_delta`` reported it.
        category: How the exception was read (:func:`category_of`); ``"ok"`` on success.
        spend_cap: The failure is the organisation's spend cap (never worth retrying).
    """

    status: int | None
    error_type: str | None = None
    request_id: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None
    usage: Usage | None = None
    usage_estimated: bool = False
    category: str = "ok"
    spend_cap: bool = False


def _body_field(error: BaseException, *path: str) -> str | None:
    value: object = getattr(error, "body", None)
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


SPEND_CAP_CODE = "enforced_spend_limit_reached"


def facts_of(
    error: BaseException,
    *,
    now: float | None = None,
    usage: Usage | None = None,
    usage_estimated: bool = False,
) -> AttemptFacts:
    """Translate a failed attempt's exception into its facts (the only place that does).

    Args:
        error: What the SDK (or its HTTP layer) raised.
        now: Epoch seconds for reading an HTTP-date ``retry-after`` (the injected clock).
        usage: What the response reported before failing, if anything.
        usage_estimated: ``usage.output`` was estimated from delivered text.
    """
    category = category_of(error) or "other"
    if isinstance(error, anthropic.APIStatusError):
        headers = error.response.headers
        error_type = _body_field(error, "error", "type") or type(error).__name__
        status = error.status_code
        if status < 400:  # an `error` event inside a 200 stream
            status = STATUS_OF_TYPE.get(error_type, 500)
        spend_cap = (
            status == 429
            and "retry-after" not in headers
            and "retry-after-ms" not in headers
            and _body_field(error, "error", "details", "error_code") == SPEND_CAP_CODE
        )
        return AttemptFacts(
            status=status,
            error_type=error_type,
            request_id=error.request_id,
            retry_after=parse_retry_after(headers, now=time.time() if now is None else now),
            headers=_plain(headers),
            usage=usage,
            usage_estimated=usage_estimated,
            category=category,
            spend_cap=spend_cap,
        )
    return AttemptFacts(
        status=None,
        error_type=type(error).__name__,
        usage=usage,
        usage_estimated=usage_estimated,
        category=category,
    )


@attrs.define
class Outcome:
    """One attempt's result: ``value`` on success, else ``error``; ``facts`` either way."""

    facts: AttemptFacts
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the attempt succeeded."""
        return self.error is None


def _plain(headers: Mapping[str, str]) -> dict[str, str]:
    """*headers* (the response's ``httpx.Headers``) as a dict, repeated names joined with
    ``", "`` as a lookup joins them. One pass over ``items()``: ``dict(headers)`` looks
    every name up again, and each lookup scans every header (about 30 on a reply)."""
    return dict(headers.items())


def _success(value: Any, headers: dict[str, str]) -> Outcome:
    """A successful attempt; *headers* as :func:`_plain` gives them (every lookup in an
    ``httpx.Headers`` scans all of them, so they are read once, into a dict)."""
    return Outcome(
        AttemptFacts(status=200, request_id=headers.get("request-id"), headers=headers),
        value=value,
    )


def _replied(raw: Any, body: bytes | None) -> tuple[Message | None, dict[str, str]]:
    """The ``Message`` of a pre-encoded request's reply *raw* (``None``: let the SDK parse
    it), and the reply's headers as a dict, read once for every lookup that follows."""
    headers = _plain(raw.headers)
    if body is None or not _json_body(raw, headers):
        return None, headers
    return _message(body, headers), headers


def _failure(error: BaseException, now: float, **seen: Any) -> Outcome:
    if category_of(error) is None:
        raise error  # not an attempt's outcome (a bug, a cancellation): let it through
    return Outcome(facts_of(error, now=now, **seen), error=error)


Arguments = wire.Request | Mapping[str, Any]
_FIRST_PARTY = (anthropic.Anthropic, anthropic.AsyncAnthropic)


def _pre_encoded(client: Any, arguments: Arguments) -> wire.Request | None:
    """The request to send as convo's own bytes, or ``None`` to let the SDK build the body.

    The SDK builds it for plain keyword arguments; for clients other than ``Anthropic`` /
    ``AsyncAnthropic`` (Bedrock and Vertex route a request by the model in its body); and
    when something on the client reads the request's fields from the body the SDK holds:
    middleware (``client.with_options(middleware=...)``), or OpenTelemetry spans that
    record (a tracer provider is set).
    """
    if not isinstance(arguments, wire.Request) or not isinstance(client, _FIRST_PARTY):
        return None
    if getattr(client, "_middleware", None) or _spans_record(client):
        return None
    return arguments


def _spans_record(client: Any) -> bool:
    """Whether the SDK would record a span for this client's calls."""
    try:
        if client._tracer is None:
            return False
        provider = client._open_telemetry.get("tracer_provider")
    except AttributeError:
        return False
    if provider is None:
        provider = trace.get_tracer_provider()
        return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return True


def _warn_like_sdk(body: Mapping[str, Any]) -> None:
    """The warnings ``messages.create`` gives before it sends (deprecated model, thinking)."""
    model = body.get("model")
    if model in DEPRECATED_MODELS:
        warnings.warn(
            f"The model '{model}' is deprecated and will reach end-of-life on "
            f"{DEPRECATED_MODELS[model]}.\nPlease migrate to a newer model. Visit "
            "https://docs.anthropic.com/en/docs/resources/model-deprecations for more "
            "information.",
            DeprecationWarning,
            stacklevel=4,
        )
    thinking = body.get("thinking")
    if model in MODELS_TO_WARN_WITH_THINKING_ENABLED and thinking and thinking["type"] == "enabled":
        warnings.warn(
            f"Using Claude with {model} and 'thinking.type=enabled' is deprecated. Use "
            "'thinking.type=adaptive' instead which results in better model performance in our "
            "testing: https://platform.claude.com/docs/en/build-with-claude/adaptive-thinking",
            UserWarning,
            stacklevel=4,
        )


_MESSAGES_PATH = "/v1/messages"
#: Per live base URL object: (a weak reference to it, the path to post to).
_PATHS: dict[int, tuple[weakref.ref[Any], str]] = {}


def _messages_path(client: Any) -> str:
    """``/v1/messages`` as the URL the client would send it to, joined to its base URL once.

    The SDK joins a relative path to the client's base URL on every request, which parses
    a URL twice (about 30 µs); given the joined URL it parses it once. The join is the
    SDK's own (``_prepare_url``), done once per base URL object (a new ``base_url`` is a
    new object); the relative path is kept where the client changes how URLs are prepared,
    or where the joined URL would not parse back to the same URL.

    Every session's client is its own copy (``with_options``), with its own base URL object,
    so a process serving many sessions holds as many: an entry lasts as long as its object
    does (a bounded cache thrashed once there were more sessions than entries, and then
    joined on every request).
    """
    base = client.base_url
    key = id(base)
    cached = _PATHS.get(key)
    if cached is not None and cached[0]() is base:
        return cached[1]
    path = _MESSAGES_PATH
    if type(client)._prepare_url is BaseClient._prepare_url:
        joined = client._prepare_url(_MESSAGES_PATH)
        if client._prepare_url(str(joined)) == joined:
            path = str(joined)

    def forget(dead: weakref.ref[Any]) -> None:
        # Called as the URL object is freed, before its id can be reused.
        entry = _PATHS.get(key)
        if entry is not None and entry[0] is dead:
            _PATHS.pop(key, None)

    # A base URL type without weak references is joined again on every request.
    with contextlib.suppress(TypeError):
        _PATHS[key] = (weakref.ref(base, forget), path)
    return path


#: The idempotency key given to a client that sends none (see :func:`_post_arguments`).
_UNSENT_IDEMPOTENCY_KEY = "convo-unsent"


def _post_arguments(client: Any, request: wire.Request, *, stream: bool) -> dict[str, Any]:
    """``client.post`` arguments carrying *request* as pre-encoded bytes, with the options
    and headers ``messages.create`` / ``messages.stream`` would have given."""
    content, options, headers = wire.body_bytes(request, stream=stream)
    if wire.checking():
        wire.check(content, request, stream=stream)
    _warn_like_sdk(request.body)
    body = request.body
    request_options: dict[str, Any] = {}
    timeout = options.get("timeout", anthropic.NOT_GIVEN)
    if stream:
        headers = {
            STAINLESS_HELPER_METHOD_HEADER: HELPER_METHOD_STREAM,
            STAINLESS_STREAM_HELPER_HEADER: "messages",
            **headers,
        }
    else:
        if isinstance(timeout, anthropic.NotGiven) and client.timeout == DEFAULT_TIMEOUT:
            timeout = client._calculate_nonstreaming_timeout(
                body["max_tokens"], MODEL_NONSTREAMING_TOKENS.get(body["model"], None)
            )
        headers = {**headers, RAW_RESPONSE_HEADER: "raw"}
    request_options["headers"] = headers
    if getattr(client, "_idempotency_header", None) is None:
        # The SDK makes a key (a uuid4) for every request, and sends it only under a header
        # its client names; the Messages API client names none, so the key would go
        # nowhere. Saying there is one already skips making it.
        request_options["idempotency_key"] = _UNSENT_IDEMPOTENCY_KEY
    if not isinstance(timeout, anthropic.NotGiven):
        request_options["timeout"] = timeout
    if options.get("extra_query") is not None:
        request_options["params"] = options["extra_query"]
    return {"cast_to": Message, "content": content, "options": request_options, "stream": stream}


def _json_body(raw: Any, headers: Mapping[str, str]) -> bool:
    """Whether the SDK would build *raw*'s ``Message`` from its JSON body without checking
    it (the default: no ``_strict_response_validation``, no ``post_parser``, a JSON body).
    *headers*: the reply's, as :func:`_plain` gives them."""
    if raw._client._strict_response_validation:
        return False
    if not isinstance(raw._options.post_parser, anthropic.NotGiven):
        return False
    content_type = headers.get("content-type", "*").split(";")[0]
    return bool(content_type.lower().endswith("json"))


def _message(body: bytes, headers: Mapping[str, str]) -> Message | None:
    """The ``Message`` in *body*, built by pydantic's validator (in Rust) from the JSON
    bytes; ``None`` when the body does not validate strictly (a block type or a
    ``stop_reason`` this SDK does not know, a number sent as a string), for the SDK's own
    lenient parse to build it as it is.

    The SDK builds a response with ``construct_type``, a Python walk of the type tree that
    checks nothing and costs about 200 µs for a short reply. For a body that validates,
    validation builds the same objects (the same classes and values; the SDK's models keep
    unknown fields either way) several times faster. One difference: ``model_fields_set``
    of the message or its ``usage`` also names the unknown fields a reply carried (the
    SDK's construct names them on some models and not on others); ``model_dump`` is the
    same. Speed over sameness of code path here: ``tests/test_sdk.py`` compares the two on
    every kind of reply.
    """
    try:
        message = Message.model_validate_json(body, strict=True)
    except pydantic.ValidationError:
        return None
    add_response_ids(
        message,
        request_id=headers.get("request-id"),
        workspace_id=headers.get("anthropic-workspace-id"),
    )
    return message


def send(client: anthropic.Anthropic, arguments: Arguments, *, now: float) -> Outcome:
    """One plain ``messages.create`` attempt; the parsed ``Message`` on success.

    *arguments* is a :class:`convo.wire.Request` (sent as convo's pre-encoded bytes through
    ``client.post``) or the keyword arguments of ``messages.create``.
    """
    request = _pre_encoded(client, arguments)
    try:
        if request is None:
            raw = client.messages.with_raw_response.create(**_as_kwargs(arguments))
        else:
            raw = client.post(
                _messages_path(client), **_post_arguments(client, request, stream=False)
            )
        message, headers = _replied(raw, None if request is None else raw.read())
        if message is None:
            message = raw.parse()
    except Exception as error:
        return _failure(error, now)
    return _success(message, headers)


async def send_async(
    client: anthropic.AsyncAnthropic, arguments: Arguments, *, now: float
) -> Outcome:
    """The awaitable twin of :func:`send`."""
    request = _pre_encoded(client, arguments)
    try:
        if request is None:
            raw = await client.messages.with_raw_response.create(**_as_kwargs(arguments))
        else:
            raw = await client.post(
                _messages_path(client), **_post_arguments(client, request, stream=False)
            )
        message, headers = _replied(raw, None if request is None else await raw.read())
        if message is None:
            message = await raw.parse()
    except Exception as error:
        return _failure(error, now)
    return _success(message, headers)


def _as_kwargs(arguments: Arguments) -> dict[str, Any]:
    """Keyword arguments for the SDK's own methods (fields it does not model in
    ``extra_body``, as on the pre-encoded path)."""
    plain = arguments.arguments() if isinstance(arguments, wire.Request) else arguments
    return wire.sdk_arguments(plain)


def _stream_manager(client: Any, arguments: Arguments) -> Any:
    """The SDK's ``MessageStreamManager`` (or its async twin) for *arguments*."""
    request = _pre_encoded(client, arguments)
    if request is None:
        return client.messages.stream(**_as_kwargs(arguments))
    post = _post_arguments(client, request, stream=True)
    if isinstance(client, anthropic.AsyncAnthropic):
        return AsyncMessageStreamManager(
            client.post(
                _messages_path(client), **post, stream_cls=AsyncStream[RawMessageStreamEvent]
            ),
            output_format=anthropic.NOT_GIVEN,
        )
    return MessageStreamManager(
        functools.partial(
            client.post, _messages_path(client), **post, stream_cls=Stream[RawMessageStreamEvent]
        ),
        output_format=anthropic.NOT_GIVEN,
    )


# Events after which content has begun: from here on, text may reach the caller.
_CONTENT = frozenset({"text", "input_json", "thinking", "citation", "message_stop"})


def delta_text(event: Any) -> str:
    """The text a raw ``content_block_delta`` event carries (text, JSON or thinking), else
    ``""``: what a cut stream's output is estimated from, on both sides of the wire."""
    if getattr(event, "type", None) != "content_block_delta":
        return ""
    delta = event.delta
    for name in ("text", "partial_json", "thinking"):
        value = getattr(delta, name, None)
        if isinstance(value, str):
            return value
    return ""


@attrs.define
class OpenStream:
    """A stream read up to its first content event, and what it reported so far.

    ``usage`` settles event by event (cumulative ``message_delta`` counts replace, never
    add); ``delivered`` collects the text of every content delta handed on, so a stream
    cut before any ``message_delta`` can bill an estimate of its output.
    """

    manager: Any
    stream: Any
    buffered: list[Any]
    iterator: Any
    usage: UsageAccumulator
    delivered: list[str] = attrs.field(factory=list)
    texts: list[str] = attrs.field(factory=list)
    saw_delta: bool = False

    def see(self, event: Any) -> None:
        """Account for one event read from the stream."""
        kind = getattr(event, "type", None)
        if kind in ("message_start", "message_delta"):
            self.usage.feed(event)
            self.saw_delta = self.saw_delta or kind == "message_delta"
        elif kind == "content_block_delta":
            self.delivered.append(delta_text(event))
            if getattr(event.delta, "type", None) == "text_delta":
                self.texts.append(event.delta.text)

    @property
    def delivered_text(self) -> str:
        """The reply's text delivered so far."""
        return "".join(self.texts)

    def usage_so_far(self) -> tuple[Usage | None, bool]:
        """The usage billed so far, and whether its output is an estimate."""
        if not self.usage.started:
            return None, False
        usage = self.usage.usage
        if self.saw_delta:
            return usage, False
        return attrs.evolve(usage, output=tokens.estimate("".join(self.delivered))), True

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers."""
        return self.stream.response.headers  # type: ignore[no-any-return]

    @property
    def request_id(self) -> str | None:
        """The response's ``request-id``."""
        value = self.headers.get("request-id")
        return value if isinstance(value, str) else None


def _dropped(stream: Any, error: Exception) -> anthropic.APIConnectionError:
    """The SDK wraps transport errors only while it sends; one while reading the body (a
    dropped stream) arrives raw. Before any text it is a connection error like any other."""
    return anthropic.APIConnectionError(
        message=f"stream dropped: {error}", request=stream.response.request
    )


def open_stream(
    client: anthropic.Anthropic, arguments: Arguments, *, now: float, requested_ttl: str
) -> Outcome:
    """Open a stream and read up to its first content event (one retryable attempt)."""
    manager = _stream_manager(client, arguments)
    try:
        stream = manager.__enter__()
    except Exception as error:
        return _failure(error, now)
    opened = OpenStream(
        manager,
        stream,
        [],
        iter(stream),
        UsageAccumulator(requested_ttl=requested_ttl),  # type: ignore[arg-type]
    )
    try:
        for event in opened.iterator:
            opened.buffered.append(event)
            opened.see(event)
            if event.type in _CONTENT:
                break
    except BaseException as error:
        manager.__exit__(None, None, None)
        return _stream_failure(opened, error, now)
    return _success(opened, _plain(opened.headers))


async def open_stream_async(
    client: anthropic.AsyncAnthropic,
    arguments: Arguments,
    *,
    now: float,
    requested_ttl: str,
) -> Outcome:
    """The awaitable twin of :func:`open_stream`."""
    manager = _stream_manager(client, arguments)
    try:
        stream = await manager.__aenter__()
    except Exception as error:
        return _failure(error, now)
    opened = OpenStream(
        manager,
        stream,
        [],
        stream.__aiter__(),
        UsageAccumulator(requested_ttl=requested_ttl),  # type: ignore[arg-type]
    )
    try:
        async for event in opened.iterator:
            opened.buffered.append(event)
            opened.see(event)
            if event.type in _CONTENT:
                break
    except BaseException as error:
        await manager.__aexit__(None, None, None)
        return _stream_failure(opened, error, now)
    return _success(opened, _plain(opened.headers))


def _stream_failure(opened: OpenStream, error: BaseException, now: float) -> Outcome:
    """A stream that failed before its first content: retryable, with its usage so far."""
    usage, estimated = opened.usage_so_far()
    if isinstance(error, httpx2.TransportError):
        error = _dropped(opened.stream, error)
    if category_of(error) is None:
        # Cancelled (or a bug) after the request was sent: the caller records what was
        # billed, then lets the exception through.
        error.convo_usage = (usage, estimated)  # type: ignore[attr-defined]
        raise error
    outcome = _failure(error, now, usage=usage, usage_estimated=estimated)
    if outcome.facts.request_id is None:
        outcome.facts = attrs.evolve(outcome.facts, request_id=opened.request_id)
    return outcome
