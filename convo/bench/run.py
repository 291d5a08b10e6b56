"""Running one workload under one strategy on the emulator's virtual clock.

The driver replays the workload's schedule: it moves the emulator's
:class:`~convo.emulator.VirtualClock` to each turn's time and asks the strategy to send it,
so hour-long think times take no wall time. Turns that start within ``overlap_s`` of each
other form a *wave*. A cache entry is readable only once the response that writes it has
begun, so a wave on a cold prefix pays one write per request unless the client waits for
the first (single flight): such a wave is sent concurrently, one thread each, with the
emulator holding every response back long enough (real time) for the whole wave to arrive
first. A wave on a prefix sent less than a 5m TTL ago is sent in order instead: with the
shared prefix live, order changes nothing in the bill. Outside waves the emulator answers
at once. Latency is the emulator's latency model applied to each request's usage; nothing
sleeps to measure it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import anthropic
import attrs

import convo
from convo import tokens
from convo.bench.ideal import TurnLog, ideal_timeline, ideal_usage, unit_rates
from convo.bench.routing import ROUTING_STRATEGIES, Routed, RoutingStrategy
from convo.bench.routing import make as make_routing
from convo.bench.strategies import Sent, make
from convo.bench.workloads import Conversation, Workload
from convo.emulator import LatencyModel, RunningEmulator, VirtualClock, serve

__all__ = ["Bench", "RequestRecord", "RunResult"]

_TICK_S = 30.0  # keep-alive tick interval: shorter than KeepAlive.margin_s (60 s)
_ACTIVE_S = 900.0  # ticks stop this long after a conversation's last turn (KeepAlive default)
_COLD_AFTER_S = 300.0  # the shortest TTL: a prefix sent more recently is live


@attrs.frozen
class RequestRecord:
    """One request as the client saw it.

    ``model``, ``required`` and ``tier`` are set on the turns of a routing run: the model
    that answered, the tier the turn needed and the tier that answered.

    .. versionadded:: 0.1
    .. versionchanged:: 0.4
       ``model``, ``required``, ``tier``.
    """

    at: float
    conversation: str
    kind: str
    usage: convo.Usage
    cost_usd: float
    latency_s: float
    cpu_s: float
    model: str | None = None
    required: str | None = None
    tier: str | None = None


@attrs.frozen
class RunResult:
    """Everything measured in one run (see ``docs/benchmarks.md`` for each field).

    A routing run (a workload with ``tiers``) has no ideal (``ideal`` and ``ideal_usd`` are
    ``None``: the bound prices one model), and ``facts`` holds what its ledger said.

    .. versionadded:: 0.1
    ``ideal_no_refresh_usd`` is the ideal without refresh reads between uses: the least a
    client whose requests are its users' turns can pay (``None`` for routing).

    .. versionchanged:: 0.4
       ``tiers``, ``planned`` (turns per conversation) and ``facts``; ``ideal`` and
       ``ideal_usd`` may be ``None``.
    .. versionchanged:: 0.5
       ``ideal_no_refresh_usd``.
    """

    workload: str
    model: str
    strategy: str
    seed: int
    users: int
    records: tuple[RequestRecord, ...]
    turns: tuple[TurnLog, ...]
    billed: convo.Usage
    cost_usd: Decimal
    ideal: convo.Usage | None
    ideal_usd: Decimal | None
    rate_limited: int
    slept_s: float
    errors: tuple[str, ...]
    wall_s: float
    tiers: tuple[tuple[str, str], ...] = ()
    planned: Mapping[str, int] = attrs.field(factory=dict)
    facts: Mapping[str, Any] = attrs.field(factory=dict)
    ideal_no_refresh_usd: Decimal | None = None

    def metrics(self) -> dict[str, Any]:
        """The run's metrics as JSON-ready values."""
        turns = [r for r in self.records if r.kind == "turn"]
        total_input = self.billed.total_input
        hit = sum(1 for r in self.records if r.usage.cache_read)
        latencies = sorted(r.latency_s for r in turns)
        cost = float(self.cost_usd)
        ideal = None if self.ideal_usd is None else float(self.ideal_usd)
        bound = self.ideal_no_refresh_usd
        no_refresh = None if bound is None else float(bound)
        metrics = {
            "workload": self.workload,
            "strategy": self.strategy,
            "seed": self.seed,
            "users": self.users,
            "turns": len(turns),
            "requests": len(self.records),
            "warm_requests": sum(1 for r in self.records if r.kind == "warm"),
            "keep_alive_requests": sum(1 for r in self.records if r.kind == "keep_alive"),
            "tokens": _usage_dict(self.billed),
            "cache_writes": sum(1 for r in self.records if r.usage.cache_write),
            "cost_usd": cost,
            "ideal_usd": ideal,
            "ideal_tokens": None if self.ideal is None else _usage_dict(self.ideal),
            "cost_over_ideal": cost / ideal if ideal else None,
            "ideal_no_refresh_usd": no_refresh,
            "no_refresh_over_ideal": no_refresh / ideal if ideal and no_refresh else None,
            "token_hit_rate": self.billed.cache_read / total_input if total_input else None,
            "request_hit_rate": hit / len(self.records) if self.records else None,
            "itpm_weight": sum(_itpm(r.usage) for r in self.records),
            "rate_limited_429": self.rate_limited,
            "slept_s": self.slept_s,
            "latency_p50_s": _quantile(latencies, 0.50),
            "latency_p95_s": _quantile(latencies, 0.95),
            "client_cpu_ms_per_turn": (
                1000 * sum(r.cpu_s for r in self.records) / len(turns) if turns else None
            ),
            "errors": list(self.errors),
            "wall_s": self.wall_s,
        }
        if self.tiers:
            metrics |= self._routing(turns, cost)
        return metrics

    def _routing(self, turns: Sequence[RequestRecord], cost: float) -> dict[str, Any]:
        """Success, cost per successful task and moves between models (routing runs).

        A task is a turn; a turn the strategy failed to send counts as not successful.
        """
        rank = {tier: i for i, (tier, _) in enumerate(self.tiers)}
        sent: dict[str, list[RequestRecord]] = {}
        for turn in turns:
            sent.setdefault(turn.conversation, []).append(turn)

        def ok(turn: RequestRecord) -> bool:
            if turn.tier is None or turn.required is None:
                return False
            return rank[turn.tier] >= rank[turn.required]

        tasks = sum(self.planned.values())
        successes = sum(1 for t in turns if ok(t))
        whole = sum(
            1
            for conversation, planned in self.planned.items()
            if len(sent.get(conversation, ())) == planned and all(map(ok, sent[conversation]))
        )
        moves = sum(
            1 for mine in sent.values() for a, b in itertools.pairwise(mine) if a.model != b.model
        )
        by_model: dict[str, int] = {}
        for turn in turns:
            by_model[str(turn.model)] = by_model.get(str(turn.model), 0) + 1
        cheapest = self.tiers[0][0]
        return {
            "tasks": tasks,
            "successful_tasks": successes,
            "success_rate": successes / tasks if tasks else None,
            "cost_per_success_usd": cost / successes if successes else None,
            "hard_turns": sum(1 for t in turns if t.required != cheapest),
            "conversations": len(self.planned),
            "conversations_ok": whole,
            "cost_per_ok_conversation_usd": cost / whole if whole else None,
            "moves": moves,
            "turns_by_model": by_model,
            "ledger": dict(self.facts),
        }

    def ideal_timeline(self) -> list[tuple[float, float]]:
        """``(seconds from start, cumulative ideal cost USD)`` after each turn."""
        start = min((r.at for r in self.records), default=0.0)
        points = ideal_timeline(self.turns, unit_rates(self.model))
        return [(at - start, cost) for at, cost in points]

    def timeline(self) -> list[tuple[float, float]]:
        """``(seconds from start, cumulative cost USD)`` after each request."""
        start = min((r.at for r in self.records), default=0.0)
        total = 0.0
        points = []
        for record in sorted(self.records, key=lambda r: r.at):
            total += record.cost_usd
            points.append((record.at - start, total))
        return points


