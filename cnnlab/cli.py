"""Command-line interface: a thin layer that parses options, calls one library function, prints.

Every command has a Python twin with the same arguments (see cnnlab/__init__.py). Library modules
are imported inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from cnnlab.config import TrainConfig, default
from cnnlab.errors import CnnlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cnnlab: train, understand and trust CNNs on your own images.")
data_app = typer.Typer(no_args_is_help=True, help="Make or check image datasets.")
app.add_typer(data_app, name="data")


def _d(name: str):
    """Default of a TrainConfig field (defaults live in cnnlab.config only)."""
    return default(TrainConfig, name)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

@data_app.command("synth")
def data_synth(
    out_dir: str = typer.Argument(..., help="Folder to write train/<class>/ and val/<class>/ into."),
    classes: int = typer.Option(6, help="Number of shape classes."),
    per_class: int = typer.Option(100, help="Images per class (train + val)."),
    size: int = typer.Option(1024, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Same seed, byte-identical files."),
    val_fraction: float = typer.Option(0.2, help="Share of each class written to val/."),
) -> None:
    """Write the built-in large-image dataset: shapes on a cluttered, textured background."""
    from cnnlab.synth import synthesize

    summary = synthesize(out_dir, classes=classes, per_class=per_class, size=size, seed=seed,
                         val_fraction=val_fraction)
    typer.echo(summary.describe())


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except CnnlabError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
