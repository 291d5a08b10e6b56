"""The I/O-free heart of a session, shared by :class:`Session` and :class:`AsyncSession`.

A turn goes through the same steps in both shells; only the waiting and the HTTP differ::

    begin_turn   history.append(user) -> Layout.render -> CacheTracker.predict
                 -> Budget.check (refuse before spending)
    (shell)      WarmRegistry.acquire (single flight) -> maybe repredict
                 -> RateLimiter.acquire -> RetryPolicy.call(client ...)
    complete     Usage -> price -> tracker.observe -> registry.record -> limiter.settle
                 -> ledger.append -> history.append(assistant content, verbatim) -> Reply
    fail         roll the user message back; release the flight and the reservation

Everything here is synchronous and does no network I/O; the ledger's ``append`` only
enqueues (its writer thread does the disk work).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from convo import models
from convo.budget import Budget, Spend
from convo.errors import LayoutError
from convo.layout import History, Layout, Prefix, RenderedRequest
from convo.ledger import Ledger, LedgerRow
from convo.limits import RateLimiter
from convo.pricing import price
from convo.retry import AttemptRecord, RetryPolicy
from convo.session.reply import Reply, Stats
from convo.session.turn import KeepAlive, Pending, user_message
from convo.tracker import CacheEntry, CacheTracker
from convo.usage import Usage
from convo.warm import WarmBackend, WarmKey, choose_ttl

__all__ = ["SessionCore"]

_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_WARM_TEXT = "(cache pre-warm)"


def _cache_outcome(usage: Usage) -> str:
    if usage.cache_read and not usage.cache_write:
        return "hit"
    if usage.cache_read:
        return "partial"
    return "write" if usage.cache_write else "none"


class SessionCore:
    """State and pure steps of one conversation. The shells own waiting and HTTP."""

    def __init__(
        self,
        prefix: Prefix,
        *,
        workspace: str,
        suffix: str | Callable[[], str] | None,
        suffix_placement: str,
        history: str,
        registry: WarmBackend,
        limiter: RateLimiter | Any,
        ledger: Ledger | None,
        retry: RetryPolicy,
        budget: Budget | Sequence[Budget] | None,
        max_tokens: int,
        clock: Callable[[], float],
        diagnostics: bool,
        keep_alive: KeepAlive | None,
        session_id: str | None,
        conversation_id: str | None,
        messages: Sequence[Mapping[str, Any]],
        hooks: Sequence[Callable[[Reply], None]],
        tracker: CacheTracker | None = None,
        adaptive_ttl: bool = False,
        history_ttl: str | None = None,
    ) -> None:
        if not isinstance(prefix, Prefix):
            raise TypeError(f"prefix must be a convo.Prefix, got {type(prefix).__name__}")
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a convo.RetryPolicy, got {type(retry).__name__}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        if ledger is not None and not isinstance(ledger, Ledger):
            raise TypeError(
                f"ledger must be a convo.Ledger (e.g. convo.Ledger.open(':memory:')), None for the "
                f"default, or False for none; got {type(ledger).__name__}"
            )
        backends = (
            ("registry", registry, "state", "WarmRegistry"),
            ("limiter", limiter, "acquire", "RateLimiter"),
        )
        for name, backend, needs, kind in backends:
            if not hasattr(backend, needs):
                raise TypeError(
                    f"{name} must be a convo.{kind} (or its Redis twin), "
                    f"got {type(backend).__name__}"
                )
        if not all(callable(hook) for hook in hooks):
            raise TypeError("hooks must be callables taking a convo.Reply")
        if max_tokens < 1:
            raise ValueError(
                f"max_tokens must be >= 1 (use warm() for max_tokens=0), got {max_tokens}"
            )
        self._layout_options = {
            "suffix": suffix,
            "suffix_placement": suffix_placement,
            "history": history,
            "history_ttl": history_ttl,
            "max_tokens": max_tokens,
        }
        self._use_prefix(prefix, workspace)
        self._workspace = workspace
        self.adaptive_ttl = adaptive_ttl
        self._gaps: list[float] = []
        self._last_turn_start: float | None = None
        self.history = History(messages)
        self.registry = registry
        self.limiter = limiter
        self.ledger = ledger
        self.retry = retry
        self.budgets: tuple[Budget, ...] = (
            () if budget is None else (budget,) if isinstance(budget, Budget) else tuple(budget)
        )
        if not all(isinstance(b, Budget) for b in self.budgets):
            raise TypeError("budget must be a convo.Budget, or a list of them")
        self.clock = clock
        # The tracker reads the same model table as the layout (overrides included).
        self.tracker = tracker or CacheTracker(clock=clock, models=prefix.models)
        self.diagnostics = diagnostics
        self.keep_alive = keep_alive
        self.session_id = session_id or f"ses_{uuid.uuid4().hex[:16]}"
        self.conversation_id = conversation_id or f"conv_{uuid.uuid4().hex[:16]}"
        self.hooks = tuple(hooks)
        self.stats = Stats()
        self.keep_alive_spent = Decimal(0)
        self.turns = 0
        self.last_used: float | None = None
        self._last_message_id: str | None = None
        self._info = models.lookup(prefix.model)

    def _use_prefix(self, prefix: Prefix, workspace: str) -> None:
        """(Re)build the layouts for *prefix* (at start, and when the adaptive TTL switches)."""
        options: Any = self._layout_options
        self.prefix = prefix
        self.layout = Layout(prefix, **options)
        # Keep-alive renders the conversation as it stands (ending with the assistant),
        # where a message-placed suffix has no turn to sit in; it is volatile and after every
        # breakpoint anyway, so leaving it out changes no cache key.
        self._keep_alive_layout = (
            self.layout
            if options["suffix_placement"] == "system"
            else Layout(
                prefix,
                history=options["history"],
                history_ttl=options["history_ttl"],
                max_tokens=options["max_tokens"],
            )
        )
        self._warm_layout = Layout(prefix, history="none", max_tokens=options["max_tokens"])
        # Keyed like the server's cache: on the prefix's content, not its cache_control
        # markers, so 5m and 1h sessions on the same bytes (or an adaptive-TTL switch) share
        # one entry and one single flight.
        content = prefix.keys[-1].hex() if prefix.keys else prefix.fingerprint
        self.warm_key = WarmKey.for_api_key(workspace, prefix.model, content)

    def _adapt_ttl(self) -> None:
        """Track gaps between turns; with ``adaptive_ttl``, switch to the TTL they favour.

        Cache keys do not include ``cache_control``, so switching TTL keeps every entry.
        """
        now = self.clock()
        if self._last_turn_start is not None:
            self._gaps = [*self._gaps[-99:], now - self._last_turn_start]
        self._last_turn_start = now
        if self.adaptive_ttl and self._gaps:
            best = choose_ttl(self._gaps)
            if best != self.prefix.ttl:
                # An explicit history_ttl="1h" rules out a 5m prefix: then keep the 1h one.
                with contextlib.suppress(LayoutError):
                    self._use_prefix(attrs.evolve(self.prefix, ttl=best), self._workspace)

    # -- planning -------------------------------------------------------------------------

    def begin_turn(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None,
        params: Mapping[str, Any] | None,
    ) -> Pending:
        """Append the user turn, render, predict and check budgets; roll back on refusal."""
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(
                f"max_tokens must be an int >= 1 (use warm() for max_tokens=0), got {max_tokens!r}"
            )
        message = user_message(content)
        self._adapt_ttl()
        self.history.append(message)
        try:
            rendered = self.layout.render(
                self.history, params=self._params(params), max_tokens=max_tokens
            )
            return self._plan(rendered, turn=self.turns + 1, user_appended=True)
        except BaseException:
            self.rollback()
            raise

    def begin_warm(self, *, keep_alive: bool = False) -> Pending | None:
        """Plan a ``max_tokens: 0`` pre-warm: of the prefix, or (keep-alive) the conversation.

        Returns ``None`` when there is nothing a pre-warm could cache (a prefix below the
        model's minimum has no breakpoint): such a request would cost input and write nothing.
        """
        if keep_alive and len(self.history):
            rendered = self._keep_alive_layout.render(self.history, max_tokens=0)
        else:
            rendered = self._warm_layout.render(
                [{"role": "user", "content": _WARM_TEXT}], max_tokens=0
            )
        if not rendered.breakpoints:
            return None
        pending = self._plan(rendered, turn=0, user_appended=False)
        pending.purpose = "keep_alive" if keep_alive else "warm"
        return pending

    def _params(self, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
        merged = dict(params or {})
        if self.diagnostics:
            merged["diagnostics"] = {"previous_message_id": self._last_message_id}
        return merged or None

    def _plan(self, rendered: RenderedRequest, *, turn: int, user_appended: bool) -> Pending:
        prefix_position = next(
            (b.position for b in rendered.breakpoints if b.source == "prefix"), None
        )
        self._learn_shared_prefix(rendered, prefix_position)
        prediction = self.tracker.predict(rendered)
        pending = Pending(
            rendered=rendered,
            prediction=prediction,
            turn=turn,
            warm_key=self.warm_key,
            prefix_position=prefix_position,
            user_appended=user_appended,
        )
        self._check_budgets(pending)
        return pending

    def repredict(self, pending: Pending) -> Pending:
        """Predict again after waiting for another session's write of the shared prefix."""
        self._learn_shared_prefix(pending.rendered, pending.prefix_position)
        pending.prediction = self.tracker.predict(pending.rendered)
        return pending

    def _learn_shared_prefix(self, rendered: RenderedRequest, position: int | None) -> None:
        """Tell the tracker about a prefix entry another session (or process) wrote."""
        if position is None:
            return
        state = self.registry.state(self.warm_key)
        now = self.clock()
        if state is None or state.writing or not state.live(now):
            return
        key = rendered.fingerprint.keys[position]
        known = {(e.model, e.key): e for e in self.tracker.entries()}.get((rendered.model, key))
        if known is not None and known.expires_at >= state.expires_at:
            return
        started = state.last_write_start if state.last_write_start is not None else now
        self.tracker.add_entry(
            CacheEntry(
                model=rendered.model,
                key=key,
                tokens=rendered.fingerprint.tokens[position],
                ttl=self.prefix.ttl,
                expires_at=state.expires_at,
                readable_from=min(started, now),
            )
        )

    def estimate(self, pending: Pending) -> Spend:
        """What *pending* may spend: predicted input, ``max_tokens`` of output, their price."""
        p = pending.prediction
        usage = Usage(
            input=p.input,
            cache_read=p.cache_read,
            cache_write_5m=p.cache_write_5m,
            cache_write_1h=p.cache_write_1h,
            output=pending.max_tokens,
        )
        return Spend(usage.total_input, usage.output, price(usage, self.prefix.model).usd)

    def spent(self, budget: Budget) -> Spend:
        """What *budget*'s scope has spent so far."""
        if budget.scope == "ledger":
            if self.ledger is None:
                raise ValueError("a Budget with scope='ledger' needs the session to have a ledger")
            self.ledger.flush()
            totals = self.ledger.total(since=budget.since)
            cost = None if totals.unpriced else totals.cost_usd
            return Spend(totals.total_input, totals.output, cost)
        usage, cost = self.stats.usage, self.stats.cost_usd
        return Spend(usage.total_input, usage.output, cost)

    def _check_budgets(self, pending: Pending) -> None:
        if not self.budgets:
            return
        estimate = self.estimate(pending)
        for budget in self.budgets:
            budget.check(estimate, self.spent(budget))

    def itpm_weight(self, pending: Pending) -> int:
        """The request's predicted weight against input tokens per minute."""
        p = pending.prediction
        return p.input + p.cache_write + (p.cache_read if self._info.cache_reads_count_itpm else 0)

    # -- outcomes -------------------------------------------------------------------------

    def record_attempt(self, pending: Pending, record: AttemptRecord) -> None:
        """Keep every attempt; failed ones go to the ledger at once (nothing recorded is lost)."""
        pending.records.append(record)
        if record.error_type is None:
            return  # the successful attempt: complete() records it with its usage
        if self.ledger is not None:
            # A refused attempt costs nothing: priced at zero (None only for an unpriced model).
            self._record(
                Usage.zero(),
                price(Usage.zero(), self.prefix.model),
                started_at=record.started_at,
                attempts=record.number,
                status="error",
                error_type=record.error_type,
                http_status=record.status,
                request_id=record.request_id,
            )

    def complete(
        self, pending: Pending, message: Any, *, usage: Usage | None = None, latency_s: float
    ) -> Reply:
        """Account for a successful answer and return its :class:`Reply`."""
        usage = usage or Usage.from_message(message, requested_ttl=self.requested_ttl(pending))  # type: ignore[arg-type]
        cost = price(usage, self.prefix.model)
        outcome = self.tracker.observe(
            pending.prediction, usage, getattr(message, "diagnostics", None)
        )
        self._touch_registry(pending, usage)
        if pending.reservation is not None:
            self.limiter.settle(
                pending.reservation,
                input_tokens=usage.input
                + usage.cache_write
                + (usage.cache_read if self._info.cache_reads_count_itpm else 0),
                output_tokens=usage.output,
            )
        if pending.user_appended:
            self.history.append({"role": "assistant", "content": message.content})
            self.turns += 1
            self._last_message_id = message.id
        if pending.purpose == "keep_alive" and cost.usd is not None:
            self.keep_alive_spent += cost.usd
        request_id = getattr(message, "_request_id", None) or (
            pending.records[-1].request_id if pending.records else None
        )
        reply = Reply(
            text="".join(
                getattr(b, "text", "") for b in message.content if getattr(b, "type", "") == "text"
            ),
            message=message,
            usage=usage,
            cost=cost,
            cache=outcome,
            attempts=tuple(pending.records),
            request_id=request_id,
            latency_s=latency_s,
            turn=pending.turn,
        )
        if self.ledger is not None:
            self._record(
                usage,
                cost,
                started_at=pending.records[-1].started_at
                if pending.records
                else pending.prediction.at,
                latency_ms=latency_s * 1000,
                attempts=max(1, len(pending.records)),
                status="ok",
                http_status=200,
                request_id=request_id,
                cache_outcome=_cache_outcome(usage),
                cache_reason=str(outcome.reason),
            )
        self.stats = self.stats.add(reply)
        if pending.purpose != "keep_alive":
            # Only real use keeps a session active: its own re-warms must not keep it alive.
            self.last_used = self.clock()
        for budget in self.budgets:
            budget.check_actual(
                Spend(usage.total_input, usage.output, cost.usd), self.spent(budget)
            )
        for hook in self.hooks:
            try:
                hook(reply)
            except Exception as error:
                # The turn is already recorded and in the history; a telemetry hook's failure
                # must not turn it into a failure the caller would retry and pay for again.
                warnings.warn(
                    f"hook {hook!r} raised {error!r}; the turn was recorded",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return reply

    def _touch_registry(self, pending: Pending, usage: Usage) -> None:
        """Record that the shared prefix was written or read at this request's start."""
        if pending.prefix_position is None:
            return
        prefix_tokens = pending.rendered.fingerprint.tokens[pending.prefix_position]
        covered = usage.cache_read + usage.cache_write
        if covered < prefix_tokens:
            return  # the prefix was below the minimum, or the cache was not used at all
        self.registry.record(
            self.warm_key,
            started_at=pending.prediction.at,
            ttl_seconds=_TTL_SECONDS[self.prefix.ttl],
            wrote=usage.cache_read < prefix_tokens,
            read=usage.cache_read >= prefix_tokens,
        )

    def fail_stream(self, pending: Pending, usage: Usage, error: BaseException) -> None:
        """Record a stream that failed after text reached the caller, with what it used."""
        if self.ledger is not None:
            status = getattr(error, "status_code", None)
            self._record(
                usage,
                price(usage, self.prefix.model),
                started_at=pending.prediction.at,
                attempts=max(1, len(pending.records)),
                status="error",
                error_type="stream_interrupted",
                http_status=status if isinstance(status, int) else None,
                request_id=pending.records[-1].request_id if pending.records else None,
            )
        self.fail(pending)

    def _record(self, usage: Usage, cost: Any, *, started_at: float, **fields: Any) -> None:
        """Append one attempt's row to the ledger (only enqueued: the writer thread does I/O)."""
        assert self.ledger is not None
        self.ledger.append(
            LedgerRow.build(
                usage,
                cost,
                model=self.prefix.model,
                time=dt.datetime.fromtimestamp(started_at, dt.timezone.utc),
                session_id=self.session_id,
                conversation_id=self.conversation_id,
                prefix_fingerprint=self.prefix.fingerprint,
                **fields,
            )
        )

    def requested_ttl(self, pending: Pending) -> str:
        """The TTL writes are attributed to when a response lacks the 5m/1h split."""
        ttls = [b.ttl for b in pending.rendered.breakpoints]
        return ttls[-1] if ttls else self.prefix.ttl

    def rollback(self) -> None:
        """Remove the user turn a failed request appended (history stays what was answered)."""
        self.history = History(list(self.history.stored)[:-1])

    def fail(self, pending: Pending) -> None:
        """Undo what *pending* reserved after it failed for good."""
        if pending.user_appended:
            self.rollback()
        if pending.reservation is not None:
            self.limiter.settle(pending.reservation, input_tokens=0, output_tokens=0)

    # -- keep-alive -----------------------------------------------------------------------

    def keep_alive_due(self) -> bool:
        """Whether a keep-alive re-warm should be sent now."""
        policy = self.keep_alive
        if policy is None or self.last_used is None:
            return False
        now = self.clock()
        if now - self.last_used > policy.active_for_s:
            return False  # nobody is using this session: let the cache go
        if policy.max_cost_usd is not None and self.keep_alive_spent >= policy.max_cost_usd:
            return False
        # The newest entry (the one every later turn reads through) expires last; when even
        # it is within the margin, refresh the conversation.
        deepest = max(
            (e.expires_at for e in self.tracker.entries() if e.expires_at > now), default=None
        )
        if deepest is None:
            return False  # already expired: a re-warm would be a full write, not a refresh
        return deepest - now <= policy.margin_s
