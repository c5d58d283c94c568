"""The ``moesim`` command line.

Each module in this package that defines ``register(app)`` adds its commands; modules are found
automatically, so a new command group is one new file. Registration is lazy: ``moesim predict``
imports ``moesim/cli/predict.py`` only (a module named after its command), so a command pays
for its own imports and nobody else's; ``moesim --help`` and commands that live in a module of
another name (``validate`` in ``calibrate.py``) import them all. ``moesim.cli.app`` is the full
app, built on first access (tests drive it with typer's CliRunner).

Errors: a user error (:class:`~moesim.errors.MoesimError`), a usage error (unknown option,
value out of range) and anything unexpected all end as ONE line on stderr starting ``error:``
and a non-zero exit (2 for input errors, 70 for an internal error, 130 when interrupted);
``MOESIM_DEBUG=1`` re-raises unexpected exceptions with their traceback.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2  # bad input: the user can fix it
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the message says so
EXIT_INTERRUPTED = 130

_HELP = (
    "Predict what it costs to serve dense and Mixture-of-Experts LLMs: latency (TTFT, TPOT), "
    "throughput per GPU, memory fit and $/Mtok, from model specs, hardware profiles and layouts."
)
_APP = None


def command_modules() -> list[str]:
    """Names of the command modules of this package (found on disk, nothing imported)."""
    return sorted(
        info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not info.name.startswith("_")
    )  # fmt: skip


def _version_callback(value: bool) -> None:
    if value:
        import typer

        from moesim import __version__

        typer.echo(__version__)
        raise typer.Exit()


def build_app(modules: list[str] | None = None):
    """A typer app with the commands of ``modules`` (all command modules by default)."""
    import importlib

    import typer

    app = typer.Typer(
        name="moesim",
        help=_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False,
            "--version",
            help="Print the version and exit.",
            is_eager=True,
            callback=_version_callback,
        ),
    ) -> None:
        pass

    loaded = []
    for name in command_modules() if modules is None else modules:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            loaded.append(module)
    for module in sorted(loaded, key=lambda m: getattr(m, "ORDER", 100)):
        module.register(app)
    return app


def __getattr__(name: str) -> Any:
    global _APP
    if name == "app":
        if _APP is None:
            _APP = build_app()
        return _APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _modules_for(argv: list[str]) -> list[str] | None:
    """The one module a command line needs, or None (all) for help and unknown names."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or any(a in ("--help", "-h") for a in argv[:1]):
        return None
    return [words[0]] if words[0] == argv[0] and words[0] in command_modules() else None


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Never raises (except with ``MOESIM_DEBUG=1``) and never prints a traceback: every failure is
    one ``error: ...`` line on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        app = build_app(_modules_for(argv))
        rc = app(args=argv, prog_name="moesim", standalone_mode=False)
        return rc if isinstance(rc, int) else 0  # typer.Exit(code) comes back as a value
    except BaseException as exc:  # noqa: BLE001 - the one place that turns failures into lines
        return report_failure(exc)


def report_failure(exc: BaseException) -> int:
    """The exit status for ``exc``, after printing its one ``error:`` line on stderr."""
    from moesim.errors import MoesimError

    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, MoesimError):
        _error(str(exc))
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        _error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):  # `moesim ... | head`: the reader left, not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        except OSError:
            pass
        return 0
    kind = type(exc).__name__
    if kind == "Exit":  # typer / click Exit
        return int(getattr(exc, "exit_code", 0) or 0)
    if kind == "Abort":
        _error("aborted")
        return 1
    # Usage errors (unknown option, bad value) arrive here in non-standalone mode; typer may
    # vendor its own click, so recognise them by shape rather than by class.
    if callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    ):
        ctx = getattr(exc, "ctx", None)
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _error(" ".join(str(exc.format_message()).split()) + where)
        return int(exc.exit_code) or EXIT_USAGE
    if os.environ.get("MOESIM_DEBUG"):
        raise exc
    if isinstance(exc, MemoryError):
        _error("out of memory; the input asks for more than this machine has")
        return EXIT_USAGE
    if isinstance(exc, RecursionError):
        _error("input nested too deeply")
        return EXIT_USAGE
    if isinstance(exc, UnicodeDecodeError):
        _error(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8")
        return EXIT_USAGE
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        # the file system said no (permission, full disk, a folder where a file was expected)
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"cannot use{where}: {exc.strerror or type(exc).__name__}")
        return EXIT_USAGE
    text = " ".join(str(exc).split())[:300]
    _error(f"internal error ({kind}: {text}); please report it (MOESIM_DEBUG=1 shows where)")
    return EXIT_INTERNAL


def _error(message: str) -> None:
    line = " ".join(message.split()) if "\n" in message else message
    try:
        sys.stderr.write(f"error: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main() -> None:
    """Entry point (``moesim``): run the command line and exit with its status."""
    sys.exit(run())
