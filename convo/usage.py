"""Token usage: the four input kinds and output, each counted once.

The Messages API reports input in three disjoint parts: ``input_tokens`` (after the last
breakpoint: neither read nor written), ``cache_read_input_tokens`` and
``cache_creation_input_tokens`` (split by TTL in ``cache_creation``). Their sum is the total
input. :class:`Usage` keeps the parts apart, splits writes into 5-minute and 1-hour, and
offers the inclusive conventions (OpenTelemetry GenAI, OpenAI-style) only as explicit
conversions, because mixing the two conventions is how cache tokens get counted twice.

Streams report usage cumulatively: ``message_start`` carries the input side and the TTL
split, and every ``message_delta`` carries running totals that *replace* what came before.
:class:`UsageAccumulator` applies that rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

__all__ = ["ServerToolUse", "Ttl", "Usage", "UsageAccumulator"]

#: A cache TTL as the API spells it in ``cache_control``.
Ttl = Literal["5m", "1h"]

_TTLS = ("5m", "1h")


def _check_count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    # bool is an int subclass; a True token count is always a caller's bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an int token count, got {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _check_ttl(ttl: str) -> None:
    if ttl not in _TTLS:
        raise ValueError(f"requested_ttl must be '5m' or '1h', got {ttl!r}")


@attrs.frozen
class ServerToolUse:
    """Counts of server-side tool calls billed per request, not per token.

    Attributes:
        web_search_requests: Web search calls the server made.
        web_fetch_requests: Web fetch calls the server made.

    .. versionadded:: 0.1
    """

    web_search_requests: int = attrs.field(default=0, validator=_check_count)
    web_fetch_requests: int = attrs.field(default=0, validator=_check_count)

    def __add__(self, other: ServerToolUse) -> ServerToolUse:
        if not isinstance(other, ServerToolUse):
            return NotImplemented
        return ServerToolUse(
            self.web_search_requests + other.web_search_requests,
            self.web_fetch_requests + other.web_fetch_requests,
        )


@attrs.frozen
class Usage:
    """Tokens of one response (or a total of many), every token in exactly one kind.

    Attributes:
        input: Input after the last breakpoint: neither read from nor written to cache.
        cache_read: Input read from the cache.
        cache_write_5m: Input written to the cache with the 5-minute TTL.
        cache_write_1h: Input written to the cache with the 1-hour TTL.
        output: Output tokens.
        server_tool_use: Server tool call counts, when the response had any.
        service_tier: ``standard``, ``priority`` or ``batch`` when reported; ``None`` for a
            total over responses of different tiers.
        inference_geo: Where inference ran, when reported; ``None`` for a mixed total.
        ttl_split_assumed: True when the response gave a write total without its TTL split,
            so the writes were attributed to the TTL the request asked for.

    .. versionadded:: 0.1
    """

    input: int = attrs.field(default=0, validator=_check_count)
    cache_read: int = attrs.field(default=0, validator=_check_count)
    cache_write_5m: int = attrs.field(default=0, validator=_check_count)
    cache_write_1h: int = attrs.field(default=0, validator=_check_count)
    output: int = attrs.field(default=0, validator=_check_count)
    server_tool_use: ServerToolUse | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    ttl_split_assumed: bool = False

    @property
    def cache_write(self) -> int:
        """All tokens written to the cache, both TTLs."""
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total_input(self) -> int:
        """All input tokens: ``input + cache_read + cache_write``."""
        return self.input + self.cache_read + self.cache_write

    @property
    def total(self) -> int:
        """All tokens, input of every kind plus output."""
        return self.total_input + self.output

    @classmethod
    def zero(cls) -> Usage:
        """Return the empty usage, the identity for ``+``."""
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, requested_ttl: Ttl = "5m") -> Usage:
        """Build from a raw API ``usage`` object (a ``dict`` as decoded from JSON).

        Missing or ``null`` counts read as 0. When ``cache_creation`` (the TTL split) is
        absent, or covers fewer tokens than ``cache_creation_input_tokens``, the uncovered
        writes go to *requested_ttl* and :attr:`ttl_split_assumed` is set.

        Args:
            d: The usage mapping.
            requested_ttl: The TTL the request asked for, used only when the split is missing.

        Raises:
            TypeError: when *d* is not a mapping or a count is not an int.
            ValueError: for a negative count, or a TTL other than ``"5m"``/``"1h"``.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"Usage.from_dict needs a mapping, got {type(d).__name__}")
        return cls._from_fields(d, requested_ttl)

    @classmethod
    def _from_fields(cls, d: Any, requested_ttl: Ttl) -> Usage:
        """Build from a usage mapping or an SDK usage object (its fields read directly)."""
        _check_ttl(requested_ttl)
        split = _field(d, "cache_creation")
        w5, w1, assumed = _split_writes(
            _count(d, "cache_creation_input_tokens"),
            None
            if split is None
            else (
                _count(split, "ephemeral_5m_input_tokens"),
                _count(split, "ephemeral_1h_input_tokens"),
            ),
            requested_ttl,
        )
        stu = _field(d, "server_tool_use")
        return cls(
            input=_count(d, "input_tokens"),
            cache_read=_count(d, "cache_read_input_tokens"),
            cache_write_5m=w5,
            cache_write_1h=w1,
            output=_count(d, "output_tokens"),
            server_tool_use=None
            if stu is None
            else ServerToolUse(
                _count(stu, "web_search_requests"), _count(stu, "web_fetch_requests")
            ),
            service_tier=_field(d, "service_tier"),
            inference_geo=_field(d, "inference_geo"),
            ttl_split_assumed=assumed,
        )

    @classmethod
    def from_message(cls, message: Any, *, requested_ttl: Ttl = "5m") -> Usage:
        """Build from an SDK ``anthropic.types.Message`` (or its ``usage`` alone).

        Args:
            message: A ``Message``, an SDK ``Usage``, or anything with a ``usage``
                attribute holding one; a raw ``dict`` is passed to :meth:`from_dict`.
            requested_ttl: See :meth:`from_dict`.

        Raises:
            TypeError: when *message* carries no usage.
        """
        usage = getattr(message, "usage", message)
        if isinstance(message, Mapping):
            usage = message.get("usage", message)
        if isinstance(usage, Mapping):
            return cls._from_fields(usage, requested_ttl)
        if getattr(usage, "model_dump", None) is None:
            raise TypeError(
                f"expected an SDK Message/Usage or a usage dict, got {type(usage).__name__}"
            )
        # Read the SDK object's fields directly: the same values model_dump() would give
        # (nested objects included), without building the dicts on every turn.
        return cls._from_fields(usage, requested_ttl)

    @classmethod
    def from_events(cls, events: Iterable[Any], *, requested_ttl: Ttl = "5m") -> Usage:
        """Build from a stream's events (SDK event objects or raw dicts), in order.

        Equivalent to feeding each event to a :class:`UsageAccumulator`.
        """
        acc = UsageAccumulator(requested_ttl=requested_ttl)
        for event in events:
            acc.feed(event)
        return acc.usage

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        if self.server_tool_use is None or other.server_tool_use is None:
            stu = self.server_tool_use or other.server_tool_use
        else:
            stu = self.server_tool_use + other.server_tool_use
        return Usage(
            input=self.input + other.input,
            cache_read=self.cache_read + other.cache_read,
            cache_write_5m=self.cache_write_5m + other.cache_write_5m,
            cache_write_1h=self.cache_write_1h + other.cache_write_1h,
            output=self.output + other.output,
            server_tool_use=stu,
            service_tier=_same(self.service_tier, other.service_tier, self, other),
            inference_geo=_same(self.inference_geo, other.inference_geo, self, other),
            ttl_split_assumed=self.ttl_split_assumed or other.ttl_split_assumed,
        )

    def to_otel_attributes(self) -> dict[str, int]:
        """Return OpenTelemetry GenAI semantic-convention usage attributes.

        ``gen_ai.usage.input_tokens`` is *inclusive*: it is :attr:`total_input`, as the
        conventions require; the cache attributes are parts of it, not additions to it.
        Names: ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
        ``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_creation.input_tokens``.
        """
        return {
            "gen_ai.usage.input_tokens": self.total_input,
            "gen_ai.usage.output_tokens": self.output,
            "gen_ai.usage.cache_read.input_tokens": self.cache_read,
            "gen_ai.usage.cache_creation.input_tokens": self.cache_write,
        }

    def to_openai_style(self) -> dict[str, Any]:
        """Return an OpenAI-style usage dict, where ``prompt_tokens`` includes the cache.

        ``prompt_tokens`` is :attr:`total_input`, ``prompt_tokens_details.cached_tokens`` the
        cache reads (a part of it), ``total_tokens`` input plus output. OpenAI's shape has
        no field for cache writes; they are inside ``prompt_tokens`` and nowhere else.
        """
        return {
            "prompt_tokens": self.total_input,
            "completion_tokens": self.output,
            "total_tokens": self.total,
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        }


