"""Progress a person can read (issue 21, item 2): on a terminal a bar refreshed by time from the
first step with the epoch's and the run's ETA; in a pipe one plain line per epoch, and for
analyze-conflicts a line saying where it is at least every 30 s. Clocks are fakes: nothing here
waits or asserts on durations."""

import re
from io import StringIO

from rich.console import Console
from typer.testing import CliRunner

from kdx.commands.analyze_conflicts import RunProgress
from kdx.engine import progress as progress_mod
from kdx.engine.progress import HEARTBEAT_SECONDS, EpochProgress, Heartbeat, clock_text


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _terminal():
    buf = StringIO()
    return Console(force_terminal=True, file=buf, width=160), buf


def _pipe():
    buf = StringIO()
    return Console(force_terminal=False, file=buf, width=80), buf


def _shown(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_clock_text():
    assert clock_text(None) == "--:--" and clock_text(float("nan")) == "--:--"
    assert clock_text(65) == "0:01:05" and clock_text(3723.4) == "1:02:03"


def test_terminal_bar_has_numbers_and_eta_after_the_first_step():
    console, buf = _terminal()
    clock = FakeClock()
    p = EpochProgress(out=console, clock=clock)
    assert p.live
    p.start_epoch("teacher 1/3", total=11, later_steps=22)
    assert p.due()  # the first step is always shown
    clock.now += 6.0  # one step of 6 s: 10 steps left in the epoch, 32 in the run
    p.update(1, 0.5, 0.25, 21.0)
    p._progress.refresh()
    shown = _shown(buf.getvalue())
    p.close()
    assert "1/11" in shown and "loss 0.5000" in shown and "acc 25.00%" in shown and "21 img/s" in shown
    assert "ETA 0:01:00 (run 0:03:12)" in shown


def test_terminal_bar_is_refreshed_by_time_not_by_step_count():
    console, _ = _terminal()
    clock = FakeClock()
    p = EpochProgress(out=console, clock=clock)
    p.start_epoch("e 1/1", total=100)
    clock.now += 1.0
    p.update(1, 1.0, 0.0, 1.0)
    assert not p.due()  # just shown
    clock.now += 0.1
    assert not p.due() and p.due(last_step=True)
    clock.now += 0.2  # 0.3 s after the last update: more than 1/REFRESH_PER_SECOND
    assert p.due()
    p.close()


def test_eta_counts_from_a_resumed_step():
    console, _ = _terminal()
    clock = FakeClock()
    p = EpochProgress(out=console, clock=clock)
    p.start_epoch("e 2/2", total=10, completed=6)
    assert p.eta(6) == (None, None)
    clock.now += 4.0
    assert p.eta(8) == (4.0, 4.0)  # 2 s a step, 2 steps left, no later epoch
    p.close()


def test_pipe_prints_one_plain_line_per_epoch_only():
    console, buf = _pipe()
    p = EpochProgress(out=console)
    assert not p.live
    p.start_epoch("e 1/2", total=5)
    assert not p.due()  # nothing to compute for a bar that is not shown
    p.update(1, 1.0, 0.5, 10.0)
    p.end_epoch("epoch   1  loss 1.0000")
    p.close()
    assert buf.getvalue() == "epoch   1  loss 1.0000\n"


def test_heartbeat_prints_where_at_most_every_interval():
    console, buf = _pipe()
    clock = FakeClock()
    beat = Heartbeat(console, interval=30, clock=clock)
    assert not beat.tick(clock.now + 60)  # nothing set: nothing to say
    beat.set("analyze-conflicts: run 1/2 'kd': gradient conflicts, batch 1/4")
    assert not beat.tick(clock.now + 29)
    assert beat.tick(clock.now + 61)
    assert not beat.tick(clock.now + 70)  # 9 s after the last line
    beat.printed()  # another line went out at 100 s
    assert not beat.tick(clock.now + 29)
    assert beat.tick(clock.now + 91)
    assert buf.getvalue().splitlines() == [
        "analyze-conflicts: run 1/2 'kd': gradient conflicts, batch 1/4 (at work 0:01:01)",
        "analyze-conflicts: run 1/2 'kd': gradient conflicts, batch 1/4 (at work 0:01:31)",
    ]


def test_heartbeat_thread_starts_and_stops():
    console, _ = _pipe()
    beat = Heartbeat(console, interval=3600)
    beat.start()
    assert beat._thread is not None and beat._thread.is_alive()
    beat.stop()
    assert beat._thread is None


def test_analyze_conflicts_in_a_pipe_says_where_it_is():
    console, buf = _pipe()
    p = RunProgress(2, console=console)
    assert not p.live and p.beat is not None and p.beat.interval == HEARTBEAT_SECONDS == 30
    p.start(1, "kd")
    start = p.beat._last
    assert p.beat.tick(start + 31)
    p.update("batch 2/4, chunk 3/7, layer 2")
    assert not p.beat.tick(start + 40)
    assert p.beat.tick(start + 62)
    p.done(1, "kd", 70.0, 0.5)
    assert not p.beat.tick(start + 200)  # between runs: silent
    p.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("analyze-conflicts: run 1/2 'kd': logits, attention and entropy (at work ")
    assert lines[1].startswith("analyze-conflicts: run 1/2 'kd': gradient conflicts, batch 2/4, chunk 3/7, layer 2")
    assert lines[2] == "analyze-conflicts: run 1/2 'kd' done in 70.0 s (top-1 50.0%)"
    assert len(lines) == 3
    assert RunProgress(1, console=console, quiet=True).beat is None
    assert RunProgress(1, console=_terminal()[0]).beat is None  # a terminal has its live line


def test_training_on_a_terminal_shows_the_bar_and_epoch_lines(tmp_path, monkeypatch):
    """The trainer drives the bar from the first step: with every step 'due', each shows numbers."""
    from kdx.cli import app

    console, buf = _terminal()
    monkeypatch.setattr(progress_mod, "console", console)
    seen = []
    real_update = EpochProgress.update

    def update(self, completed, loss, acc, ips):
        seen.append(completed)
        real_update(self, completed, loss, acc, ips)

    monkeypatch.setattr(EpochProgress, "update", update)
    args = ["train-teacher", "--arch", "resnet8", "--epochs", "2", "--max-train-samples", "120", "--batch-size",
            "40", "--device", "cpu", "--out", str(tmp_path / "t")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen[0] == 1 and seen.count(3) == 2  # the first step of each epoch, and its last
    lines = _shown(buf.getvalue())
    assert "epoch   1" in lines and "epoch   2" in lines
