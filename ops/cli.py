"""`genrec`: the one command-line entry point (the outermost layer: drives `streams` and `model`).

Each command lives in the module that does its job; this file only wires them into one Typer app.
Heavy imports (torch, faust) stay inside the command functions so that `genrec --help` is instant.
"""

from __future__ import annotations

import signal
from types import FrameType

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="genrec: generative retrieve-and-rank")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each prints one JSON object last on stdout.")
app.add_typer(bench_app, name="bench")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@bench_app.callback()
def _bench_stops_what_it_started() -> None:
    """SIGTERM unwinds a benchmark like Ctrl-C, so the `finally` blocks that stop the brokers and workers it
    started run; by default SIGTERM ends Python at once and leaves them running."""
    signal.signal(signal.SIGTERM, _interrupt)


def _register() -> None:
    # One line per module; each module exposes `register(app, bench_app)`.
    from genrec.ops import bench_quality, cli_model

    cli_model.register(app, bench_app)
    bench_quality.register(app, bench_app)
    from genrec.ops import cli_infra

    cli_infra.register(app, bench_app)
    from genrec.ops import cli_stream

    cli_stream.register(app, bench_app)
    from genrec.ops import demo

    demo.register(app, bench_app)
    from genrec.ops import cli_ops

    cli_ops.register(app, bench_app)
    from genrec.ops import cli_models

    cli_models.register(app, bench_app)
    from genrec.ops import bench_online

    bench_online.register(app, bench_app)
    from genrec.ops import bench_order

    bench_order.register(app, bench_app)
    from genrec.ops import cli_deadletters

    cli_deadletters.register(app, bench_app)
    from genrec.ops import bench_chaos

    bench_chaos.register(app, bench_app)
    from genrec.ops import export_events

    export_events.register(app, bench_app)
    from genrec.ops import cli_schemas

    cli_schemas.register(app, bench_app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