class UsageAccumulator:
    """Settles a stream's usage event by event.

    ``message_start`` sets every count from ``message.usage`` (including the TTL split).
    Each ``message_delta`` carries *cumulative* counts: a value present there replaces the
    one held, never adds to it. Other event types are ignored.

    Invariant: :attr:`usage` is always what the final ``Message`` of the stream would report.

    Args:
        requested_ttl: The TTL the request asked for, used when a write total has no split.

    .. versionadded:: 0.1
    """

    def __init__(self, *, requested_ttl: Ttl = "5m") -> None:
        _check_ttl(requested_ttl)
        self._ttl: Ttl = requested_ttl
        self._usage = Usage()
        self._started = False

    @property
    def usage(self) -> Usage:
        """The usage as settled so far."""
        return self._usage

    @property
    def started(self) -> bool:
        """Whether a ``message_start`` has been seen."""
        return self._started

    def feed(self, event: Any) -> Usage:
        """Apply one stream event and return the usage settled so far.

        Raises:
            TypeError: when *event* has no ``type``.
        """
        kind = event.get("type") if isinstance(event, Mapping) else getattr(event, "type", None)
        if kind is None:
            raise TypeError(f"a stream event needs a 'type'; got {type(event).__name__}")
        if kind == "message_start":
            message = event["message"] if isinstance(event, Mapping) else event.message
            self._usage = Usage.from_message(message, requested_ttl=self._ttl)
            self._started = True
        elif kind == "message_delta":
            raw = event.get("usage") if isinstance(event, Mapping) else event.usage
            if raw is not None:
                self._usage = self._replace(_as_dict(raw))
        return self._usage

    def _replace(self, d: Mapping[str, Any]) -> Usage:
        u = self._usage
        changes: dict[str, Any] = {}
        for key, field in (
            ("input_tokens", "input"),
            ("cache_read_input_tokens", "cache_read"),
            ("output_tokens", "output"),
        ):
            if d.get(key) is not None:
                changes[field] = _count(d, key)
        if d.get("cache_creation_input_tokens") is not None:
            total = _count(d, "cache_creation_input_tokens")
            if total != u.cache_write:
                # message_delta has no TTL split: keep the split we know and put the change
                # on the requested TTL, or start over on it if the total shrank.
                known = (u.cache_write_5m, u.cache_write_1h) if total > u.cache_write else None
                w5, w1, _ = _split_writes(total, known, self._ttl)
                changes.update(cache_write_5m=w5, cache_write_1h=w1, ttl_split_assumed=True)
        stu = d.get("server_tool_use")
        if stu is not None:
            changes["server_tool_use"] = ServerToolUse(
                _count(stu, "web_search_requests"), _count(stu, "web_fetch_requests")
            )
        return attrs.evolve(u, **changes)


