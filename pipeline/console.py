"""What the stages print: plain lines and progress bars, on stderr so stdout stays data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")


def info(message: str) -> None:
    click.echo(message, err=True)


def progress(items: Iterable[T], label: str, length: int | None = None) -> Iterator[T]:
    with click.progressbar(
        items, label=label, length=length, file=click.get_text_stream("stderr"), show_pos=True
    ) as bar:
        yield from bar


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (reads fine in a terminal and pastes into the README)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)
