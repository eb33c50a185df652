"""What the CLI prints: JSON for scripts (--json), tables for people, errors in the API's words; progress on stderr.

On a terminal, progress is a live display (rich); in a CI log (no terminal) it is a plain line now and then;
with --json there is none, so stdout holds exactly one JSON document.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table


class Output:
    """The command's one voice: results to stdout, progress and notes to stderr."""

    def __init__(self, *, json_mode: bool):
        self.json_mode = json_mode
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    @property
    def live(self) -> bool:
        """A terminal to draw live progress on (and not --json)."""
        return not self.json_mode and self.err.is_terminal

    def result(self, data: Any, render=None) -> None:
        """The command's result: as JSON with --json, else as `render(data)` draws it (JSON when none)."""
        if self.json_mode or render is None:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
            sys.stdout.flush()
        else:
            render(data)

    def note(self, text: str) -> None:
        """A line for the person or the CI log (stderr); nothing with --json."""
        if not self.json_mode:
            self.err.print(text, markup=False)

    def error(self, body: dict) -> None:
        """An API error (`{"error": {"code", "message", "details"}}`): the body itself with --json, else lines."""
        if self.json_mode:
            sys.stdout.write(json.dumps(body, indent=2) + "\n")
            return
        error = body.get("error", {})
        self.err.print(f"error: {error.get('code')}: {error.get('message')}", markup=False, style="red")
        for detail in error.get("details") or []:
            field = detail.get("field") or "-"
            self.err.print(f"  {field}: {detail.get('message')}", markup=False)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
        table = Table(*columns, title=title, show_lines=False, header_style="bold", title_justify="left")
        for row in rows:
            table.add_row(*("" if cell is None else str(cell) for cell in row))
        self.out.print(table)

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """A record as `key: value` lines."""
        for key, value in pairs:
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            self.out.print(f"[bold]{key}[/bold]: {'' if value is None else value}", soft_wrap=True)

    def transfer(self, description: str, *, total: int, completed: int = 0) -> Transfer:
        return Transfer(self, description, total=total, completed=completed)


class Transfer:
    """A byte count going up (thread-safe): a rich bar (bytes, rate, ETA) on a terminal, a line every 10 % in a
    log, nothing with --json. `advance` may be negative (a part being sent again after a failed attempt)."""

    def __init__(self, output: Output, description: str, *, total: int, completed: int):
        self.output, self.description, self.total = output, description, max(total, 1)
        self.completed, self.started_at, self._lock = completed, time.monotonic(), threading.Lock()
        self._start_bytes, self._next_line = completed, 0.1 * (completed * 10 // self.total + 1)
        self._progress: Progress | None = None
        if output.live:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=output.err,
                                      transient=False)
            self._task = self._progress.add_task(description, total=total, completed=completed)

    def __enter__(self) -> Transfer:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()

    def advance(self, count: int) -> None:
        with self._lock:
            self.completed += count
            if self._progress:
                self._progress.update(self._task, completed=self.completed)
            elif self.completed / self.total >= self._next_line and not self.output.json_mode:
                self._next_line = 0.1 * (self.completed * 10 // self.total + 1)
                elapsed = max(time.monotonic() - self.started_at, 1e-6)
                rate = (self.completed - self._start_bytes) / elapsed
                left = (self.total - self.completed) / rate if rate > 0 else 0
                self.output.note(f"{self.description}: {self.completed * 100 // self.total:3d} % "
                                 f"({filesize.decimal(self.completed)} of {filesize.decimal(self.total)}, "
                                 f"{filesize.decimal(int(rate))}/s, ETA {int(left)} s)")
