"""What every stage command shares: the --params option and user-error handling."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from localagg.errors import UserError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

ParamsOption = typer.Option(
    Path("params.yaml"), "--params", "-p", help="Params file; the command reads only its own section.",
    show_default=True,
)


def user_errors(fn: Callable) -> Callable:
    """Print a UserError as one message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True)
            sys.exit(2)

    return wrapper