def _split_writes(total: int, split: tuple[int, int] | None, ttl: Ttl) -> tuple[int, int, bool]:
    """Return (5m, 1h, assumed) for a write *total* and an optional known split."""
    if split is None:
        w5, w1 = 0, 0
    else:
        w5, w1 = split
    missing = total - (w5 + w1)
    if missing <= 0:
        # The split covers the total (or, oddly, exceeds it: the split is the finer truth).
        return w5, w1, False
    if ttl == "1h":
        return w5, w1 + missing, True
    return w5 + missing, w1, True


def _field(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, Mapping) else getattr(d, key, None)


def _count(d: Any, key: str) -> int:
    value = _field(d, key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"usage field {key!r} must be an int, got {value!r}")
    return value


def _as_dict(usage: Any) -> Mapping[str, Any]:
    if isinstance(usage, Mapping):
        return usage
    dump = getattr(usage, "model_dump", None)
    if dump is None:
        raise TypeError(
            f"expected an SDK Message/Usage or a usage dict, got {type(usage).__name__}"
        )
    result: Mapping[str, Any] = dump()
    return result


def _same(a: str | None, b: str | None, ua: Usage, ub: Usage) -> str | None:
    # A zero usage carries no tier, so it must not erase the other side's.
    if ua == Usage():
        return b
    if ub == Usage():
        return a
    return a if a == b else None
