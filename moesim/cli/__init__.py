"""The ``moesim`` command line.

Each module in this package that defines ``register(app)`` adds its commands; modules are found
automatically, so a new command group is one new file. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from moesim.errors import MoesimError

app = typer.Typer(
    name="moesim",
    help="Predict what it costs to serve dense and Mixture-of-Experts LLMs: latency (TTFT, TPOT), "
    "throughput per GPU, memory fit and $/Mtok, from model specs, hardware profiles and layouts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from moesim import __version__

        typer.echo(__version__)
        raise typer.Exit()


def _register_all() -> None:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        module.register(app)


_register_all()


def main() -> None:
    """Entry point: run the app; user errors print one line and exit 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except MoesimError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="yellow", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
