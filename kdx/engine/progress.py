"""Progress a person can read (issue 21, item 2).

On a terminal, :class:`EpochProgress` shows a batch bar refreshed by time (4 times a second, from
the first step): steps, loss, accuracy, images/s, elapsed and the ETA of the epoch and of the run's
remaining training steps, computed from the steps done so far. In a pipe or a log file it prints one
plain line per epoch. :class:`Heartbeat` is for long work that is not a training loop
(``analyze-conflicts``): in a pipe it prints where the work is at least every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)

REFRESH_PER_SECOND = 4  # the bar's redraws; the trainer hands new numbers at most this often too
HEARTBEAT_SECONDS = 30.0  # a plain line at least this often in a pipe (non-training work)


def clock_text(seconds: Optional[float]) -> str:
    """``0:01:05``, ``1:02:03``; ``--:--`` while unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EpochProgress:
    """One bar per epoch on a terminal; ``quiet``, or an output that is not a terminal, prints one
    line per epoch only. ``update`` is cheap to call every step: :meth:`due` says when new numbers
    are worth computing (the first step, then every 1/REFRESH_PER_SECOND s, and the last step)."""

    def __init__(self, quiet: bool = False, enabled: bool = True, out: Console | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.console = out or console
        self.enabled = enabled
        self.live = enabled and not quiet and self.console.is_terminal
        self.clock = clock
        self._progress = None
        self._task = None
        self._last = None  # clock of the last update shown

    def start_epoch(self, label: str, total: int, completed: int = 0, later_steps: int = 0):
        """A bar for ``total`` steps from ``completed`` (a resume); ``later_steps``: training steps of
        the epochs after this one (the run's ETA)."""
        if not self.live:
            return
        self._t0, self._done0, self._total, self._later, self._last = self.clock(), completed, total, later_steps, None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=True,
            refresh_per_second=REFRESH_PER_SECOND,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=completed,
                                             stats="loss -  acc -  - img/s", eta="ETA --:--")

    def due(self, last_step: bool = False) -> bool:
        """Whether the bar wants new numbers now."""
        if self._progress is None:
            return False
        return last_step or self._last is None or self.clock() - self._last >= 1.0 / REFRESH_PER_SECOND

    def eta(self, completed: int) -> tuple[Optional[float], Optional[float]]:
        """Seconds left in the epoch and in the run's training steps, at the pace of this epoch's
        steps so far (None before the first one)."""
        done = completed - self._done0
        if done <= 0:
            return None, None
        per_step = (self.clock() - self._t0) / done
        left = self._total - completed
        return per_step * left, per_step * (left + self._later)

    def update(self, completed: int, loss: float, acc: float, ips: float):
        if self._progress is None:
            return
        self._last = self.clock()
        epoch_left, run_left = self.eta(completed)
        eta = f"ETA {clock_text(epoch_left)}"
        if self._later:
            eta += f" (run {clock_text(run_left)})"
        self._progress.update(self._task, completed=completed, eta=eta,
                              stats=f"loss {loss:.4f}  acc {acc:.2%}  {ips:.0f} img/s")

    def end_epoch(self, line: str):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.enabled:
            self.console.print(line, highlight=False, soft_wrap=True)

    def log(self, message: str):
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def warn(self, message: str):
        """``kdx: warning: ...`` on stderr (``--quiet`` too)."""
        if self.enabled:
            self.console.print(f"[yellow]kdx: warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    def close(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        sys.stderr.flush()


class Heartbeat:
    """In a pipe or a log file: a plain line saying where a long job is (``set``), at least every
    ``interval`` seconds, from a background thread; :meth:`printed` tells it another line just went
    out (the interval starts again). :meth:`tick` is one check at time ``now`` (what the thread runs)."""

    def __init__(self, out: Console | None = None, interval: float = HEARTBEAT_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.console, self.interval, self.clock = out or console, interval, clock
        self.where = ""
        self._t0 = self._last = clock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def set(self, where: str) -> None:
        with self._lock:
            self.where = where

    def printed(self) -> None:
        with self._lock:
            self._last = self.clock()

    def tick(self, now: Optional[float] = None) -> bool:
        """Print the line if ``interval`` passed since the last one; True if it did."""
        now = self.clock() if now is None else now
        with self._lock:
            if not self.where or now - self._last < self.interval:
                return False
            self._last = now
            line = f"{self.where} (at work {clock_text(now - self._t0)})"
        self.console.print(line, highlight=False, soft_wrap=True)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kdx-heartbeat", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(min(self.interval / 4, 5.0)):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def table_console() -> Console:
    """A stdout console for result tables; when the output is not a terminal (a log file, a pipe),
    it is 160 columns wide so tables are not squeezed into 80 columns and truncated."""
    out = Console()
    return out if out.is_terminal else Console(width=160)
