"""``convo chat``: talk to Claude through a Session, with the cache outcome of every turn.

Without ``ANTHROPIC_API_KEY`` (or with ``--emulator``) the chat runs on convo's embedded
emulator, which answers with placeholder text but caches, bills and streams as the API
does. Each reply streams as it arrives and is followed by one status line: the cache
reason, tokens read and written as predicted/observed, uncached input, output, cost, and
how long the cached prefix lives. Lines starting with ``/`` are commands (``/help``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from convo.cli.common import data_path, mmss, usd
from convo.cli.errors import one_line

__all__ = ["chat"]

#: About 1,340 tokens: past the 1,024-token cache minimum of the Sonnet models (the
#: default) and most Opus ones, so turn 2 reads the cache. Models whose minimum is 2,048
#: or 4,096 (Haiku 4.5, some Opus) say so at start; give them a longer --system FILE.
DEFAULT_SYSTEM = resources.files("convo.cli").joinpath("default_system.txt").read_text("utf-8")

# The embedded emulator streams at a visible pace (about 50 tokens a second) rather than
# all at once, so a person sees the reply arrive as it would from the API.
_EMULATOR_CONFIG: dict[str, Any] = {
    "time_scale": 1.0,
    "reply_tokens": 48,
    "latency": {
        "base_s": 0.05,
        "prefill_uncached_s": 0.0,
        "prefill_cached_s": 0.0,
        "decode_s": 0.02,
    },
}

HELP = """\
/help         this list
/stats        what this chat has used: requests, hit rates, tokens, cost
/warm         write the system prompt to the cache now, if cold or expiring
/report       this chat's summary from the ledger (everything: convo report)
/system FILE  use FILE as the system prompt: shows the bust, then asks
/quit         end the chat (so does Ctrl-D); Ctrl-C stops a reply mid-stream
After each reply: the cache reason; read and write, as predicted/observed
tokens; in (uncached input); out (output); cost; TTL (how long the cached
prompt lives)."""


def _has_key() -> bool:
    return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))


@contextlib.contextmanager
def _backend(use_emulator: bool, config_path: Path | None) -> Iterator[tuple[Any, Any]]:
    """Yield (client, clock): the real API from the environment, or the embedded emulator."""
    import time

    import anthropic

    if not use_emulator:
        with anthropic.Anthropic() as client:  # ANTHROPIC_API_KEY from the environment
            yield client, time.time
        return
    from convo.emulator import EmulatorConfig, load_config, serve

    try:
        config = (
            load_config(config_path) if config_path else EmulatorConfig.from_dict(_EMULATOR_CONFIG)
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--emulator-config") from error
    with (
        serve(config) as emu,
        anthropic.Anthropic(base_url=emu.base_url, api_key="sk-ant-chat") as client,
    ):
        yield client, emu.emulator.clock.now


class _Wrap:
    """Word-wrap streamed text to the terminal's width as it arrives (a word is held back
    until it ends, so it is never split across lines)."""

    def __init__(self, width: int) -> None:
        self.width = max(20, width)
        self.column = 0
        self.word = ""

    def _word(self) -> str:
        word, self.word = self.word, ""
        if not word:
            return ""
        if self.column and self.column + 1 + len(word) > self.width:
            self.column = len(word)
            return "\n" + word
        sep = " " if self.column else ""
        self.column += len(sep) + len(word)
        return sep + word

    def feed(self, text: str) -> str:
        out = []
        for char in text:
            if char == "\n":
                out.append(self._word() + "\n")
                self.column = 0
            elif char == " ":
                out.append(self._word())
            else:
                self.word += char
        return "".join(out)

    def end(self) -> str:
        return self._word()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


class _Chat:
    """The read-send-show loop and its slash commands, around one Session."""

    def __init__(
        self, session: Any, *, console: Console, ledger: Any, clock: Any, max_tokens: int
    ) -> None:
        from convo.session.reply import Stats

        self.session = session
        self.console = console
        self.ledger = ledger
        self.clock = clock
        self.max_tokens = max_tokens
        self.stats = Stats()  # across /system switches, which start a new Session
        self.stopped: list[Any] = []  # the billed usage of replies stopped mid-stream
        self.tty = sys.stdin.isatty()

    # -- what the person sees -------------------------------------------------------------

    def ttl_left(self) -> str:
        """How long the cached prefix lives: ``4:59``, ``cold`` or ``expired``."""
        state = self.session._core.registry.state(self.session.warm_key)
        if state is None:
            return "cold"
        left = state.expires_at - self.clock()
        return mmss(left) if left > 0 else "expired"

    def status(self, reply: Any) -> str:
        """The line after a reply, broken between its parts (never inside one) to fit."""
        cache, usage = reply.cache, reply.usage
        p = cache.predicted
        colour = "green" if reply.reason == "hit" else "yellow"
        reason = reply.reason + (f" ({cache.detail})" if cache.detail else "")
        parts = [
            (f"[{colour}]{escape(reason)}[/]", reason),
            *(
                (f"[dim]{text}[/]", text)
                for text in (
                    f"read {p.cache_read:,}/{usage.cache_read:,}",
                    f"write {p.cache_write:,}/{usage.cache_write:,}",
                    f"in {usage.input:,}",
                    f"out {usage.output:,}",
                    usd(reply.cost.usd),
                    f"TTL {self.ttl_left()}",
                )
            ),
        ]
        if not cache.exact:
            parts.append(("[red]prediction off[/]", "prediction off"))
        lines: list[str] = []
        width = 0
        for markup, plain in parts:
            if lines and width + 2 + len(plain) > self.console.width:
                lines.append("\n")
                width = 0
            elif lines:
                lines.append("  ")
                width += 2
            lines.append(markup)
            width += len(plain)
        return "".join(lines)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    # -- the loop --------------------------------------------------------------------------

    def read(self) -> str:
        if self.tty:
            return input(f"you [{self.ttl_left()}]> ")
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    def run(self) -> None:
        while True:
            try:
                line = self.read().strip()
            except EOFError:
                if self.tty:
                    click.echo()  # the summary goes on a line of its own
                break
            except KeyboardInterrupt:
                click.echo()
                self.say("[dim](Ctrl-D or /quit ends the chat)[/]")
                continue
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    break
                continue
            self.turn(line)
        self.summary()

    def turn(self, text: str) -> None:
        import anthropic

        import convo

        out = sys.stdout
        wrap = _Wrap(self.console.width if self.tty else 10**9)
        try:
            with self.session.stream(text) as stream:
                for piece in stream.text_stream:
                    out.write(wrap.feed(piece))
                    out.flush()
            out.write(wrap.end() + "\n")
            out.flush()
        except convo.StreamInterrupted as cut:
            out.write(wrap.end() + "\n")
            self.stopped.append(cut.usage or convo.Usage.zero())
            self.say(
                f"[yellow]stopped after {len(cut.partial_text):,} characters[/] [dim]"
                "(billed usage recorded; this turn is left out of the history)[/]"
            )
            return
        except KeyboardInterrupt:
            out.write("\n")
            self.say("[yellow]cancelled before the reply began[/] [dim](not in the history)[/]")
            return
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError):
            raise
        except (convo.ConvoError, anthropic.APIError, ValueError) as error:
            if "could not reach" in one_line(error):
                raise  # nothing later would get through either
            out.write("\n")
            self.say(f"[red]error:[/] {escape(one_line(error))}")
            return
        reply = stream.reply
        self.stats = self.stats.add(reply)
        self.say(self.status(reply))

    # -- slash commands --------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name in ("/help", "/?"):
            self.say(escape(HELP))
        elif name == "/stats":
            self.show_stats()
        elif name == "/warm":
            self.warm()
        elif name == "/report":
            self.report()
        elif name == "/system":
            self.switch_system(argument)
        else:
            self.say(f"unknown command {escape(name)}; /help lists them")
        return None

    def show_stats(self) -> None:
        from rich.table import Table

        s = self.stats
        if not s.requests:
            self.say("nothing sent yet")
            return
        u = s.usage
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(justify="right")
        rows = [
            ("requests (turns and warms)", f"{s.requests:,}"),
            ("token hit rate (read / all input)", _rate(s.token_hit_rate)),
            ("request hit rate", _rate(s.request_hit_rate)),
            ("cache read / write tokens", f"{u.cache_read:,} / {u.cache_write:,}"),
            ("uncached input / output tokens", f"{u.input:,} / {u.output:,}"),
            ("cost / saved by caching", f"{usd(s.cost_usd)} / {usd(s.saved_usd)}"),
            ("reasons", ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items()))),
            ("cached prompt lives", self.ttl_left()),
        ]
        for name, value in rows:
            table.add_row(name, value)
        self.console.print(table)

    def warm(self) -> None:
        import convo

        try:
            # Asked for at the prompt: a cold prefix is written (time to first token).
            reply = self.session.warm(latency=True)
        except convo.ConvoError as error:
            self.say(f"[red]error:[/] {escape(one_line(error))}")
            return
        if reply is None:
            self.say(f"nothing to warm: the system prompt is cached (TTL {self.ttl_left()})")
            return
        self.stats = self.stats.add(reply)
        self.say(
            f"warmed: wrote {reply.usage.cache_write:,} tokens for {usd(reply.cost.usd)}; "
            f"TTL {self.ttl_left()}"
        )

    def report(self) -> None:
        from convo.cli.report import build_report, render_summary

        self.ledger.flush()
        data = build_report(self.ledger, session=self.session.session_id)
        render_summary(data, self.console, title=f"This chat in {self.ledger.where}")

    def switch_system(self, argument: str) -> None:
        import convo
        from convo.layout import Layout
        from convo.pricing import price

        if not argument:
            self.say("usage: /system FILE (a text file holding the new system prompt)")
            return
        path = Path(argument).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", convo.PrefixTooShortWarning)
                prefix = convo.Prefix(
                    model=self.session.prefix.model, system=[text], ttl=self.session.prefix.ttl
                )
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
            self.say(f"[red]cannot use {escape(str(path))}:[/] {escape(one_line(error))}")
            return
        for warning in caught:
            self.say(f"[dim]note: {escape(str(warning.message))}[/]")
        probe = [*self.session.history, {"role": "user", "content": "(next message)"}]
        tracker = self.session.tracker
        before = tracker.predict(Layout(self.session.prefix).render(probe))
        after = tracker.predict(Layout(prefix).render(probe))

        def cost(p: Any) -> str:
            usage = convo.Usage(
                input=p.input,
                cache_read=p.cache_read,
                cache_write_5m=p.cache_write_5m,
                cache_write_1h=p.cache_write_1h,
                output=0,
            )
            return usd(price(usage, prefix.model).usd)

        verdict = "keeps the cache" if after.reason == "hit" else f"busts the cache: {after.reason}"
        self.say(f"{escape(str(path))} ({prefix.tokens:,} tokens) {verdict}")
        self.say(
            f"next turn's input, predicted: read {after.cache_read:,}, write "
            f"{after.cache_write:,}, in {after.input:,}: {cost(after)} "
            f"(unchanged: read {before.cache_read:,}, write {before.cache_write:,}: "
            f"{cost(before)})"
        )
        try:
            apply = click.confirm("apply it?", default=False)
        except click.Abort:  # Ctrl-C or Ctrl-D at the question: a no, and the chat goes on
            click.echo()
            apply = False
        if not apply:
            self.say("kept the current system prompt")
            return
        old = self.session
        self.session = convo.Session(
            prefix,
            client=old._client,
            ledger=self.ledger,
            registry=old._core.registry,
            clock=self.clock,
            max_tokens=self.max_tokens,
            messages=old.history,
            session_id=old.session_id,
            conversation_id=old.conversation_id,
            _tracker=tracker,
        )
        self.say("system prompt replaced; the next turn pays the write above")

    def summary(self) -> None:
        from convo.pricing import price

        s = self.stats
        if not s.requests and not self.stopped:
            self.say(f"[dim]nothing sent; ledger {self.ledger.where}[/]")
            return
        total = s.cost_usd
        for usage in self.stopped:  # billed too, so counted in the cost
            cost = price(usage, self.session.prefix.model).usd
            total = None if total is None or cost is None else total + cost
        stopped = f" ({len(self.stopped)} stopped)" if self.stopped else ""
        rate = "-" if s.token_hit_rate is None else f"{s.token_hit_rate:.0%}"
        self.say(
            f"[dim]{s.requests + len(self.stopped)} requests{stopped}, token hit rate {rate}, "
            f"{usd(total)} (saved {usd(s.saved_usd)}); ledger {self.ledger.where}[/]"
        )


@click.command(short_help="Chat with Claude (or the emulator); see each turn's cache use.")
@click.option("--model", default="claude-sonnet-4-6", show_default=True)
@click.option(
    "--system",
    "system_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file holding the system prompt (cached). Default: a built-in one.",
)
@click.option("--ttl", type=click.Choice(["5m", "1h"]), default="5m", show_default=True)
@click.option("--max-tokens", default=1024, show_default=True, type=click.IntRange(1))
@click.option(
    "--emulator/--api",
    default=None,
    help="Force the embedded emulator or the real API. Default: the API when "
    "ANTHROPIC_API_KEY is set, else the emulator.",
)
@click.option(
    "--emulator-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON or TOML emulator config (latency, faults, reply length), as for "
    "`convo emulator serve --config`.",
)
@click.option(
    "--ledger",
    "ledger_url",
    default=None,
    help="Ledger path or URL. Default: convo's ledger on the API; emulator.sqlite3 in "
    "convo's data directory on the emulator (never mixed with real spend).",
)
def chat(
    model: str,
    system_file: Path | None,
    ttl: str,
    max_tokens: int,
    emulator: bool | None,
    emulator_config: Path | None,
    ledger_url: str | None,
) -> None:
    """Chat on the terminal; each reply is followed by its cache outcome and cost.

    Type a message and press Enter. /help lists the commands; Ctrl-C stops a reply,
    Ctrl-D or /quit ends the chat.
    """
    import convo

    console = Console(stderr=True)
    use_emulator = emulator if emulator is not None else not _has_key()
    if not use_emulator and not _has_key():
        raise click.ClickException(
            "--api needs ANTHROPIC_API_KEY: export it, or leave out --api to chat with the "
            "embedded emulator"
        )
    system = system_file.read_text(encoding="utf-8") if system_file else DEFAULT_SYSTEM
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", convo.PrefixTooShortWarning)
            prefix = convo.Prefix(model=model, system=[system], ttl=ttl)  # type: ignore[arg-type]
    except (convo.LayoutError, TypeError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="--model/--system") from error
    for warning in caught:  # said once, plainly, rather than as a Python warning
        console.print(f"[dim]note: {escape(str(warning.message))}[/]")
        if not system_file:
            console.print("[dim]note: --system FILE with a longer prompt lets it cache[/]")
    if ledger_url:
        ledger = convo.Ledger.open(ledger_url)
    elif use_emulator:
        ledger = convo.Ledger.open(data_path("emulator.sqlite3"))
    else:
        ledger = convo.Ledger.default()
    with ledger, _backend(use_emulator, emulator_config) as (client, clock):
        if use_emulator:
            why = "--emulator" if emulator else "no ANTHROPIC_API_KEY"
            console.print(
                f"[bold]{why}: chatting with convo's embedded emulator[/] (placeholder "
                "replies; caching, usage and cost as the API's)",
                highlight=False,
            )
        console.print(
            f"[dim]{model}, {prefix.tokens:,}-token system prompt, TTL {ttl}. "
            "/help for commands; Ctrl-D or /quit ends.[/]",
            highlight=False,
        )
        session = convo.Session(
            prefix,
            client=client,
            ledger=ledger,
            clock=clock,
            max_tokens=max_tokens,
            registry=convo.WarmRegistry(clock=clock),
        )
        _Chat(session, console=console, ledger=ledger, clock=clock, max_tokens=max_tokens).run()