def _usage_dict(usage: convo.Usage) -> dict[str, int]:
    return {
        "input": usage.input,
        "cache_read": usage.cache_read,
        "cache_write_5m": usage.cache_write_5m,
        "cache_write_1h": usage.cache_write_1h,
        "output": usage.output,
    }


def _itpm(usage: convo.Usage) -> int:
    # ITPM counts uncached input and cache writes; reads are free of it on this model.
    return usage.input + usage.cache_write


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def _usd(usage: convo.Usage, model: str) -> Decimal:
    cost = convo.price(usage, model).usd
    if cost is None:
        raise ValueError(f"no price known for {model!r}")
    return cost


def _routed_cost(records: Sequence[RequestRecord]) -> Decimal:
    """What *records* cost, each model's usage priced at its own rates."""
    by_model: dict[str, convo.Usage] = {}
    for record in records:
        model = str(record.model)
        by_model[model] = by_model.get(model, convo.Usage.zero()) + record.usage
    return sum((_usd(usage, model) for model, usage in by_model.items()), Decimal(0))


def _static_tokens(workload: Workload, tools: Sequence[Mapping[str, Any]]) -> int:
    """Tokens of the tools and system blocks (the prefix every request starts with)."""
    total = sum(tokens.block_tokens(dict(t)) for t in tools)
    return total + sum(tokens.estimate(text) for text in workload.system)


