"""The ``convo`` command line: one click group, one module per subcommand."""

from __future__ import annotations

import click

from convo.cli.bench import bench
from convo.cli.chat import chat
from convo.cli.demo import demo
from convo.cli.emulator import emulator
from convo.cli.report import report

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convo")
def main() -> None:
    """convo: Claude conversations that use the prompt cache well and count every token."""


main.add_command(bench)
main.add_command(chat)
main.add_command(demo)
main.add_command(emulator)
main.add_command(report)
