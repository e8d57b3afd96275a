"""The `explainfix` command line: Typer commands (parse → one job → render) and rich rendering."""
from .cli import app, main

__all__ = ["app", "main"]
