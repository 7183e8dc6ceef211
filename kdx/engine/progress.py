"""Progress display: a rich batch bar (loss, accuracy, images/s, ETA) or plain epoch lines."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class EpochProgress:
    """One bar per epoch. ``quiet`` (or a non-terminal output) prints a line per epoch only."""

    def __init__(self, quiet: bool = False, enabled: bool = True):
        self.enabled = enabled
        self.live = enabled and not quiet and console.is_terminal
        self._progress = None
        self._task = None

    def start_epoch(self, label: str, total: int, completed: int = 0):
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=completed, loss=0.0, acc=0.0, ips=0.0)

    def update(self, completed: int, loss: float, acc: float, ips: float):
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, loss=loss, acc=acc, ips=ips)

    def end_epoch(self, line: str):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.enabled:
            console.print(line, highlight=False, soft_wrap=True)

    def log(self, message: str):
        if self.enabled:
            console.print(message, highlight=False, soft_wrap=True)

    def close(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        sys.stderr.flush()


def table_console() -> Console:
    """A stdout console for result tables; when the output is not a terminal (a log file, a pipe),
    it is 160 columns wide so tables are not squeezed into 80 columns and truncated."""
    out = Console()
    return out if out.is_terminal else Console(width=160)
