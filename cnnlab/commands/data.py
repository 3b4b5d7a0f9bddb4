"""What `cnnlab data synth|check`, `cnnlab cache list|clear`, `cnnlab models` and `cnnlab report` print, and their
exit codes: the libraries (cnnlab.data.synth, check, cache; cnnlab.models; cnnlab.runs.report) do the work."""

from __future__ import annotations

from pathlib import Path

import typer


def show_synth(summary) -> None:
    """The synthesised dataset: where, classes, counts."""
    typer.echo(summary.describe())


def show_check(report) -> int:
    """The data check's report; exit 1 when the folder is not trainable."""
    typer.echo(report.describe())
    return report.exit_code


def show_stores(stores: list, cache_dir: str | None = None) -> None:
    """The image cache's stores, one line each."""
    from cnnlab.data.cache import cache_root

    typer.echo(f"image cache in {cache_root(cache_dir)}: {len(stores)} store(s), "
               f"{sum(s.bytes for s in stores) / 1e6:,.1f} MB")
    for store in stores:
        size = store.size or "?"
        where = f"short side {size[1:]}" if size.startswith("s") else f"scale {size[1:]}"
        typer.echo(f"  {store.path.name}  {store.bytes / 1e6:,.1f} MB  {store.images} images at {where}  from "
                   f"{store.source}")


def show_cleared(stores: list) -> None:
    """What `cache clear` deleted."""
    typer.echo(f"deleted {len(stores)} store(s), {sum(s.bytes for s in stores) / 1e6:,.1f} MB freed")


def show_lines(lines: list[str]) -> None:
    """One item per line (`cnnlab models`)."""
    for line in lines:
        typer.echo(line)


def show_written(path: Path) -> None:
    """The file written (`cnnlab report`)."""
    typer.echo(f"wrote {path}")
