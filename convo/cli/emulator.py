"""``convo emulator``: run the Messages API emulator as a server."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

__all__ = ["emulator"]


@click.group(short_help="Serve the Messages API emulator for offline tests.")
def emulator() -> None:
    """The Messages API emulator (for offline tests of cache behaviour, retries, limits)."""


@emulator.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0),
    default=None,
    help="0 answers at once (default); 1 sleeps the modelled latency in real time.",
)
@click.option("--seed", type=int, default=None, help="Seed for faults and generated replies.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON or TOML file with limits, faults, latency and model overrides.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve(
    host: str,
    port: int,
    time_scale: float | None,
    seed: int | None,
    config_path: Path | None,
    log_level: str,
) -> None:
    """Serve the emulator until interrupted; point the SDK's base_url at it."""
    from convo.emulator import EmulatorConfig, load_config, run

    try:
        config = load_config(config_path) if config_path else EmulatorConfig()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc
    if time_scale is not None:
        config = attrs.evolve(config, time_scale=time_scale)
    if seed is not None:
        config = attrs.evolve(config, seed=seed)
    _check_free(host, port)  # before saying where it listens: a busy port is one line
    scale = f"(time scale {config.time_scale})"
    if port:
        click.echo(f"convo emulator on http://{host}:{port} {scale}", err=True)
    else:
        click.echo(f"convo emulator on a free port of {host} {scale}; the log names it", err=True)
    run(config, host=host, port=port, log_level=log_level)


def _check_free(host: str, port: int) -> None:
    """Raise a one-line error if *host*:*port* cannot be bound (in use, or not an address
    of this machine). Bound the way uvicorn binds it (``SO_REUSEADDR``), then released."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({error.strerror or error}): "
                "pick another --port (0 picks a free one) or stop what holds it"
            ) from None
