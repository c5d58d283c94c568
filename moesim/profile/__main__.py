"""``python -m moesim.profile``: the profile command without the rest of the moesim CLI.

For machines that have PyTorch but not every dependency of moesim's other commands.
"""

from __future__ import annotations

import sys

import typer

from moesim.errors import MoesimError
from moesim.profile.command import profile


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
    app.command(name="profile")(profile)
    try:
        app(prog_name="python -m moesim.profile", standalone_mode=False)
    except MoesimError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: rerun with --resume to continue", fg="yellow", err=True)
        sys.exit(130)
    except Exception as exc:  # usage errors and anything else: one line, as `moesim` does
        from moesim.cli import report_failure

        sys.exit(report_failure(exc))


if __name__ == "__main__":
    main()