@attrs.define
class _Conversation:
    """The driver's view of one conversation: what any layout must send at each turn."""

    spec: Conversation
    messages: list[int] = attrs.field(factory=list)  # tokens of each history message
    generation: int = 0  # bumps at each turn, so stale keep-alive ticks are dropped
    next_turn: int = 0


class Bench:
    """One emulator (on a virtual clock) for many runs; reset between them.

    Args:
        overlap_s: Turns starting within this many virtual seconds of a wave's first turn
            join it (about the modelled time to first byte of a 10k-token write).
        hold_s: Real seconds the emulator holds back each response of a wave, plus
            ``hold_per_request_s`` per request in the wave: long enough for every request of
            the wave to reach the emulator before any response begins.

    Use as a context manager.

    .. versionadded:: 0.1
    """

    def __init__(
        self, *, overlap_s: float = 1.0, hold_s: float = 0.15, hold_per_request_s: float = 0.025
    ) -> None:
        self.overlap_s = overlap_s
        self.hold_s = hold_s
        self.hold_per_request_s = hold_per_request_s
        self.clock = VirtualClock()
        self._latency = LatencyModel()
        self._serving: Any = None
        self.emulator: RunningEmulator | None = None
        self._wave_mode: int | None = None
        self._reply_tokens: int | None = None  # the running workload's answer length

    def __enter__(self) -> Bench:
        self._serving = serve(clock=self.clock)
        self.emulator = self._serving.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.__exit__(*exc)

    def warm_up(self, strategies: Sequence[str]) -> None:
        """Run a tiny workload under each strategy and discard it, so first-use costs
        (imports, code paths run once) do not land in the first measured run's overhead.
        Strategies that cannot run are left for :meth:`run` to report."""
        from convo.bench.strategies import StrategyUnavailable
        from convo.bench.workloads import build

        tiny = build("chatbot", 0, sizes={"users": 2, "system_tokens": 1_500, "turns": (2, 2)})
        routed = build("routing", 0, sizes={"users": 2, "system_tokens": 4_500, "turns": (2, 2)})
        for strategy in strategies:
            with contextlib.suppress(StrategyUnavailable):
                self.run(routed if strategy in ROUTING_STRATEGIES else tiny, strategy)

    def _mode(self, wave: int) -> None:
        """Configure the emulator for a wave of *wave* requests (answer at once for 1)."""
        wave = max(1, wave)
        if self._wave_mode == wave:
            return
        assert self.emulator is not None
        config: dict[str, Any] = {}
        if self._reply_tokens is not None:
            config["reply_tokens"] = self._reply_tokens
        if wave > 1:
            hold = self.hold_s + self.hold_per_request_s * wave
            latency = {"base_s": hold, "prefill_uncached_s": 0.0}
            latency |= {"prefill_cached_s": 0.0, "decode_s": 0.0}
            self.emulator.configure(config | {"time_scale": 1.0, "latency": latency})
        else:
            self.emulator.configure(config | {"time_scale": 0.0})
        self._wave_mode = wave

    def run(
        self,
        workload: Workload,
        strategy: str,
        *,
        seed: int = 0,
        users: int | None = None,
        on_turn: Callable[[], None] | None = None,
    ) -> RunResult:
        """Replay *workload* under *strategy*; return what it cost and what it could have.

        Args:
            workload: What to send, and when.
            strategy: A name from :data:`convo.bench.STRATEGIES`.
            seed: The seed *workload* was drawn from (recorded in the result).
            users: The ``--users`` value it was drawn with (default: its conversations).
            on_turn: Called after every turn (a progress bar).

        Raises:
            ValueError: for an unknown strategy, or one that does not fit the workload (the
                routing workload takes the routing strategies, the others the rest).
            convo.bench.StrategyUnavailable: when the strategy's package is missing.
        """
        emulator = self.emulator
        assert emulator is not None, "use Bench as a context manager"
        routing = strategy in ROUTING_STRATEGIES
        if routing != bool(workload.tiers):
            kind = "the routing workload" if workload.tiers else f"workload {workload.name!r}"
            raise ValueError(
                f"strategy {strategy!r} does not fit {kind}; the routing workload takes "
                f"{', '.join(ROUTING_STRATEGIES)}, the others the caching strategies"
            )
        emulator.reset(config=True)
        self._wave_mode = None
        self._reply_tokens = workload.reply_tokens
        self._mode(1)
        self.clock.advance(7_200.0)  # clear of anything a previous run left in the registry
        origin = self.clock.now()
        wall = time.perf_counter()
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key=f"sk-bench-{strategy}")
        lock = threading.Lock()
        slept = [0.0]

        def sleep(seconds: float) -> None:  # retries and pacing wait in virtual time
            if seconds > 0:
                with lock:
                    self.clock.advance(seconds)
                    slept[0] += seconds

        build_runner = make_routing if routing else make
        runner = build_runner(strategy, workload, client, clock=self.clock.now, sleep=sleep)
        records: list[RequestRecord] = []
        logs: list[TurnLog] = []
        errors: list[str] = []
        states = [_Conversation(c) for c in workload.conversations]
        last_static: dict[int, float] = {}  # when each static prefix was last sent
        statics = {
            id(tools): _static_tokens(workload, tools)
            for tools in (workload.tools, workload.tools_after)
            if tools is not None
        }
        queue: list[tuple[float, int, str, int, int]] = []
        order = 0

        def push(at: float, kind: str, index: int, generation: int = 0) -> None:
            nonlocal order
            order += 1
            heapq.heappush(queue, (at, order, kind, index, generation))

        for index, state in enumerate(states):
            if state.spec.turns:
                push(origin + state.spec.turns[0].at, "turn", index)

        def catch_up(at: float) -> None:
            now = self.clock.now()
            if at > now:
                self.clock.advance(at - now)

        def record(conversation: str, sent: Sent, cpu_s: float) -> None:
            usage = sent.usage
            latency = self._latency.time_to_first_byte(
                uncached=usage.input + usage.cache_write, cached=usage.cache_read
            ) + self._latency.decode(usage.output)
            route = sent if isinstance(sent, Routed) else None
            model = route.model if route is not None else workload.model
            records.append(
                RequestRecord(
                    at=self.clock.now(),
                    conversation=conversation,
                    kind=sent.kind,
                    usage=usage,
                    cost_usd=float(_usd(usage, model)),
                    latency_s=latency,
                    cpu_s=cpu_s,
                    model=route.model if route is not None else None,
                    required=route.required if route is not None else None,
                    tier=route.tier if route is not None else None,
                )
            )

        def send(index: int) -> tuple[list[Sent], float, BaseException | None]:
            state = states[index]
            turn = state.spec.turns[state.next_turn]
            started = time.thread_time()
            try:
                sent = runner.turn(state.spec, turn.blocks, self.clock.now())
            except Exception as error:  # a strategy's failure is a result, not a crash
                return [], time.thread_time() - started, error
            return sent, time.thread_time() - started, None

        while queue:
            at, _, kind, index, generation = heapq.heappop(queue)
            if kind == "tick":
                state = states[index]
                if generation != state.generation:
                    continue
                catch_up(at)
                self._mode(1)
                started = time.thread_time()
                try:
                    sent = runner.tick(state.spec)
                except Exception as error:
                    errors.append(f"keep-alive: {type(error).__name__}: {error}")
                    sent = []
                for item in sent:
                    record(state.spec.id, item, time.thread_time() - started)
                limit = self._tick_limit(state, origin)
                if at + _TICK_S < limit:
                    push(at + _TICK_S, "tick", index, generation)
                continue
            wave = [index]
            while (
                queue
                and queue[0][2] == "turn"
                and queue[0][0] < at + self.overlap_s
                and queue[0][3] not in wave
            ):
                wave.append(heapq.heappop(queue)[3])
            catch_up(at)
            now = self.clock.now()
            static = id(workload.tools_at(now))
            # Concurrency changes the bill only through what requests share: the static
            # prefix (one user is never twice in a wave). While some request sent it less
            # than a 5m TTL ago, every strategy that caches it finds it live, sent in any
            # order; only a wave on a prefix that may be cold has to race for real.
            cold = now - last_static.get(static, -math.inf) >= _COLD_AFTER_S
            self._mode(len(wave) if cold else 1)
            if len(wave) == 1 or not cold:
                outcomes = [send(index) for index in wave]
            else:
                with concurrent.futures.ThreadPoolExecutor(len(wave)) as pool:
                    outcomes = list(pool.map(send, wave))
            last_static[static] = now
            for index, (sent, cpu_s, failure) in zip(wave, outcomes, strict=True):
                state = states[index]
                turn = state.spec.turns[state.next_turn]
                if failure is not None:
                    errors.append(f"{state.spec.id} turn {state.next_turn}: {failure}")
                else:
                    for item in sent:
                        record(state.spec.id, item, cpu_s if item.kind == "turn" else 0.0)
                    reply = sent[-1]
                    logs.append(self._log(workload, statics, state, turn.blocks, now, reply))
                state.next_turn += 1
                state.generation += 1
                if state.next_turn < len(state.spec.turns):
                    push(origin + state.spec.turns[state.next_turn].at, "turn", index)
                if runner.ticks:
                    push(now + _TICK_S, "tick", index, state.generation)
                if on_turn is not None:
                    on_turn()

        stats = emulator.stats()
        billed = convo.Usage(**stats["tokens"])
        client.close()
        ideal: convo.Usage | None = None
        ideal_usd: Decimal | None = None
        no_refresh: Decimal | None = None
        facts: dict[str, Any] = {}
        if isinstance(runner, RoutingStrategy):
            # Several models: each request priced at its own model's rates. The emulator's
            # bill has no split by model, so the records must add up to it exactly.
            cost = _routed_cost(records)
            seen = sum((r.usage for r in records), convo.Usage.zero())
            if _usage_dict(seen) != _usage_dict(billed):
                errors.append(f"requests seen {_usage_dict(seen)} ≠ billed {_usage_dict(billed)}")
            facts = runner.finish()
        else:
            # The ideal is a bound for one model's prices; a routing run has none.
            cost = _usd(billed, workload.model)
            rates = unit_rates(workload.model)
            ideal = ideal_usage(logs, rates)
            ideal_usd = _usd(ideal, workload.model)
            no_refresh = _usd(ideal_usage(logs, rates, refresh=False), workload.model)
        return RunResult(
            workload=workload.name,
            model=workload.model,
            strategy=strategy,
            seed=seed,
            users=users if users is not None else len(workload.conversations),
            records=tuple(records),
            turns=tuple(logs),
            billed=billed,
            cost_usd=cost,
            ideal=ideal,
            ideal_usd=ideal_usd,
            rate_limited=int(stats["requests"]["by_status"].get("429", 0)),
            slept_s=slept[0],
            errors=tuple(errors),
            wall_s=time.perf_counter() - wall,
            tiers=workload.tiers,
            planned={c.id: len(c.turns) for c in workload.conversations} if routing else {},
            facts=facts,
            ideal_no_refresh_usd=no_refresh,
        )

    @staticmethod
    def _tick_limit(state: _Conversation, origin: float) -> float:
        turns = state.spec.turns
        last = origin + turns[state.next_turn - 1].at if state.next_turn else origin
        limit = last + _ACTIVE_S + _TICK_S
        if state.next_turn < len(turns):
            limit = min(limit, origin + turns[state.next_turn].at)
        return limit

    @staticmethod
    def _log(
        workload: Workload,
        statics: Mapping[int, int],
        state: _Conversation,
        blocks: Sequence[Mapping[str, Any]],
        at: float,
        reply: Sent,
    ) -> TurnLog:
        """What this turn's prompt had to hold, as segments keyed by content and context."""
        tools = workload.tools_at(at)
        static = f"static:{id(tools)}"
        static_tokens = statics[id(tools)]
        conversation = state.spec
        segments = [(static, static_tokens)]
        if conversation.suffix is not None:
            segments.append(
                (f"suffix:{static}:{conversation.id}", tokens.estimate(conversation.suffix))
            )
        user = sum(tokens.block_tokens(dict(b)) for b in blocks)
        state.messages.append(user)
        segments.extend(
            (f"msg:{static}:{conversation.id}:{i}", n) for i, n in enumerate(state.messages)
        )
        state.messages.append(sum(tokens.block_tokens(dict(b)) for b in reply.content))
        return TurnLog(
            at=at,
            segments=tuple(segments),
            output=reply.usage.output,
            conversation=conversation.id,
        )
