"""convo's overhead over the bare ``anthropic`` SDK: per call, per conversation, concurrent.

Three measurements, each comparing convo with the raw SDK doing the same work, arms
interleaved in one run so a noisy machine slows both alike:

(a) **Mock transport.** Both arms use an ``anthropic.Anthropic`` built the same way, whose
    ``httpx2.MockTransport`` hands the request's bytes down a pipe to the emulator's core
    (``convo.emulator.Emulator.messages``) in a child process and answers with its
    ``Message`` (see :class:`EmulatorTransport`: the server's work stays off the client's
    thread, its CPU clock and its caches). The emulator's time is subtracted from the wall
    figure, so each figure is the client's own time for one call. (A fixed canned
    ``Message`` would be cheaper to serve, but its usage could not match what convo
    predicts, and every convo turn would then take the misprediction path; the emulator
    answers with the usage a real server would.)
    A 40,000-token system prompt; the convo arms *grow* their conversation to 10, 100 and
    1,000 turns by sending (so their trackers hold what a real session's would), then the
    next turns are timed, the arms taking turns in a random order each turn (fixed seed),
    so each arm is first, and follows each other arm, equally often. The raw arm starts
    from a copy of the grown history (same content objects) and keeps a ``cache_control``
    marker on the system prompt and on the newest user message, as a careful SDK user does.
    Reported, by the wall clock, by the calling thread's CPU clock (the CPU figure ignores
    time lost to other processes, the main noise on a shared machine, but also misses the
    ledger writer's thread), and by that CPU clock less the transport's own pipe I/O
    (``cpu_without_io``: the client's code alone, what a mock transport that copies nothing
    would see; a real transport copies the body out too): each arm's median client µs per
    call, convo's added µs per turn (paired with the raw call of the same turn) with the
    quartiles of those differences, added µs as a share of the raw call, and the ratios at
    1,000 turns to 10 turns of added µs and of each convo arm's own µs per call. Those
    ratios compare two phases of the run, minutes apart; the 1,000-turn phase also times
    convo on fresh 10-turn conversations in the same random order (see ``mock_size``), which
    gives the same ratio with both sides measured at the same moments. The heap is frozen
    and collected before each timed call, so no arm pays for garbage another left (see
    ``mock_size``).
    With ``--replay`` the same measure runs again in a fresh process on a mock transport
    that copies nothing (:class:`ReplayTransport`: each call gets the reply the emulator
    gave the same call in the first run, and the request's bytes are never read): the
    client's code alone, with no copy of the body out of the process and none of the
    cache misses that copy leaves behind. A real transport does copy the body (a socket
    write, like the pipe's), so the first run is what a user's process pays; the replay
    is what convo and the SDK themselves cost.
(b) **Loopback emulator**, served by another process: a 200-turn conversation, convo vs the
    raw SDK, turns interleaved; wall time per arm is the sum of its calls.
(c) **200 concurrent** ``AsyncSession``s vs 200 tasks on one raw ``AsyncAnthropic``, each a
    conversation of ``--turns`` turns (default 50, issue 15's measure) on the same prefix,
    against the loopback emulator. Every convo round sits between two raw rounds and its
    throughput is divided by their mean; ``--rounds`` convo rounds (default 4), and a
    ``ledger=False`` round after every second one. Reported: the median and the geometric
    mean of those ratios, and each one (a shared machine drifts by 10% or more between
    rounds, so a single pair says little).

convo is measured as a user gets it by default: the process-wide warm registry and rate
limiter, and the default SQLite ledger (in a temporary ``CONVO_HOME``, so nothing is written
to the user's data directory). The ``ledger=False`` arm shows what the ledger costs.

Run: ``python benchmarks/overhead.py [--quick] [--replay] [--markdown]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import multiprocessing
import os
import pickle
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The default ledger goes to a throwaway folder; set before convo opens it.
os.environ["CONVO_HOME"] = tempfile.mkdtemp(prefix="convo-overhead-")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anthropic
import httpx2

import convo
from convo.emulator import Emulator, EmulatorConfig, serve_process

MODEL = "claude-sonnet-4-6"
# 40,000 tokens by convo.tokens: 40,000 words of at most five letters.
SYSTEM = " ".join(("alpha", "beta", "gamma", "delta")[i % 4] for i in range(40_000))
API_KEY = "sk-bench"
MOCK_URL = "http://mock.invalid"
MAX_TOKENS = 1024
#: Timed turns per short conversation in the interleaved measure (see ``mock_size``).
SHORT_WINDOW = 3
#: The clocks of the mock measure: wall (less the emulator's time), this thread's CPU, and
#: that CPU less the transport's own pipe I/O (the client's code alone).
CLOCKS = ("wall", "cpu", "cpu_without_io")
# Limits far above anything this benchmark sends, so no arm ever waits on a limiter.
UNLIMITED = {"limits": {"default": {"rpm": 10**8, "itpm": 10**12, "otpm": 10**12}}}


def question(tag: str, i: int) -> str:
    """A user turn; *tag* and the fixed-width counter keep every conversation's content
    its own (so no arm reads what another wrote) at the same token count."""
    return f"Question {tag}{i:06d}: what about the next step in the plan we made?"


class RawConversation:
    """What a careful user of the bare SDK keeps: the messages, and two cache markers."""

    def __init__(self, history: Sequence[dict[str, Any]] = ()) -> None:
        self.system: Any = [
            {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
        ]
        self.messages: list[dict[str, Any]] = list(history)
        self._marked: dict[str, Any] | None = None

    def arguments(self, text: str) -> dict[str, Any]:
        """Append the user turn, move the rolling marker onto it, return the call's kwargs."""
        if self._marked is not None:
            self._marked.pop("cache_control", None)
        block = {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}
        self._marked = block
        self.messages.append({"role": "user", "content": [block]})
        return {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "system": self.system,
            "messages": self.messages,
        }

    def answered(self, message: Any) -> None:
        self.messages.append({"role": "assistant", "content": message.content})


