"""A terminal chatbot: one conversation, each reply followed by its cache outcome and cost.

Type a message per line; an empty line or end of input ends the chat. With ``--store``
and ``--conversation`` the conversation is saved after every turn and picked up where it
was left by the next run (``convo.store``).

    python examples/chatbot.py                          # against an emulator in-process
    python examples/chatbot.py --real                   # the real API (ANTHROPIC_API_KEY)
    printf 'hi\\nmore\\n' | python examples/chatbot.py   # scripted
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal

import anthropic

import convo
from convo.store import SQLiteStore

# The emulator accepts any key; a key in the environment is used as it would be for real
# (and never printed).
EMULATOR_KEY = os.environ.get("ANTHROPIC_API_KEY") or "sk-ant-example"

PREFIX = convo.Prefix(
    model="claude-sonnet-4-6",
    system=["You are a patient tutor for Python beginners. Answer briefly. " * 150],
)


def outcome(reply: convo.Reply) -> str:
    """One line per turn: the reason, what was read and written, the cost."""
    usage = reply.usage
    cost = f"${reply.cost.usd:.5f}" if reply.cost.usd is not None else "unpriced"
    return (
        f"  [{reply.reason}: read {usage.cache_read}, wrote {usage.cache_write}, "
        f"uncached {usage.input}, {cost}]"
    )


def chat(send: Callable[[str], convo.Reply], lines: Iterator[str], out: list[convo.Reply]) -> None:
    for line in lines:
        text = line.strip()
        if not text:
            break
        reply = send(text)
        out.append(reply)
        print(f"claude: {reply.text}")
        print(outcome(reply))


def summary(replies: list[convo.Reply]) -> str:
    """Writes, reads, hit rate and cost over the chat."""
    read = sum(r.usage.cache_read for r in replies)
    total = sum(r.usage.total_input for r in replies) or 1
    cost = sum((r.cost.usd or Decimal(0) for r in replies), Decimal(0))
    return (
        f"turns: {len(replies)}, cache writes: {sum(1 for r in replies if r.usage.cache_write)}, "
        f"cache reads: {sum(1 for r in replies if r.usage.cache_read)}\n"
        f"hit rate: {read / total:.1%} of input tokens, cost: ${cost:.4f}"
    )


@contextlib.contextmanager
def client_for(real: bool) -> Iterator[anthropic.Anthropic]:
    if real:
        with anthropic.Anthropic() as client:
            yield client
        return
    with (
        convo.emulator.serve() as running,
        anthropic.Anthropic(base_url=running.base_url, api_key=EMULATOR_KEY) as client,
    ):
        yield client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the real API")
    parser.add_argument("--store", help="SQLite file to keep the conversation in")
    parser.add_argument("--conversation", default="terminal", help="conversation id")
    args = parser.parse_args()
    replies: list[convo.Reply] = []
    with client_for(args.real) as client:
        if args.store:
            store = SQLiteStore(args.store)

            def send(text: str) -> convo.Reply:
                # Restored and saved around every turn, as a stateless backend would.
                with store.session(args.conversation, PREFIX, client=client, ledger=False) as s:
                    return s.send(text)

            chat(send, iter(sys.stdin), replies)
        else:
            chat(convo.Session(PREFIX, client=client, ledger=False).send, iter(sys.stdin), replies)
    print(summary(replies))


if __name__ == "__main__":
    main()
