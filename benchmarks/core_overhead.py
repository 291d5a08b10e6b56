"""Per-turn cost of the pure core: render + fingerprint + predict, by history length.

A 10k-token prefix; the history is grown to 10, 100 and 1000 turns, then each measured
turn appends a user message (hashing only its blocks), renders the request and predicts
its cache use. ``observe`` and the assistant reply are timed separately, so the headline
figure is exactly render + fingerprint + predict. Prints a Markdown table.

Run: ``python benchmarks/core_overhead.py [--turns 300]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import attrs

from convo.layout import History, Layout, Prefix
from convo.tracker import CacheTracker, Prediction

MODEL = "claude-sonnet-4-6"


@attrs.frozen
class _Usage:
    input: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int


def _usage(p: Prediction) -> _Usage:
    # What the emulator reports when the prediction is right (it always is there).
    return _Usage(p.input, p.cache_read, p.cache_write_5m, p.cache_write_1h)


def _user(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"Question {i}: what about the next step in the plan?"}


def _assistant(i: int) -> dict[str, Any]:
    text = f"Answer {i}: here is a reply of a few dozen words about the plan and its steps."
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def measure(history_turns: int, timed_turns: int, repeats: int) -> dict[str, float]:
    """Return median microseconds per turn at *history_turns* of history.

    Each repeat builds a fresh history of that length and times *timed_turns* turns on
    it, so the history stays within a few percent of the stated length.
    """
    core: list[float] = []
    observe: list[float] = []
    blocks = tokens = 0
    for _ in range(repeats):
        b, tokens = _run(history_turns, timed_turns, core, observe)
        blocks = max(blocks, b)
    return {
        "core_us": statistics.median(core),
        "observe_us": statistics.median(observe),
        "prefix_tokens": tokens,
        "blocks": blocks,
    }


def _run(
    history_turns: int, timed_turns: int, core: list[float], observe: list[float]
) -> tuple[int, int]:
    now = [1_000.0]
    prefix = Prefix(model=MODEL, system=["rules " * 10_000], tools=[])
    layout = Layout(prefix, suffix="User: Ada, plan: pro", suffix_placement="message")
    tracker = CacheTracker(clock=lambda: now[0])
    history = History([_user(0)])
    for i in range(history_turns):
        history.append(_assistant(i))
        history.append(_user(i + 1))
    # Warm the tracker so measured turns are the steady state (a read and a write).
    prediction = tracker.predict(layout.render(history))
    tracker.observe(prediction, _usage(prediction))
    first_blocks = len(layout.render(history).fingerprint)
    for i in range(timed_turns):
        now[0] += 1.0
        start = time.perf_counter_ns()
        history.append(_assistant(history_turns + i))
        history.append(_user(history_turns + i + 1))
        request = layout.render(history)
        prediction = tracker.predict(request)
        middle = time.perf_counter_ns()
        outcome = tracker.observe(prediction, _usage(prediction))
        end = time.perf_counter_ns()
        assert outcome.reason == "hit", outcome
        core.append((middle - start) / 1000)
        observe.append((end - middle) / 1000)
    return first_blocks, prefix.tokens


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=20, help="measured turns per repeat")
    parser.add_argument("--repeats", type=int, default=15, help="fresh histories per size")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )
    print()
    print(
        "| history (turns) | blocks at start "
        "| render+fingerprint+predict (median µs) | observe (median µs) |"
    )
    print("|---:|---:|---:|---:|")
    results = {}
    for size in (10, 100, 1000):
        r = measure(size, args.turns, args.repeats)
        results[size] = r
        print(f"| {size} | {r['blocks']} | {r['core_us']:.1f} | {r['observe_us']:.1f} |")
    ratio = results[1000]["core_us"] / results[10]["core_us"]
    print()
    print(f"prefix: {results[10]['prefix_tokens']} tokens; 1000-turn / 10-turn ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
