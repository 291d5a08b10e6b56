"""``convo bench``: replay workloads under each strategy on the emulator and compare costs."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["bench"]


def _users(value: str | None) -> list[int | None]:
    if value is None:
        return [None]
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("give a number, or numbers separated by commas") from None
    if not sizes or any(n < 1 for n in sizes):
        raise click.BadParameter("users must be at least 1")
    return list(sizes)


@click.command()
@click.option(
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice(["chatbot", "worker-pool", "agent", "idle-gaps", "stateless", "routing"]),
    help="Repeat to run several (default: all).",
)
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    type=click.Choice(
        [
            *("none", "system-only", "docs-layout", "automatic", "convo", "convo-tuned"),
            *("cacheguardian", "always-large", "always-small", "naive-router", "convo-router"),
        ]
    ),
    help="Repeat to run several (default: all). The routing workload runs the last four, "
    "the others the rest.",
)
@click.option("--seed", "seeds", multiple=True, type=int, help="Repeat for several (default 1).")
@click.option(
    "--users",
    default=None,
    metavar="N[,N...]",
    help="Users (tasks for worker-pool, agents for agent); several, e.g. 1,10,100,1000, "
    "sweep the fleet size.",
)
@click.option("--quick", is_flag=True, help="Small sizes: every workload × strategy in < 60 s.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Where results.json, results.md and the plots go.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def bench(
    workloads: tuple[str, ...],
    strategies: tuple[str, ...],
    seeds: tuple[int, ...],
    users: str | None,
    quick: bool,
    out: Path,
    no_plots: bool,
) -> None:
    """Compare caching strategies on seeded workloads against the ideal (a lower bound),
    and model routers on the routing workload by cost per successful task.

    Runs on the embedded emulator's virtual clock: hour-long think times take no wall
    time. Writes results.json, results.md and PNG plots into --out.
    """
    import time

    from convo.bench import report
    from convo.bench.routing import ROUTING_STRATEGIES
    from convo.bench.run import Bench
    from convo.bench.strategies import STRATEGIES, StrategyUnavailable
    from convo.bench.workloads import build, names

    console = Console()
    chosen_strategies = list(strategies) or [*STRATEGIES, *ROUTING_STRATEGIES]

    def fitting(workload_name: str) -> list[str]:
        # The routing workload compares routers; the others compare caching strategies.
        routing = workload_name == "routing"
        return [s for s in chosen_strategies if (s in ROUTING_STRATEGIES) == routing]

    # Without --workload: every workload that one of the chosen strategies runs on.
    chosen_workloads = list(workloads) or [w for w in names() if fitting(w)]
    chosen_seeds = list(seeds) or [1]
    sizes = _users(users)

    plan = [
        (build(w, seed, quick=quick, users=n), seed, n)
        for n in sizes
        for w in chosen_workloads
        for seed in chosen_seeds
    ]
    unfit = [w for w in chosen_workloads if not fitting(w)]
    if unfit:
        raise click.UsageError(
            f"no chosen strategy runs on {', '.join(unfit)}: the routing workload takes "
            f"{', '.join(ROUTING_STRATEGIES)}, the others {', '.join(STRATEGIES)}"
        )
    total = sum(w.requests * len(fitting(w.name)) for w, _, _ in plan)
    results = []
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Bench() as runner, Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("warming up", total=total)
        runner.warm_up(chosen_strategies)
        for workload, seed, n in plan:
            for strategy in fitting(workload.name):
                if strategy in skipped:
                    progress.advance(task, workload.requests)
                    continue
                progress.update(task, description=f"{workload.name} × {strategy} (seed {seed})")
                try:
                    result = runner.run(
                        workload,
                        strategy,
                        seed=seed,
                        users=n,
                        on_turn=lambda: progress.advance(task),
                    )
                except StrategyUnavailable as error:
                    skipped[strategy] = str(error)
                    console.print(f"[yellow]skipping {strategy}: {error}[/]")
                    progress.advance(task, workload.requests)
                    continue
                results.append(result)
    config = {
        "workloads": chosen_workloads,
        "strategies": chosen_strategies,
        "seeds": chosen_seeds,
        "users": sizes,
        "quick": quick,
        "skipped": skipped,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    doc = report.document(results, config=config)
    plots = not no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plots = False
            console.print(
                '[yellow]no plots: matplotlib is not installed (pip install "convo[bench]")[/]'
            )
    written = report.write(doc, out, plots=plots)
    for (workload_name, n_users), rows in report.rows(doc).items():
        table = Table(title=f"{workload_name} ({n_users} users/tasks)", title_justify="left")
        routed = workload_name == "routing"
        for header in report.ROUTING_TERMINAL if routed else report.TERMINAL:
            table.add_column(header, justify="left" if header == "strategy" else "right")
        for row in rows:
            table.add_row(*(report.routing_cells(row) if routed else report.terminal_cells(row)))
        console.print(table)
    console.print(
        f"{len(results)} runs in {config['elapsed_s']} s; wrote "
        + ", ".join(str(p) for p in written)
    )
