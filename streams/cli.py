"""CLI commands of this package, registered on the top-level `asmg` app."""

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