# -- (a) mock transport -------------------------------------------------------------------


def _serve_pipe(requests: Any, replies: Any) -> None:
    """The child process of :class:`EmulatorTransport`: the emulator's core answering the
    requests that come down one pipe, on the other, each with how long it took (wall
    clock)."""
    emulator = Emulator(EmulatorConfig.from_dict(UNLIMITED))
    while True:
        try:
            headers = requests.recv()
        except EOFError:
            return
        content = requests.recv_bytes()
        started = time.perf_counter_ns()
        body = json.loads(content)
        plan = emulator.messages(headers, body)
        plan.begin()
        reply, reply_headers = json.dumps(plan.message).encode(), plan.headers
        # Freed before replying, while the client waits: freeing the parse of a long
        # request (tens of thousands of objects) while the client runs on the other core
        # would slow the client through the memory both cores share.
        del body, plan
        replies.send((reply_headers, time.perf_counter_ns() - started))
        replies.send_bytes(reply)


class EmulatorTransport:
    """A mock transport answered by the emulator's core in a child process, over a pipe.

    The server's work (parsing a request of up to 500 kB, hashing its blocks, keeping every
    prompt it has seen) happens in another process, so it neither counts in the calling
    thread's CPU time nor leaves that thread's caches and heap full of its data: hosted
    in-process it slowed every client step after it (even O(1) ones) by about 40% at 1,000
    turns. The client pays what a real transport makes it pay: the request's bytes are
    copied out (into the pipe, as into a socket), the reply's copied in. The server's wall
    time is subtracted from the wall figure; the pipe's round trip (tens of µs) is not.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        # Two one-way pipes with 1 MiB buffers: a request of up to ~600 kB goes in one
        # write, without the writer blocking (and being switched out) every 64 kB.
        requests_in, self._requests = context.Pipe(duplex=False)
        self._replies, replies_out = context.Pipe(duplex=False)
        for end in (self._requests, self._replies):
            with contextlib.suppress(OSError, AttributeError):  # not Linux: default size
                fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        self._process = context.Process(
            target=_serve_pipe, args=(requests_in, replies_out), daemon=True
        )
        self._process.start()
        requests_in.close()
        replies_out.close()
        self.server_ns = 0
        self.io_cpu_ns = 0
        #: Per client (in the order :meth:`client` made them), each call's request size and
        #: reply: what :class:`ReplayTransport` answers with.
        self.recorded: list[list[tuple[int, dict[str, str], bytes]]] = []

    def _answer(self, request: httpx2.Request, calls: list[Any]) -> httpx2.Response:
        cpu = time.thread_time_ns()
        self._requests.send(dict(request.headers))
        self._requests.send_bytes(request.content)
        headers, server_ns = self._replies.recv()
        content = self._replies.recv_bytes()
        self.server_ns += server_ns
        self.io_cpu_ns += time.thread_time_ns() - cpu
        calls.append((len(request.content), headers, content))
        return _response(headers, content)

    def close(self) -> None:
        """Stop the child process."""
        self._requests.close()
        self._replies.close()
        self._process.join(timeout=10)

    def client(self) -> anthropic.Anthropic:
        calls: list[tuple[int, dict[str, str], bytes]] = []
        self.recorded.append(calls)
        return _mock_client(lambda request: self._answer(request, calls))


def _response(headers: dict[str, str], content: bytes) -> httpx2.Response:
    return httpx2.Response(
        200, content=content, headers={**headers, "content-type": "application/json"}
    )


def _mock_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=API_KEY,
        base_url=MOCK_URL,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=httpx2.MockTransport(handler)),
    )


class ReplayTransport:
    """A mock transport that copies nothing: each call gets the reply the emulator gave the
    same call of the same client in an earlier run (:attr:`EmulatorTransport.recorded`).

    The run must make the same calls in the same order (the measure is deterministic: fixed
    seeds and texts). The request's bytes are never read, only their length, which is
    compared with the recorded one: a call whose request differs from the recorded one
    (a layout decision taken otherwise) is counted in :attr:`mismatches`, since its reply's
    usage may not be what convo predicted.
    """

    def __init__(self, recorded: list[list[tuple[int, dict[str, str], bytes]]]) -> None:
        self._recorded = iter(recorded)
        self.server_ns = 0
        self.io_cpu_ns = 0
        self.mismatches = 0

    def client(self) -> anthropic.Anthropic:
        calls = iter(next(self._recorded))

        def answer(request: httpx2.Request) -> httpx2.Response:
            size, headers, content = next(calls)
            self.mismatches += size != len(request.content)
            return _response(headers, content)

        return _mock_client(answer)

    def close(self) -> None:
        """Nothing to stop."""


def _timed(
    transport: Any, call: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[float, float, float, Any]:
    """Run *call*; return the microseconds it spent in the client, by the wall clock (minus
    the emulator's time), by this thread's CPU clock, and by that CPU clock less the
    transport's own pipe I/O; and its result.

    The last figure is the client's code alone (convo, the SDK, httpx): what a mock
    transport that copies nothing would measure. The bytes still have to be copied out by
    any real transport (a socket write, like the pipe's, costs in proportion to the body),
    so the CPU figure with the I/O is the one a user's process pays.

    The CPU figure leaves out time the thread spent preempted by other processes, which on
    a shared machine is most of the noise; it also leaves out work on other threads (the
    ledger's writer), which the wall figure catches whenever it lands in a timed call.
    """
    transport.server_ns = transport.io_cpu_ns = 0
    started, cpu = time.perf_counter_ns(), time.thread_time_ns()
    result = call(*args, **kwargs)
    cpu = time.thread_time_ns() - cpu
    wall = time.perf_counter_ns() - started - transport.server_ns
    return wall / 1000, cpu / 1000, (cpu - transport.io_cpu_ns) / 1000, result


def mock_size(
    transport: Any,
    prefix: convo.Prefix,
    *,
    turns: int,
    conversations: int,
    window: int,
    ledger_off: bool,
    tags: list[int],
    short: int | None = None,
) -> dict[str, Any]:
    """Time *window* turns after *turns* of history, over *conversations* conversations.

    With *short*, one more arm: convo (defaults) on conversations of *short* turns, each
    timed for :data:`SHORT_WINDOW` turns and then replaced by the next, grown beforehand.
    Timed in the same random order as the other arms, it measures convo's per-call time
    at *short* turns under the same conditions (the same process, heap and machine load
    at the same moments) as at *turns*: the ratio of the two is then convo's own growth
    with history, not a difference between two phases of the run.
    """
    arms = ["raw", "convo"] + (["convo_no_ledger"] if ledger_off else [])
    timed_arms = arms + (["convo_short"] if short else [])
    # A random order each turn (fixed seed): every arm goes first, and follows every other
    # arm, equally often. Order matters at this scale: the first call after the heap is
    # frozen costs several hundred µs more, and a call right after one of the same arm runs
    # on warm caches. (A fixed rotation started every conversation with the same arm.)
    shuffle = random.Random(turns).shuffle
    wall: dict[str, list[float]] = {arm: [] for arm in timed_arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in timed_arms}
    code: dict[str, list[float]] = {arm: [] for arm in timed_arms}  # CPU less transport I/O
    entries = 0
    for _ in range(conversations):
        tag = [next_tag(tags) for _ in arms]
        sessions = {
            "convo": convo.Session(prefix, client=transport.client(), max_tokens=MAX_TOKENS)
        }
        if ledger_off:
            sessions["convo_no_ledger"] = convo.Session(
                prefix, client=transport.client(), max_tokens=MAX_TOKENS, ledger=False
            )
        for i in range(turns):  # grow: untimed
            for n, (_, session) in enumerate(sessions.items(), start=1):
                session.send(question(tag[n], i))
        raw = RawConversation(sessions["convo"].history)
        raw_client = transport.client()
        shorts: list[tuple[convo.Session, str]] = []
        for _ in range(-(-window // SHORT_WINDOW) if short else 0):
            tag_short = next_tag(tags)
            session = convo.Session(prefix, client=transport.client(), max_tokens=MAX_TOKENS)
            for i in range(short or 0):
                session.send(question(tag_short, i))
            shorts.append((session, tag_short))
        # At 1,000 turns the three arms' histories are tens of thousands of objects, and a
        # full collection would land on whichever arm happens to be running. Freezing what
        # exists now keeps the grown state out of every collection, and a collection
        # before each call leaves it no debt from the call before: each arm pays for
        # collecting what it allocates itself.
        gc.collect()
        gc.freeze()
        for i in range(turns, turns + window):
            order = list(timed_arms)
            shuffle(order)
            for arm in order:
                gc.collect()
                if arm == "convo_short":
                    k = i - turns
                    session, tag_short = shorts[k // SHORT_WINDOW]
                    text = question(tag_short, (short or 0) + k % SHORT_WINDOW)
                    us, cpu_us, code_us, _ = _timed(transport, session.send, text)
                elif arm == "raw":
                    kwargs = raw.arguments(question(tag[0], i))
                    us, cpu_us, code_us, message = _timed(
                        transport, raw_client.messages.create, **kwargs
                    )
                    raw.answered(message)
                else:
                    text = question(tag[arms.index(arm)], i)
                    us, cpu_us, code_us, _ = _timed(transport, sessions[arm].send, text)
                wall[arm].append(us)
                cpu[arm].append(cpu_us)
                code[arm].append(code_us)
        gc.unfreeze()
        entries = max(entries, len(sessions["convo"].tracker.entries()))
    result: dict[str, Any] = {
        "samples": len(wall["raw"]),
        "tracker_entries": entries,
        "wall": _paired(wall, arms),
        "cpu": _paired(cpu, arms),
        "cpu_without_io": _paired(code, arms),
    }
    if short:
        result[f"convo_{short}_turns_interleaved"] = {
            clock: {
                "short_us": round(statistics.median(samples["convo_short"]), 1),
                "convo_us": round(statistics.median(samples["convo"]), 1),
                # Issue 15's measure, each side under the same conditions: convo's time per
                # call at *turns* over its time at *short* (medians; and the median of the
                # ratios of calls timed in the same round).
                "ratio": round(
                    statistics.median(samples["convo"]) / statistics.median(samples["convo_short"]),
                    3,
                ),
                "paired_ratio": round(
                    statistics.median(
                        c / s for c, s in zip(samples["convo"], samples["convo_short"], strict=True)
                    ),
                    3,
                ),
            }
            for clock, samples in (("wall", wall), ("cpu", cpu), ("cpu_without_io", code))
        }
    return result


def next_tag(tags: list[int]) -> str:
    tags[0] += 1
    return f"c{tags[0]:05d}-"


def _paired(samples: dict[str, list[float]], arms: list[str]) -> dict[str, Any]:
    raw = samples["raw"]
    result: dict[str, Any] = {"raw_us": round(statistics.median(raw), 1)}
    for arm in arms[1:]:
        mine = samples[arm]
        added = [c - r for c, r in zip(mine, raw, strict=True)]
        result[arm] = {
            "us": round(statistics.median(mine), 1),
            "added_us": round(statistics.median(added), 1),
            # The spread of the paired differences: on a shared machine single calls vary by
            # more than convo adds, so read the median against it.
            "added_us_p25_p75": [round(q, 1) for q in _quartiles(added)],
            "added_share": round(
                statistics.median(a / r for a, r in zip(added, raw, strict=True)), 3
            ),
            "ratio": round(statistics.median(c / r for c, r in zip(mine, raw, strict=True)), 3),
        }
    return result


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def run_mock(args: argparse.Namespace) -> dict[str, Any]:
    """The mock measure on the emulator's pipe; then, with ``--replay``, the same calls again
    in a fresh process answered by :class:`ReplayTransport` (no copy of the body)."""
    if args.replay_from:  # the replay run, in its own process
        with open(args.replay_from, "rb") as file:
            replay = ReplayTransport(pickle.load(file))
        result = _run_mock(replay, args)
        result["replay_mismatches"] = replay.mismatches
        return result
    transport = EmulatorTransport()
    try:
        result = _run_mock(transport, args)
    finally:
        transport.close()
    if args.replay:
        result["replayed"] = _replayed(transport.recorded, args)
    return result


def _replayed(recorded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Run the mock measure again in a new process (a fresh registry, pool and heap, as the
    first run had), answered from *recorded*."""
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as file:
        pickle.dump(recorded, file)
    try:
        command = [sys.executable, __file__, "--parts", "a", "--replay-from", file.name]
        command += ["--sizes", *map(str, args.sizes)]
        command += ["--quick"] * args.quick + ["--no-ledger-off"] * args.no_ledger_off
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(file.name)
    mock: dict[str, Any] = json.loads(out)["mock"]
    return mock


def _run_mock(transport: Any, args: argparse.Namespace) -> dict[str, Any]:
    prefix = convo.Prefix(model=MODEL, system=[SYSTEM], tools=[])
    tags = [0]
    # Warm the shared prefix (registry and emulator) so every measured conversation starts
    # as one does in a running service: the system prompt cached, the conversation new.
    convo.Session(prefix, client=transport.client(), ledger=False).send(question("warm-", 0))
    # history turns: (conversations, timed turns each). Each conversation is grown to its
    # size by sending, then timed for a few turns (few enough that the history stays within
    # ~5% of its size, except at 10 turns, where the prefix dwarfs the history anyway).
    plan = (
        {10: (15, 2), 100: (2, 10), 1000: (1, 20)}
        if args.quick
        else {10: (40, 3), 100: (6, 10), 1000: (1, 50)}
    )
    sizes = {}
    for turns, (conversations, window) in plan.items():
        if turns not in args.sizes:
            continue
        started = time.perf_counter()
        sizes[turns] = mock_size(
            transport,
            prefix,
            turns=turns,
            conversations=conversations,
            window=window,
            ledger_off=not args.no_ledger_off,
            tags=tags,
            short=10 if turns == 1000 else None,
        )
        sizes[turns]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"(a) {turns} turns: {sizes[turns]}", file=sys.stderr)
    result: dict[str, Any] = {"prefix_tokens": prefix.tokens, "by_history_turns": sizes}
    if 10 in sizes and 1000 in sizes:
        result["added_1000_over_10"] = {
            clock: {
                arm: round(
                    sizes[1000][clock][arm]["added_us"] / sizes[10][clock][arm]["added_us"], 2
                )
                for arm in sizes[10][clock]
                if isinstance(sizes[10][clock][arm], dict)
            }
            for clock in CLOCKS
        }
        # Issue 15's measure: each convo arm's own time per call, 1,000 turns over 10.
        result["per_call_1000_over_10"] = {
            clock: {
                arm: round(sizes[1000][clock][arm]["us"] / sizes[10][clock][arm]["us"], 2)
                for arm in sizes[10][clock]
                if isinstance(sizes[10][clock][arm], dict)
            }
            for clock in CLOCKS
        }
    return result


# -- (b) loopback, one long conversation ------------------------------------------------------


def run_loopback(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    prefix = convo.Prefix(model=MODEL, system=[SYSTEM], tools=[])
    arms = ["raw", "convo"] + ([] if args.no_ledger_off else ["convo_no_ledger"])
    runs = []
    for run in range(1 if args.quick else 2):
        with anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client:
            sessions: dict[str, Any] = {
                "convo": convo.Session(prefix, client=client, max_tokens=MAX_TOKENS),
                "convo_no_ledger": convo.Session(
                    prefix, client=client, max_tokens=MAX_TOKENS, ledger=False
                ),
            }
            raw = RawConversation()
            # The system prompt cached first, as in a running service; then every arm's
            # conversation is its own.
            client.messages.create(**RawConversation().arguments(question(f"w{run}-", 0)))
            samples: dict[str, list[float]] = {arm: [] for arm in arms}
            for i in range(args.loopback_turns):
                order = arms[(i + run) % len(arms) :] + arms[: (i + run) % len(arms)]
                for arm in order:
                    text = question(f"b{run}{arm[:1]}{len(arm):02d}-", i)
                    started = time.perf_counter_ns()
                    if arm == "raw":
                        raw.answered(client.messages.create(**raw.arguments(text)))
                    else:
                        sessions[arm].send(text)
                    samples[arm].append((time.perf_counter_ns() - started) / 1e9)
        totals = {arm: round(sum(s), 3) for arm, s in samples.items()}
        runs.append(
            {
                "seconds": totals,
                "wall_ratio": {arm: round(totals[arm] / totals["raw"], 3) for arm in arms[1:]},
                "median_turn_ratio": {
                    arm: round(
                        statistics.median(
                            c / r for c, r in zip(samples[arm], samples["raw"], strict=True)
                        ),
                        3,
                    )
                    for arm in arms[1:]
                },
            }
        )
        print(f"(b) run {run}: {runs[-1]}", file=sys.stderr)
    return {"turns": args.loopback_turns, "runs": runs}


# -- (c) concurrent AsyncSessions ------------------------------------------------------------


async def _round(base_url: str, arm: str, *, tag: str, sessions: int, turns: int) -> dict[str, Any]:
    prefix = convo.Prefix(model=MODEL, system=[SYSTEM], tools=[])
    async with anthropic.AsyncAnthropic(
        base_url=base_url, api_key=API_KEY, max_retries=0
    ) as client:

        async def raw_worker(w: int) -> None:
            conversation = RawConversation()
            for i in range(turns):
                text = question(f"{tag}{w:04d}-", i)
                conversation.answered(await client.messages.create(**conversation.arguments(text)))

        async def convo_worker(w: int) -> None:
            session = convo.AsyncSession(
                prefix,
                client=client,
                max_tokens=MAX_TOKENS,
                ledger=None if arm == "convo" else False,
            )
            for i in range(turns):
                await session.send(question(f"{tag}{w:04d}-", i))

        worker = raw_worker if arm == "raw" else convo_worker
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(sessions)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    requests = sessions * turns
    return {
        "arm": arm,
        "requests": requests,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 1),
        "client_cpu_s": round(cpu, 3),
    }


async def run_concurrent(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    arms = ["convo"] + ([] if args.no_ledger_off else ["convo_no_ledger"])
    # Every convo round sits between two raw rounds and is compared with their mean. The
    # machine's speed drifts by 10% or more over minutes (other tenants), so one pair says
    # little: the default arm gets --rounds rounds, the ledger=False arm one per two.
    pattern = ["raw"]
    for n in range(args.rounds):
        pattern += ["convo", "raw"]
        if "convo_no_ledger" in arms and (n % 2 == 1 or args.rounds == 1):
            pattern += ["convo_no_ledger", "raw"]
    rounds = []
    for n, arm in enumerate(pattern):
        rounds.append(
            await _round(base_url, arm, tag=f"r{n:02d}-", sessions=args.sessions, turns=args.turns)
        )
        print(f"(c) {rounds[-1]}", file=sys.stderr)
    result: dict[str, Any] = {"sessions": args.sessions, "turns_each": args.turns, "rounds": rounds}
    for arm in arms:
        ratios, cpu = [], []
        for i, r in enumerate(rounds):
            if r["arm"] != arm:
                continue
            raw = [rounds[i - 1], rounds[i + 1]]
            ratios.append(r["requests_per_s"] / statistics.mean(x["requests_per_s"] for x in raw))
            cpu.append(r["client_cpu_s"] / statistics.mean(x["client_cpu_s"] for x in raw))
        result[arm] = {
            "throughput_ratio_median": round(statistics.median(ratios), 3),
            "throughput_ratio_geometric_mean": round(statistics.geometric_mean(ratios), 3),
            "throughput_ratios": [round(x, 3) for x in ratios],
            "client_cpu_ratio_median": round(statistics.median(cpu), 3),
        }
    return result


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "anthropic": anthropic.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _mock_markdown(mock: dict[str, Any], title: str) -> list[str]:
    lines = []
    for clock in CLOCKS:
        lines += [
            f"{title}, client {clock} time per call (medians):",
            "",
            "| history (turns) | calls | raw SDK µs | convo µs | added µs | added / SDK "
            "| added µs p25–p75 | ledger=False added µs | ledger=False added / SDK |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for turns, size in mock["by_history_turns"].items():
            r = size[clock]
            off = r.get("convo_no_ledger", {})
            low, high = r["convo"]["added_us_p25_p75"]
            lines.append(
                f"| {turns} | {size['samples']} | {r['raw_us']:.0f} | {r['convo']['us']:.0f} "
                f"| {r['convo']['added_us']:.0f} | {r['convo']['added_share']:.1%} "
                f"| {low:.0f} to {high:.0f} "
                f"| {off.get('added_us', float('nan')):.0f} "
                f"| {off.get('added_share', float('nan')):.1%} |"
            )
        lines.append("")
    if "added_1000_over_10" in mock:
        lines.append(f"added µs, 1,000 turns over 10 turns: {mock['added_1000_over_10']}")
        lines.append(f"µs per call, 1,000 turns over 10 turns: {mock['per_call_1000_over_10']}")
    interleaved = mock["by_history_turns"].get(1000, mock["by_history_turns"].get("1000", {}))
    interleaved = interleaved.get("convo_10_turns_interleaved")
    if interleaved:
        lines.append(f"µs per call, 1,000 turns over 10 turns, timed interleaved: {interleaved}")
    lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    mock = report.get("mock")
    if mock:
        lines += _mock_markdown(mock, "Mock transport (the emulator over a pipe)")
        if "replayed" in mock:
            replayed = mock["replayed"]
            lines += _mock_markdown(
                replayed,
                "Mock transport that copies nothing (replayed replies; "
                f"{replayed.get('replay_mismatches')} requests differed from the recorded run)",
            )
    loop = report.get("loopback")
    if loop:
        lines += [
            "",
            f"| {loop['turns']}-turn conversation on loopback | run | raw s | convo s "
            "| wall ratio | median turn ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for n, run in enumerate(loop["runs"]):
            for arm, ratio in run["wall_ratio"].items():
                lines.append(
                    f"| {arm} | {n} | {run['seconds']['raw']} | {run['seconds'][arm]} "
                    f"| {ratio} | {run['median_turn_ratio'][arm]} |"
                )
    conc = report.get("concurrent")
    if conc:
        lines += [
            "",
            f"| {conc['sessions']} concurrent sessions × {conc['turns_each']} turns "
            "| throughput / raw (median) | geometric mean | per round | client CPU / raw |",
            "|---|---:|---:|---|---:|",
        ]
        for arm in ("convo", "convo_no_ledger"):
            if arm in conc:
                r = conc[arm]
                lines.append(
                    f"| {arm} | {r['throughput_ratio_median']} "
                    f"| {r['throughput_ratio_geometric_mean']} | {r['throughput_ratios']} "
                    f"| {r['client_cpu_ratio_median']} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--parts", default="abc", help="which measurements to run: any of a, b, c")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10, 100, 1000], help="(a) history sizes"
    )
    parser.add_argument("--loopback-turns", type=int, default=200, help="(b) turns")
    parser.add_argument("--sessions", type=int, default=200, help="(c) concurrent sessions")
    parser.add_argument(
        "--turns",
        type=int,
        default=None,
        help="(c) turns per session (default 50; 10 with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="(c) rounds of the default convo arm, each between two raw rounds "
        "(default 4; 1 with --quick)",
    )
    parser.add_argument("--no-ledger-off", action="store_true", help="skip the ledger=False arm")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="(a) again, answered from the first run's replies without copying the body",
    )
    parser.add_argument("--replay-from", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.turns is None:
        args.turns = 10 if args.quick else 50
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    report: dict[str, Any] = {
        "benchmark": "overhead",
        "machine": machine(),
        "configuration": "convo defaults: process-wide registry and limiter, default SQLite "
        "ledger in a temporary CONVO_HOME",
        "quick": args.quick,
    }
    if "a" in args.parts:
        report["mock"] = run_mock(args)
    if "b" in args.parts or "c" in args.parts:
        with (
            serve_process() as server,
            anthropic.Anthropic(
                base_url=server.base_url, api_key=API_KEY, max_retries=0
            ) as control,
        ):
            control.put("/_emulator/config", body=UNLIMITED, cast_to=object)
            if "b" in args.parts:
                report["loopback"] = run_loopback(server.base_url, args)
            if "c" in args.parts:
                report["concurrent"] = asyncio.run(run_concurrent(server.base_url, args))
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if args.markdown:
        print()
        print(markdown(report))


if __name__ == "__main__":
    main()
