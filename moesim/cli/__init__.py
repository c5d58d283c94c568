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


def _print_version(value: bool) -> None:
    if value:  # eager: runs while parsing, before click asks for a command
        from moesim import __version__

        typer.echo(f"moesim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    pass


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
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc != 0:  # typer.Exit(code) comes back as a return value
            sys.exit(rc)
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
    except Exception as exc:
        # Usage errors (unknown option, bad value) arrive here in non-standalone mode; typer may
        # vendor its own click, so recognise them by shape rather than by class.
        if callable(getattr(exc, "show", None)) and isinstance(
            getattr(exc, "exit_code", None), int
        ):
            exc.show()
            sys.exit(exc.exit_code)
        raise
