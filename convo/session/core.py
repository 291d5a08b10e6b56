"""The heart of a session, shared by :class:`Session` and :class:`AsyncSession`.

The whole path of one turn is :meth:`SessionCore.turn`, read top to bottom::

    begin_turn   validate -> history.append(user) -> Layout.render -> CacheTracker.predict
    turn         Budget.reserve (ledger total first, for ledger-scope budgets)
                 -> WarmRegistry Claim (single flight; the registry's state comes back)
                 -> RateLimiter Reserve -> attempts (RetryPolicy.drive: Send / Sleep)
                 -> [stream: Deliver to the caller, who sends the final message back]
                 -> Usage -> price -> tracker.observe -> ledger row -> history.append
                 -> limiter Settle -> registry RecordWarm / Began -> Reply
    on failure   a ledger row per attempt (with the usage it was billed), then Abandon the
                 claim, Release the reservation and the budget holds, roll the user back

The core does no I/O itself: each step that needs some is a value from
:mod:`convo.session.steps`, carried out by the shell (called, or awaited). Ledger rows are
only enqueued (the ledger's writer does the disk work).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from convo import models, sdk
from convo.budget import Budget, Spend
from convo.errors import LayoutError, StreamInterrupted
from convo.layout import History, Layout, Prefix, RenderedRequest
from convo.ledger import Ledger, LedgerRow, cache_outcome
from convo.limits import RateLimiter
from convo.policy import Decision, PrefixPool, pool_for
from convo.policy import arithmetic as econ
from convo.policy.reuse import prefix_at_ttl, text_tokens
from convo.pricing import price
from convo.request_rules import RequestChecker, needs_streaming
from convo.retry import ATTEMPT, AttemptRecord, RetryPolicy
from convo.routing import Router, RouteState
from convo.session import routed, steps
from convo.session.busts import log_bust
from convo.session.reply import Reply, Stats
from convo.session.turn import KeepAlive, Pending, user_message
from convo.tokens import message_tokens
from convo.tracker import CacheEntry, CacheTracker
from convo.usage import Usage
from convo.warm import WarmBackend, WarmKey

__all__ = ["SessionCore"]

_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_log = logging.getLogger("convo")
_WARM_TEXT = "(cache pre-warm)"


def _route_fields(pending: Pending) -> dict[str, Any]:
    """The ledger fields of a routed request (none for an unrouted one)."""
    route = pending.route
    if route is None:
        return {}
    return {"route": f"{route.required}>{route.tier}", "route_reason": route.reason}


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
        adaptive_ttl: bool = True,
        history_ttl: str | None = None,
        refresh: str = "path",
        router: Router | None = None,
        limiter_for: Callable[[str], Any] | None = None,
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
            ("registry", registry, ("acquire", "acquire_async", "record", "began"), "WarmRegistry"),
            ("limiter", limiter, ("acquire", "acquire_async", "settle", "release"), "RateLimiter"),
        )
        for name, backend, needs, kind in backends:
            if not all(hasattr(backend, method) for method in needs):
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
            "newest_ttl": None,
            "max_tokens": max_tokens,
        }
        self._use_prefix(prefix, workspace)
        self._workspace = workspace
        self.adaptive_ttl = adaptive_ttl
        self._gaps: list[float] = []
        self._last_turn_start: float | None = None
        # The cache-economics state (convo.policy): what this session's TTL choices and
        # re-warms are decided from. The pool is shared by every session on the registry.
        self._history_strategy = history
        # A caller's Prefix(ttl="1h") is a floor the policy never lowers (5m is the default).
        self._prefix_floor = prefix.ttl
        self._fixed_history_ttl = history_ttl
        self._pool: PrefixPool = pool_for(registry, repr(self.warm_key))
        # Without the caller's conversation id, a conversation is keyed on its first exchange
        # and suffix (see _conversation), whichever session sends its turns: a stateless
        # backend builds a session per request, and the first one starts empty.
        self._conversation_key: str | None = conversation_id or None
        self._first_turn_at: float | None = None
        self._own_touch = float("-inf")  # this session's latest re-warm
        self._entry_ttl: str | None = None  # the TTL of the prefix entry this turn finds
        #: The latest decision the policy took for this session (TTL, or a re-warm).
        self.last_decision: Decision | None = None
        self.history = History(messages)
        if router is not None and not isinstance(router, Router):
            raise TypeError(f"router must be a convo.Router, got {type(router).__name__}")
        if router is not None and router.rank_of_model(prefix.model) is None:
            raise ValueError(
                f"the prefix's model {prefix.model!r} is not one of the router's tiers "
                f"{dict(router.tiers)}; the conversation starts on it"
            )
        #: Cache-aware model routing (None: every turn on the prefix's model).
        self.router = router
        #: What this conversation's routed turns have shown the router.
        self.route_state = RouteState()
        #: The limiter of another model, when the session moves (None: keep the one given).
        self.limiter_for = limiter_for
        self.registry = registry
        self.limiter = limiter
        self.ledger = ledger
        self.retry = retry
        given: Sequence[Any] = (
            () if budget is None else budget if isinstance(budget, (list, tuple)) else (budget,)
        )
        self.budgets: tuple[Budget, ...] = tuple(given)
        if not all(isinstance(b, Budget) for b in self.budgets):
            raise TypeError(
                "budget must be a convo.Budget (e.g. convo.Budget(max_cost_usd='1.00')), or a "
                f"list of them; got {budget!r:.60}"
            )
        self.clock = clock
        # The tracker reads the same model table as the layout (overrides included).
        self.tracker = tracker or CacheTracker(
            clock=clock,
            models=prefix.models,
            refresh=refresh,  # type: ignore[arg-type]
        )
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
        self._prefix_known_until = float("-inf")
        self._info = models.lookup(prefix.model, prefix.models)
        self._checker = RequestChecker(models=prefix.models)
        # (the history last checked, how many of its leading messages that request shared)
        self._checked: tuple[History | None, int] = (None, 0)

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
        """Record this turn's start; with ``adaptive_ttl``, lay out its breakpoints by
        expected value (:mod:`convo.policy`): the prefix's TTL, and whether the history gets
        a breakpoint and with which TTL. Called before the user turn is appended.

        Cache keys do not include ``cache_control``, so switching TTL keeps every entry.
        """
        now = self.clock()
        if self._last_turn_start is not None:
            self._gaps = [*self._gaps[-99:], now - self._last_turn_start]
        self._last_turn_start = now
        pool = self._pool
        prefix_live = pool.live(now)
        pool.record_use(now)
        key = self._conversation()
        if key is None:
            self._first_turn_at = now  # pooled once its first answer is in (see _link_first_turn)
        else:
            self._link_first_turn()  # if its answer's turn did not (a kept partial answer)
            pool.record_turn(key, now)
        if not self.adaptive_ttl:
            self._entry_ttl = pool.record_write(self.prefix.ttl, live=prefix_live, at=now)
            return
        prefix_ttl, history, history_ttl, newest_ttl = self._choose_layout(now, key, prefix_live)
        # What the registry is told a read refreshes must be the entry's own TTL (a read
        # never changes it), not the one this turn's marker asks for.
        self._entry_ttl = pool.record_write(prefix_ttl, live=prefix_live, at=now)
        options = self._layout_options
        if (prefix_ttl, history, history_ttl, newest_ttl) != (
            self.prefix.ttl,
            options["history"],
            options["history_ttl"],
            options["newest_ttl"],
        ):
            saved = dict(options)
            options["history"], options["history_ttl"] = history, history_ttl
            options["newest_ttl"] = newest_ttl
            try:
                prefix = self.prefix
                if prefix_ttl != prefix.ttl:
                    prefix = prefix_at_ttl(prefix, prefix_ttl)
                self._use_prefix(prefix, self._workspace)
            except LayoutError:
                options.update(saved)  # a TTL order the API refuses: keep the layout

    def _history_ttl_now(self) -> str:
        """The TTL of the history breakpoints as laid out now."""
        ttl = self._layout_options["history_ttl"]
        return ttl if isinstance(ttl, str) else self.prefix.ttl

    def _conversation(self) -> str | None:
        """The key this conversation's turns are pooled under: the caller's conversation id,
        else its first exchange (the first message and its answer, with a fixed suffix), so
        a conversation rebuilt from stored history in a fresh session is still the same
        conversation, and two that open with the same words are not (their answers
        differ). ``None`` until the first answer is in the history."""
        if self._conversation_key is None and len(self.history) >= 2:
            suffix = self._layout_options["suffix"]
            first, answer = self.history.chain.message_digests[:2]
            fixed = suffix if isinstance(suffix, str) else ""
            self._conversation_key = f"{first}:{answer}:{fixed}"
        return self._conversation_key

    def _link_first_turn(self) -> None:
        """Pool the first turn under its conversation once its answer is in the history: a
        session built for one request (a stateless backend) has no next turn to do it."""
        if self._first_turn_at is not None and (key := self._conversation()) is not None:
            self._pool.record_turn(key, self._first_turn_at)
            self._first_turn_at = None

    def _choose_layout(
        self, now: float, key: str | None, prefix_live: bool
    ) -> tuple[str, str, str | None, str | None]:
        """``(prefix TTL, history strategy, history TTL, newest turn's TTL)`` for the turn
        about to be sent (``None``: the layout's default)."""
        pool = self._pool
        tokens = self.prefix.tokens
        prefix = econ.prefix_ttl_counts(*pool.prefix_gap_counts(), tokens=tokens)
        if self._prefix_floor == "1h" and prefix.action != "1h":
            prefix = Decision("1h", prefix.expected_saving, "the caller's 1h prefix")
        fixed = self._fixed_history_ttl
        if self._history_strategy != "rolling" or fixed is not None:
            ttl = "1h" if prefix.action == "1h" or fixed == "1h" else "5m"
            self.last_decision = prefix
            return ttl, self._history_strategy, fixed, None
        suffix = self._layout_options["suffix"]
        suffix_tokens = text_tokens(suffix) if isinstance(suffix, str) else 0
        chain = self.history.chain
        history = chain.cumulative_tokens
        seen = history[-1] if len(history) else 0
        # This turn writes the previous reply and its own message: about the last exchange
        # (the first turn writes the suffix, and a message not seen yet).
        stored = self.history.stored
        if len(stored) >= 2:
            # The last two messages' tokens, as the chain counted them when they came
            # (message_tokens sums the same block counts; no re-count every turn).
            first = chain.starts[-2]
            added = seen - (history[first - 1] if first else 0)
            pool.record_growth(added)
        else:  # the first message is not seen yet: the typical turn's size stands in
            added = suffix_tokens + pool.typical_growth()
        times = (econ.TTL_SECONDS["5m"], econ.TTL_SECONDS["1h"])
        five, hour = pool.next_turn_cdf(key, now, times)
        p_within = {"5m": five, "1h": hour}
        # What the history entry spares the next turn: the conversation's own tokens, and
        # the shared prefix as often as the fleet alone would let it lapse (never, while the
        # prefix has a 1h entry of its own).
        # (On a first turn the suffix is among the tokens added: count it once.)
        own = seen + added + (suffix_tokens if len(stored) >= 2 else 0)
        lapse = {
            ttl: 0.0 if prefix.action == "1h" else pool.prefix_lapse(econ.TTL_SECONDS[ttl])
            for ttl in ("5m", "1h")
        }
        decision = econ.history_ttl(
            p_within=p_within,
            protected={ttl: own + tokens * lapse[ttl] for ttl in ("5m", "1h")},
            new=added,
            extra_1h=0.0
            if prefix.action == "1h" or prefix_live
            else (econ.WRITE["1h"] - econ.WRITE["5m"]) * tokens,
        )
        self.last_decision = decision
        if decision.action == "none":
            return prefix.action, "none", None, None
        ttl = "1h" if prefix.action == "1h" or decision.action == "1h" else "5m"
        newest = None
        if decision.action == "1h" and len(stored) >= 2:
            # The 1h entry can end before this turn's message (on the previous answer) and
            # still hold the whole conversation before it: the message's own tokens then
            # need a 1h write only if, alone, they are worth one. The message is not
            # appended yet: the previous one stands in for its size.
            message = message_tokens(stored[-2])
            alone = econ.history_ttl(
                p_within=p_within, protected={"5m": message, "1h": message}, new=message
            )
            newest = "1h" if alone.action == "1h" else "5m"
        return ttl, "rolling", decision.action, newest

    # -- planning -------------------------------------------------------------------------

    def begin_turn(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None,
        params: Mapping[str, Any] | None,
        tier: str | None = None,
    ) -> Pending:
        """Append the user turn, render, predict and check budgets; roll back on refusal.

        With a router, the turn first goes to the model it chooses (*tier*: the tier the
        turn needs, else the router's signal decides)."""
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(
                f"max_tokens must be an int >= 1 (use warm() for max_tokens=0), got {max_tokens!r}"
            )
        message = user_message(content)
        if tier is not None and self.router is None:
            raise ValueError("tier= needs a session built with router=convo.Router(...)")
        route = routed.route_turn(self, message, tier) if self.router is not None else None
        self._adapt_ttl()
        self.history.append(message)
        try:
            rendered = self.layout.render(
                self.history, params=self._params(params), max_tokens=max_tokens
            )
            # The API's own limits (body size, context window, max_tokens, block types,
            # images, sampling and thinking rules), checked before anything is spent.
            # Messages before the first one the layout replaced (a new breakpoint, a folded
            # suffix), in this request and the last one checked, are the same stored dicts:
            # the checker need not look at them again (keeps the check flat in history).
            first = rendered.replaced[0] if rendered.replaced else len(self.history)
            checked = self._checked
            unchanged = min(checked[1], first) if checked[0] is self.history else None
            self._checked = (None, 0)
            self._checker.check(
                rendered.body, input_tokens=rendered.fingerprint.total_tokens, unchanged=unchanged
            )
            self._checked = (self.history, first)
            pending = self._plan(rendered, turn=self.turns + 1, user_appended=True)
            pending.route = route
            return pending
        except BaseException:
            self.rollback()
            raise

    def begin_warm(self, *, keep_alive: bool = False, latency: bool = False) -> Pending | None:
        """Plan a ``max_tokens: 0`` pre-warm: of the prefix, or (keep-alive) the conversation.

        Returns ``None`` when there is nothing a pre-warm could cache (a prefix below the
        model's minimum has no breakpoint): such a request would cost input and write nothing.
        A keep-alive re-warm is planned only when it pays (:meth:`_keep_alive_plan`), and
        reads the smallest prefix that protects what is worth protecting. The decision and
        its expected saving go with the request (and into its ledger row).
        """
        if keep_alive:
            return self._keep_alive_plan()
        if not latency:
            # Judge a cold prefix before preparing the warm (which records a write in the
            # pool): a cold pre-warm never pays in money, so it is sent only when asked.
            probe = self._warm_layout.render(
                [{"role": "user", "content": _WARM_TEXT}], max_tokens=0
            )
            if not probe.breakpoints:
                return None
            p = self.tracker.predict(probe)
            if not p.cache_read and not self._pool.live(self.clock()):
                self.last_decision = Decision(
                    "skip",
                    -(econ.READ * p.cache_write + econ.INPUT * p.input),
                    "a cold pre-warm costs a read of the prefix more than the first turn "
                    "writing it; warm(latency=True) buys time to first token at that price",
                )
                return None
        send = self._prepare_warm()
        rendered = self._warm_layout.render([{"role": "user", "content": _WARM_TEXT}], max_tokens=0)
        if not rendered.breakpoints:
            return None
        pending = self._plan(rendered, turn=0, user_appended=False)
        pending.purpose = "warm"
        p = pending.prediction
        # The fleet's entry (another session's write) is live though this session's
        # tracker has not learnt it yet: the warm would read it, a refresh like any other.
        read = p.cache_read or (self.prefix.tokens if self._pool.live(self.clock()) else 0)
        if not read:
            # A pre-warm of a cold prefix moves its write earlier: the first turn then reads
            # it, so it costs that read and the warm's own text more. It buys time to first
            # token, not money; sent because the caller asked (latency=True), with the
            # price on record.
            cost = econ.READ * p.cache_write + econ.INPUT * p.input
            decision = Decision("send", -cost, "cold pre-warm vs the first turn writing")
        else:
            # A live prefix about to lapse: a refresh, sent only when it pays. It protects
            # the shared prefix for whoever uses it next, this conversation's next turn
            # included: what counts is a use of the prefix after its lapse (a use before
            # it reads anyway), from the gaps between the fleet's uses.
            now = self.clock()
            p_next = self._pool.rescue(now)
            if self._last_turn_start is not None:
                p_next = max(p_next, self._next_use_probability(now))
            decision = econ.keep_alive(
                p_next=p_next,
                protected=read,
                read=read,
                rewrite=econ.WRITE[self.prefix.ttl],
                tail=p.input / econ.WRITE["5m"],
            )
        self.last_decision = decision
        if decision.action != "send":
            return None
        pending.decision = decision
        # Recorded only now the warm is decided on (a skipped one is never recorded): a pool
        # shared with other processes judges every send recorded as a write of the fleet's
        # entry if that entry had lapsed. (A warm whose request then fails is recorded too.)
        ttl, live, at = send
        self._pool.record_write(ttl, live=live, at=at)
        self._pool.record_touch(self.clock())
        return pending

    def _prepare_warm(self) -> tuple[str, bool, float]:
        """Before a pre-warm: give a cold prefix the TTL the policy chooses for it (a warm
        writes it), and note which TTL the entry it finds or writes has. Returns the send
        to record once the warm is decided on: ``(ttl, live, at)`` for ``record_write``."""
        now = self.clock()
        live = self._pool.live(now)
        if self.adaptive_ttl and not live:
            # A warm goes before a use: the silence it ends is a gap between uses already
            # (the turn records it only after the warm has written the entry).
            last = self._pool.last_use()
            counts = self._pool.prefix_gap_counts(
                extra=now - last if last is not None and now > last else None
            )
            decision = econ.prefix_ttl_counts(*counts, tokens=self.prefix.tokens)
            ttl = "1h" if decision.action == "1h" or self._prefix_floor == "1h" else "5m"
            if ttl != self.prefix.ttl:
                prefix = prefix_at_ttl(self.prefix, ttl)
                options = self._layout_options
                if ttl == "5m" and options["history_ttl"] == "1h":
                    options["history_ttl"] = "5m"  # 1h breakpoints may not follow a 5m one
                    options["newest_ttl"] = None
                self._use_prefix(prefix, self._workspace)
        self._entry_ttl = self.prefix.ttl if not live else self._pool.entry_ttl
        return self.prefix.ttl, live, now

    def _next_use_probability(self, now: float) -> float:
        """P(this conversation's next turn comes after its entry lapses but within a TTL of
        now), given none came since its latest turn."""
        last = self._last_turn_start
        if last is None:
            return self._pool.next_turn(None, now, after=0.0, before=econ.TTL_SECONDS["5m"])
        tracker = self.tracker
        deepest = max(
            (x for x in map(tracker.expires_at, tracker.entries()) if x > now), default=now
        )
        ttl = self._history_ttl_now()
        return self._pool.next_turn(
            self._conversation(),
            now,
            after=deepest - last,
            before=now + econ.TTL_SECONDS[ttl] - last,
            alive=now - last,
        )

    def _keep_alive_plan(self) -> Pending | None:
        """The keep-alive re-warm that pays most, or ``None`` when none pays.

        Two candidates: the conversation as it stands (protects its history and the prefix),
        and the static prefix alone (protects only the prefix, reads only it). The prefix
        counts only when no other session keeps it alive (the pool saw no use of it since
        this conversation's latest turn).
        """
        now = self.clock()
        pool = self._pool
        p_next = self._next_use_probability(now)
        start = self._last_turn_start
        # Touched after this conversation's own latest turn and re-warm: someone else.
        others = start is not None and pool.touched_since(max(start, self._own_touch))
        prefix_tokens = 0 if others else self.prefix.tokens
        # The prefix is needed by whoever uses it next (this conversation included), if that
        # use falls after the prefix's entry lapses but before the re-warm's would.
        p_shared = max(p_next, pool.rescue(now))
        shared = {
            "shared": prefix_tokens,
            "p_shared": p_shared,
            "shared_rewrite": econ.WRITE[pool.entry_ttl],
        }
        candidates: list[tuple[Decision, Pending]] = []
        if len(self.history):
            rendered = self._keep_alive_layout.render(self.history, max_tokens=0)
            if rendered.breakpoints:
                pending = self._plan(rendered, turn=0, user_appended=False)
                p = pending.prediction
                ttl = self._history_ttl_now()
                decision = econ.keep_alive(
                    p_next=p_next,
                    protected=max(0, p.cache_read - self.prefix.tokens),
                    read=p.cache_read,
                    rewrite=econ.WRITE[ttl],
                    tail=p.cache_write + p.input / econ.WRITE["5m"],
                    **shared,
                )
                candidates.append((decision, pending))
        if prefix_tokens:
            rendered = self._warm_layout.render(
                [{"role": "user", "content": _WARM_TEXT}], max_tokens=0
            )
            if rendered.breakpoints:
                pending = self._plan(rendered, turn=0, user_appended=False)
                p = pending.prediction
                decision = econ.keep_alive(
                    p_next=0.0,
                    protected=0,
                    read=p.cache_read,
                    tail=p.cache_write + p.input / econ.WRITE["5m"],
                    **shared,
                )
                candidates.append((decision, pending))
        if not candidates:
            return None
        decision, pending = max(candidates, key=lambda c: c[0].expected_saving)
        self.last_decision = decision
        if decision.action != "send":
            return None
        pending.purpose = "keep_alive"
        pending.decision = decision
        self._own_touch = self.clock()
        self._pool.record_touch(self._own_touch)
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
        own = self.prefix.keys
        if prefix_position is not None and (
            prefix_position >= len(own)
            or rendered.fingerprint.keys[prefix_position] != own[prefix_position]
        ):
            # A request setting re-keys the system (citations, speed): this request neither
            # reads nor writes the prefix's plain entry, so it takes no part in that entry's
            # single flight and tells the registry nothing about it.
            prefix_position = None
        return Pending(
            rendered=rendered,
            prediction=self.tracker.predict(rendered),
            turn=turn,
            warm_key=self.warm_key,
            prefix_position=prefix_position,
            user_appended=user_appended,
        )

    def _learn_shared_prefix(self, pending: Pending, state: Any) -> bool:
        """Tell the tracker about a prefix entry another session (or process) wrote, from
        the registry's state as the claim returned it. Returns whether it learnt anything."""
        position = pending.prefix_position
        now = self.clock()
        if position is None or state is None or state.writing or not state.live(now):
            return False
        if state.expires_at <= self._prefix_known_until:
            return False  # the tracker already holds this entry at least as long
        rendered = pending.rendered
        own = self.prefix.keys
        if position >= len(own) or rendered.fingerprint.keys[position] != own[position]:
            # A request setting re-keys the system (citations, speed): the registry's entry
            # is the prefix's plain one, which this request does not read.
            return False
        self._prefix_known_until = state.expires_at
        started = state.last_write_start if state.last_write_start is not None else now
        self.tracker.add_entry(
            CacheEntry(
                model=rendered.model,
                key=rendered.fingerprint.keys[position],
                tokens=rendered.fingerprint.tokens[position],
                ttl=self.prefix.ttl,
                expires_at=state.expires_at,
                readable_from=min(started, now),
            )
        )
        return True

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

    def _spend(self, usage: Usage) -> Spend:
        return Spend(usage.total_input, usage.output, price(usage, self.prefix.model).usd)

    def must_stream(self, pending: Pending) -> bool:
        """Whether *pending* must go out as a stream (the SDK refuses a plain request whose
        ``max_tokens`` could take longer than its non-streaming limit)."""
        return needs_streaming(self.prefix.model, pending.max_tokens)

    def itpm_weight(self, pending: Pending) -> int:
        """The request's predicted weight against input tokens per minute."""
        p = pending.prediction
        return p.input + p.cache_write + (p.cache_read if self._info.cache_reads_count_itpm else 0)

    def _itpm_used(self, usage: Usage) -> int:
        return (
            usage.input
            + usage.cache_write
            + (usage.cache_read if self._info.cache_reads_count_itpm else 0)
        )

    @property
    def _ttl_seconds(self) -> float:
        return _TTL_SECONDS[self._entry_ttl or self.prefix.ttl]

    # -- the turn ---------------------------------------------------------------------------

    def turn(self, pending: Pending, *, stream: bool = False, flight: bool = True) -> steps.Turn:
        """The whole path of one request, as a generator of I/O steps (see the module doc).

        Returns the :class:`Reply`; raises what the request failed with, after recording
        every attempt and undoing what the request reserved.
        """
        holds: list[tuple[Budget, Any]] = []
        try:
            estimate = self.estimate(pending) if self.budgets else None
            for budget in self.budgets:
                ledger_spent: Spend | None = None
                if budget.scope == "ledger":
                    if self.ledger is None:
                        raise ValueError(
                            "a Budget with scope='ledger' needs the session to have a ledger"
                        )
                    # The mark first: settles that land while the ledger is read are
                    # then known to be in the reading or not.
                    mark = budget.ledger_mark()
                    ledger_spent = yield steps.LedgerSpend(budget.since)
                else:
                    mark = None
                assert estimate is not None
                hold = budget.reserve(estimate, ledger_spent=ledger_spent, mark=mark)
                holds.append((budget, hold))
            if flight and pending.prefix_position is not None:
                pending.refresh_at = self._refresh_at(pending)
                pending.flight = yield steps.Claim(
                    self.warm_key, self._ttl_seconds, pending.refresh_at
                )
                if self._learn_shared_prefix(pending, pending.flight.state):
                    pending.prediction = self.tracker.predict(pending.rendered)
            pending.reservation = yield steps.Reserve(self.itpm_weight(pending), pending.max_tokens)
            started = self.clock()
            outcome = yield from self._attempts(pending, stream=stream)
            if stream:
                opened: sdk.OpenStream = outcome.value
                yield from self._began(pending)  # message_start is in: the response has begun
                try:
                    message = yield steps.Deliver(opened)
                except BaseException as cut:
                    yield from self._cut(pending, opened, cut)
                    raise AssertionError("unreachable") from cut  # _cut always raises
                yield steps.CloseStream(opened)
                usage = opened.usage.usage
                headers: Mapping[str, str] | None = opened.headers
            else:
                message = outcome.value
                usage = Usage.from_message(message, requested_ttl=self.requested_ttl(pending))  # type: ignore[arg-type]
                headers = outcome.facts.headers
            reply = self._complete(pending, message, usage, holds, latency_s=self.clock() - started)
            holds = []
            yield from self._settle(pending, usage, headers)
            if not stream:
                yield from self._began(pending)  # after the write is recorded: waiters read
            self._run_hooks(reply)
            return reply
        except GeneratorExit:
            # Closed unfinished (a stream dropped without being read to its end): no I/O
            # may happen here; put back what is local.
            self._undo_locally(pending, holds)
            raise
        except BaseException:
            yield from self._undo(pending, holds)
            raise

    def _refresh_at(self, pending: Pending) -> float | None:
        """When this request is expected to refresh the shared prefix's entry, if it is.

        Under the ``"path"`` refresh rule any read through the prefix refreshes it; under
        ``"entry"`` only a read that ends at the prefix does.
        """
        if self.tracker.refresh == "path":
            return self.clock()
        hit = pending.prediction.hit
        return self.clock() if hit == pending.prefix_position or hit < 0 else None

    def _attempts(self, pending: Pending, *, stream: bool) -> Generator[Any, Any, sdk.Outcome]:
        """Attempts until one succeeds, under the retry policy; each failure is recorded."""
        loop = self.retry.drive(
            clock=self.clock,
            wall_clock=self.clock,
            on_attempt=lambda record: self._attempt_done(pending, record),
        )
        request = next(loop)
        while True:
            try:
                if request != ATTEMPT:
                    yield steps.Sleep(float(request))
                    request = loop.send(None)
                    continue
                step: steps.Step = (
                    steps.OpenStream(
                        pending.call_arguments, self.clock(), self.requested_ttl(pending)
                    )
                    if stream
                    else steps.Send(pending.call_arguments, self.clock())
                )
                pending.sent = True
                try:
                    outcome = yield step
                except BaseException as error:
                    self._record_cancelled(pending, error)
                    raise
                pending.outcome = outcome
                if outcome.ok:
                    request = loop.send(outcome)
                    continue
                facts = outcome.facts
                if facts.headers is not None:
                    yield steps.ObserveFailure(
                        facts.headers, facts.status == 429, facts.retry_after
                    )
                assert outcome.error is not None
                request = loop.throw(outcome.error)
            except StopIteration as done:
                result: sdk.Outcome = done.value[0]
                return result

    def _attempt_done(self, pending: Pending, record: AttemptRecord) -> None:
        """Keep every attempt; a failed one goes to the ledger at once, with what it was
        billed (a stream's ``message_start`` before the failure; else nothing)."""
        pending.records.append(record)
        if record.error_type is None:
            return  # the successful attempt: recorded with its usage when the turn settles
        facts = pending.outcome.facts if pending.outcome is not None else None
        usage = facts.usage if facts is not None and facts.usage is not None else Usage.zero()
        pending.billed = pending.billed + usage
        self._record(
            usage,
            started_at=record.started_at,
            purpose=pending.purpose,
            **_route_fields(pending),
            attempts=record.number,
            status="error",
            error_type=record.error_type,
            http_status=record.status,
            request_id=record.request_id,
            usage_estimated=bool(facts and facts.usage_estimated),
        )

    def _record_cancelled(self, pending: Pending, error: BaseException) -> None:
        """A request in flight was cancelled (or interrupted): it may have been billed."""
        seen = getattr(error, "convo_usage", None)
        usage, estimated = seen if seen is not None else (None, False)
        usage = usage or Usage.zero()
        pending.billed = pending.billed + usage
        self._record(
            usage,
            started_at=self.clock(),
            purpose=pending.purpose,
            **_route_fields(pending),
            attempts=len(pending.records) + 1,
            status="cancelled",
            error_type=type(error).__name__,
            usage_estimated=estimated,
        )

    def _began(self, pending: Pending) -> Generator[Any, Any, None]:
        flight = pending.flight
        if flight is not None and flight.role == "writer" and not pending.began:
            pending.began = True
            yield steps.Began(flight)

    def _settle(
        self, pending: Pending, usage: Usage, headers: Mapping[str, str] | None
    ) -> Generator[Any, Any, None]:
        """Give the limiter and the registry what the request really used."""
        if pending.reservation is not None:
            reservation, pending.reservation = pending.reservation, None
            yield steps.Settle(reservation, self._itpm_used(usage), usage.output, headers)
        record = self._warm_record(pending, usage)
        if record is not None:
            yield record

    def _warm_record(self, pending: Pending, usage: Usage) -> steps.RecordWarm | None:
        """What to tell the registry about the shared prefix, if the claim did not already."""
        if pending.prefix_position is None:
            return None
        prefix_tokens = pending.rendered.fingerprint.tokens[pending.prefix_position]
        if usage.cache_read + usage.cache_write < prefix_tokens:
            return None  # the prefix was below the minimum, or the cache was not used
        read = usage.cache_read >= prefix_tokens
        flight = pending.flight
        if read and flight is not None and flight.role != "writer" and pending.refresh_at:
            return None  # the claim recorded this read already (one round trip saved)
        entry_rule = self.tracker.refresh == "entry"
        if read and entry_rule and usage.cache_read != prefix_tokens:
            return None  # read a deeper entry: under "entry" the prefix is not refreshed
        return steps.RecordWarm(
            self.warm_key,
            started_at=pending.prediction.at,
            ttl_seconds=self._ttl_seconds,
            wrote=not read,
            read=read,
        )

    def _complete(
        self,
        pending: Pending,
        message: Any,
        usage: Usage,
        holds: list[tuple[Budget, Any]],
        *,
        latency_s: float,
    ) -> Reply:
        """Account for a successful answer (pure: the ledger row is only enqueued)."""
        cost = price(usage, self.prefix.model)
        outcome = self.tracker.observe(
            pending.prediction, usage, getattr(message, "diagnostics", None)
        )
        if pending.route is not None and pending.user_appended:
            added = message_tokens(self.history.stored[-1]) + usage.output
            routed.note_reply(self, pending.route, usage.output, added)
        if pending.user_appended:
            self.history.append({"role": "assistant", "content": message.content})
            self.turns += 1
            self._last_message_id = message.id
            self._link_first_turn()
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
            limiter_wait_s=pending.reservation.wait if pending.reservation is not None else 0.0,
            warm_role=str(pending.flight.role) if pending.flight is not None else None,
            purpose=pending.purpose,
            route=pending.route,
        )
        self._record(
            usage,
            cost,
            started_at=pending.records[-1].started_at if pending.records else pending.prediction.at,
            purpose=pending.purpose,
            **_route_fields(pending),
            expected_saving_usd=self._expected_saving_usd(pending),
            latency_ms=latency_s * 1000,
            attempts=max(1, len(pending.records)),
            status="ok",
            http_status=200,
            request_id=request_id,
            cache_outcome=cache_outcome(usage),
            cache_reason=str(outcome.reason),
        )
        self.stats = self.stats.add(reply)
        if pending.purpose != "keep_alive":
            # Only real use keeps a session active: its own re-warms must not keep it alive.
            self.last_used = self.clock()
        if holds:
            actual = pending.billed + usage
            spent = Spend(actual.total_input, actual.output, price(actual, self.prefix.model).usd)
            for budget, hold in holds:
                budget.settle(hold, spent)
        return reply

    def _expected_saving_usd(self, pending: Pending) -> Decimal | None:
        """The policy's expected saving for the request *pending*, in USD (warm and
        keep-alive requests; ``None`` for turns or an unpriced model)."""
        if pending.decision is None:
            return None
        per_million = price(Usage(input=1_000_000), self.prefix.model).usd
        if per_million is None:
            return None
        saving = Decimal(repr(round(pending.decision.expected_saving, 3)))
        return saving * per_million / 1_000_000

    def _run_hooks(self, reply: Reply) -> None:
        log_bust(reply)
        for hook in self.hooks:
            try:
                hook(reply)
            except Exception as error:
                # The turn is already recorded and in the history; a telemetry hook's failure
                # must not turn it into a failure the caller would retry and pay for again.
                warnings.warn(
                    f"hook {hook!r} raised {error!r}; the turn was recorded",
                    RuntimeWarning,
                    stacklevel=4,
                )

    def _cut(
        self, pending: Pending, opened: sdk.OpenStream, cut: BaseException
    ) -> Generator[Any, Any, None]:
        """A stream ended before its end: record what it was billed, settle, and raise.

        The caller gets :class:`StreamInterrupted` with the partial text (a cancellation
        stays a cancellation); the history is as before the turn unless the caller asked
        to keep the partial reply.
        """
        yield steps.CloseStream(opened)
        usage, estimated = opened.usage_so_far()
        usage = usage or Usage.zero()
        # From the stream (an error event, a dropped connection), or the caller stopped
        # reading (Ctrl-C, a cancelled task, an exception in their loop).
        from_stream = sdk.category_of(cut) is not None
        cancelled = not from_stream
        error_type = "stream_interrupted" if from_stream else "cancelled"
        status = getattr(cut, "status_code", None)
        self.tracker.observe(pending.prediction, usage, None)
        pending.billed = pending.billed + usage
        self._record(
            usage,
            started_at=pending.records[-1].started_at if pending.records else pending.prediction.at,
            purpose=pending.purpose,
            **_route_fields(pending),
            attempts=max(1, len(pending.records)),
            status="cancelled" if cancelled else "error",
            error_type=error_type,
            http_status=status if isinstance(status, int) else None,
            request_id=opened.request_id,
            usage_estimated=estimated,
        )
        yield from self._settle(pending, usage, None)
        partial = opened.delivered_text
        if pending.keep_partial and partial and pending.user_appended:
            self.history.append({"role": "assistant", "content": partial})
            pending.user_appended = False  # kept: nothing to roll back
        if from_stream or isinstance(cut, KeyboardInterrupt):
            raise StreamInterrupted(
                f"the stream ended after {len(partial)} characters of text reached you: "
                f"{cut!r}; its billed usage is recorded and the turn is "
                + ("kept as partial" if pending.keep_partial else "not in the history"),
                partial_text=partial,
                usage=usage,
            ) from cut
        raise cut

    def _undo(self, pending: Pending, holds: list[tuple[Budget, Any]]) -> Generator[Any, Any, None]:
        """Undo what a request that failed for good reserved (its attempts are recorded).

        The local part (history, budget holds) comes first, so a backend that fails while
        being given its share back cannot leave the history half-done; such a failure is
        logged and the original error goes on.
        """
        self._undo_locally(pending, holds)
        cleanup: list[steps.Step] = []
        flight = pending.flight
        if flight is not None and flight.role == "writer" and not pending.began:
            pending.began = True
            cleanup.append(steps.Abandon(flight))
        if pending.reservation is not None:
            reservation, pending.reservation = pending.reservation, None
            billed = pending.billed
            if pending.sent:
                # The server counted the request (and maybe tokens): settle, don't give back.
                cleanup.append(
                    steps.Settle(reservation, self._itpm_used(billed), billed.output, None)
                )
            else:
                cleanup.append(steps.Release(reservation))
        for step in cleanup:
            try:
                yield step
            except Exception:
                _log.warning(
                    "convo: %s failed while undoing a failed request",
                    type(step).__name__,
                    exc_info=True,
                )

    def _undo_locally(self, pending: Pending, holds: list[tuple[Budget, Any]]) -> None:
        billed = pending.billed
        for budget, hold in holds:
            if billed.total_input or billed.output:
                budget.settle(
                    hold,
                    Spend(billed.total_input, billed.output, price(billed, self.prefix.model).usd),
                )
            else:
                budget.release(hold)
        holds.clear()
        if pending.user_appended:
            pending.user_appended = False
            self.rollback()

    def _record(self, usage: Usage, cost: Any = None, *, started_at: float, **fields: Any) -> None:
        """Append one attempt's row to the ledger (only enqueued: the writer does the I/O)."""
        if self.ledger is None:
            return
        self.ledger.append(
            LedgerRow.build(
                usage,
                cost if cost is not None else price(usage, self.prefix.model),
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
        tracker = self.tracker
        deepest = max(
            (x for x in map(tracker.expires_at, tracker.entries()) if x > now), default=None
        )
        if deepest is None:
            return False  # already expired: a re-warm would be a full write, not a refresh
        return deepest - now <= policy.margin_s
