"""The ``convo`` command line: one click group, one module per subcommand."""

from __future__ import annotations

import click

from convo.cli.bench import bench
from convo.cli.chat import chat
from convo.cli.demo import demo
from convo.cli.emulator import emulator
from convo.cli.errors import ConvoGroup
from convo.cli.report import report

__all__ = ["main"]


@click.group(cls=ConvoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    envvar="CONVO_DEBUG",
    help="Show the full traceback when a command fails (otherwise: one line).",
)
@click.version_option(package_name="convo")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """convo: Claude conversations that use the prompt cache well and count every token."""
    ctx.obj = {"debug": debug}


main.add_command(bench)
main.add_command(chat)
main.add_command(demo)
main.add_command(emulator)
main.add_command(report)
