"""``moesim profile``: measure kernels on this machine (see ``moesim.profile``)."""

from __future__ import annotations

import typer

ORDER = 60


def register(app: typer.Typer) -> None:
    from moesim.profile.command import profile

    app.command(name="profile")(profile)
