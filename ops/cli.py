"""`genrec`: the one command-line entry point (the outermost layer: drives `streams` and `model`).

Each command lives in the module that does its job; this file only wires them into one Typer app.
Heavy imports (torch, faust) stay inside the command functions so that `genrec --help` is instant.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="genrec: generative retrieve-and-rank")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each prints one JSON object last on stdout.")
app.add_typer(bench_app, name="bench")


def _register() -> None:
    # One line per module; each module exposes `register(app, bench_app)`.
    from ops import bench_quality, cli_model

    cli_model.register(app, bench_app)
    bench_quality.register(app, bench_app)
    from ops import cli_infra

    cli_infra.register(app, bench_app)
    from ops import cli_stream

    cli_stream.register(app, bench_app)
    from ops import demo

    demo.register(app, bench_app)
    from ops import cli_ops

    cli_ops.register(app, bench_app)
    from ops import cli_models

    cli_models.register(app, bench_app)
    from ops import bench_online

    bench_online.register(app, bench_app)
    from ops import bench_order

    bench_order.register(app, bench_app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
