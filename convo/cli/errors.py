"""Errors on the command line: one line that says what to do, never a traceback.

Every subcommand runs inside :class:`ConvoGroup`, which turns an exception that escapes it
into one line on stderr and exit status 1. ``convo --debug ...`` (or ``CONVO_DEBUG=1``)
lets the traceback through instead. Known failures get a sentence that names the next
step (:func:`one_line`); anything else is its type and message, with the ``--debug`` hint.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

__all__ = ["ConvoGroup", "debugging", "one_line"]

_LIMIT = 300  # characters: a message longer than this is cut (a wall of text is no help)


def _flat(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _LIMIT else text[: _LIMIT - 1] + "…"


def _connection_failed(error: BaseException) -> bool:
    import anthropic

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, anthropic.APIConnectionError):
            return True
        last = getattr(current, "last_error", None)
        current = last if isinstance(last, BaseException) else current.__cause__
    return False


def one_line(error: BaseException) -> str:
    """Say what went wrong in one line, with what to do about it where convo knows.

    Args:
        error: An exception that ended a command.
    """
    import anthropic

    from convo.errors import ConvoError, LedgerError

    if isinstance(error, anthropic.AuthenticationError):
        return (
            "the API refused the key (401 authentication_error): check ANTHROPIC_API_KEY, "
            "or chat offline with `convo chat --emulator`"
        )
    if isinstance(error, anthropic.PermissionDeniedError):
        return "the API refused this key for that request (403): check the key's workspace"
    if isinstance(error, anthropic.NotFoundError):
        return f"the API answered 404: check --model ({_flat(error.message)})"
    if _connection_failed(error):
        where = os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        return (
            f"could not reach the API at {where}: check your network or proxy, "
            "or chat offline with `convo chat --emulator`"
        )
    if isinstance(error, anthropic.APIStatusError):
        return f"the API answered {error.status_code}: {_flat(error.message)}"
    if isinstance(error, LedgerError):
        return f"{_flat(str(error))}: check --ledger (a SQLite file, or postgresql://...)"
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return "that address is in use: pick another with --port (0 picks any free port)"
    if isinstance(error, (ConvoError, ValueError)):
        return _flat(str(error))
    return f"{type(error).__name__}: {_flat(str(error))} (convo --debug shows the traceback)"


class ConvoGroup(click.Group):
    """A click group whose subcommands fail in one line unless ``--debug`` is on."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line; a usage error is one line too (click prints the usage,
        a hint and the error on four), naming the ``-h`` that shows the options."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "convo"
            click.echo(f"Error: {error.format_message()} ({where} -h lists the options)", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; turn an unexpected exception into one line and exit 1."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)
        except Exception as error:
            if _debug(ctx):
                raise
            click.echo(f"Error: {one_line(error)}", err=True)
            ctx.exit(1)


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("debug")) or os.environ.get(
        "CONVO_DEBUG", ""
    ) not in ("", "0")


def debugging() -> bool:
    """Whether ``convo --debug`` (or ``CONVO_DEBUG=1``) asked for tracebacks."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and _debug(ctx)
