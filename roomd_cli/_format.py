"""Plain-text output for people: aligned tables, durations, times."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

import click


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns aligned with two spaces between them; the last column is not padded."""
    cells = [[str(h) for h in headers]]
    cells += [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        # widths has one more entry than row[:-1]: the last column is not padded
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        padded.append(row[-1])
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def duration(seconds: float | int | None) -> str:
    """3725 -> "1h02m05s"; 90061 -> "1d01h01m"."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def clock(timestamp: float | None, *, millis: bool = True) -> str:
    """A unix time as local HH:MM:SS(.mmm)."""
    if timestamp is None:
        return "-"
    t = datetime.datetime.fromtimestamp(float(timestamp))
    return t.strftime("%H:%M:%S.%f")[:-3] if millis else t.strftime("%H:%M:%S")


def when(timestamp: float | None) -> str:
    """A unix time as local YYYY-MM-DD HH:MM:SS."""
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(float(timestamp)).strftime("%Y-%m-%d %H:%M:%S")


def echo_json(value: Any, *, compact: bool = False) -> None:
    if compact:
        click.echo(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    else:
        click.echo(json.dumps(value, ensure_ascii=False, indent=2))
