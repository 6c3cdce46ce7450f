"""Progress bars for every command: rich, on stderr, only on a terminal and never with --quiet."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """``update(n)``, ``note(text)`` (shown after the bar, e.g. a rate or a loss) and ``close()``.

    ``unit="bytes"`` shows sizes and speed instead of counts.
    """

    def __init__(self, total: int | None, unit: str, *, initial: int = 0, disable: bool = False,
                 description: str = ""):
        self._progress: Any = None
        if disable:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        amount = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [
            MofNCompleteColumn(), TextColumn(unit)]
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), *amount, TimeElapsedColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=initial, note="")

    def update(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, note=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
