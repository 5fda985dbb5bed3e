"""`asmg experiment` (offline protocol)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the offline commands to the top-level app."""
