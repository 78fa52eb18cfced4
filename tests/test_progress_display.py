"""The progress display: a rich table redrawn in place on a (fake) terminal, plain lines otherwise."""
from __future__ import annotations

import io
import logging
import re

import pytest
from rich.console import Console

from flows.console import progress_display as pd_module
from flows.console.progress_display import LiveDisplay, PlainDisplay, RateTracker, current_display, use_live_display

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def snapshot(finished: int, error: int = 0, total: int = 20):
    """Two backends, 3 running on each, the rest not started yet."""
    a_done, b_done = finished // 2, finished - finished // 2
    return {
        "sim-a": {"finished": a_done, "error": error, "running": 3, "not_started": 10 - a_done - error - 3},
        "sim-b": {"finished": b_done, "running": 3, "not_started": 10 - b_done - 3},
    }, total


def test_rate_and_eta():
    rates = RateTracker(window_seconds=100)
    assert rates.rate() is None and rates.eta_seconds(10) is None
    rates.add(0, 5)  # 5 rows were already done when the run started: not part of the rate
    rates.add(10, 7)
    rates.add(20, 9)
    assert rates.rate() == pytest.approx(0.2)
    assert rates.eta_seconds(10) == pytest.approx(50)
    assert rates.eta_seconds(0) == 0.0
    rates.add(400, 9)  # nothing for a long while: the old samples age out, the rate drops to 0
    assert rates.rate() == 0.0 and rates.eta_seconds(10) is None


def test_live_display_redraws_in_place_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system="standard")
    display = LiveDisplay(console, refresh_per_second=50)
    for step, (finished, error) in enumerate([(0, 0), (4, 1), (8, 1)]):
        by_backend, total = snapshot(finished, error)
        display.update(by_backend, total, elapsed_seconds=10.0 * step)
        console.print("a log line printed while the table is shown")
    display.close()
    raw = out.getvalue()
    text = ANSI.sub("", raw)
    assert "\x1b[2K" in raw or "\x1b[1A" in raw  # erase/cursor-up: redrawn in place, not appended
    assert text.count("a log line printed while the table is shown") == 3
    final = text[text.rindex("done)"):]
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in final.splitlines() if line.startswith("│")}
    assert set(rows) == {"sim-a", "sim-b", "all"}
    assert "45% (9/20 done) after 20s" in text  # 8 finished + 1 error of 20
    assert "rows/min, ETA" in text
    header = next(line for line in final.splitlines() if line.startswith("┃"))
    columns = [c.strip() for c in header.split("┃")[2:-1]]
    assert columns == ["not_started", "running", "finished", "error", "active"]
    assert rows["all"] == ["5", "6", "8", "1", "6"]  # 2 + 3 not started
    assert rows["sim-a"][columns.index("error")] == "1"


def test_plain_display_logs_at_most_every_n_seconds(caplog):
    logger = logging.getLogger("test.progress")
    display = PlainDisplay(logger, every_seconds=3600)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for finished in (0, 2, 4):
            display.update(*snapshot(finished), elapsed_seconds=finished)
        assert len(caplog.records) == 1  # the first update, then nothing within the hour
        display.update(*snapshot(14, error=0), elapsed_seconds=30)  # not done yet (6 running)
        assert len(caplog.records) == 1
        done = {"sim-a": {"finished": 10}, "sim-b": {"finished": 9, "error": 1}}
        display.update(done, 20, elapsed_seconds=40)  # the run is done: always a line
        display.close()  # nothing changed since: no repeated line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("  0% (0/20 done)") and "not_started 14, running 6" in lines[0]
    assert "sim-a: 3 active; sim-b: 3 active" in lines[0]
    assert lines[1].startswith("100% (20/20 done) after 40s") and "finished 19, error 1" in lines[1]


def test_current_display_plain_by_default_live_when_turned_on():
    logger = logging.getLogger("test.progress")
    assert isinstance(current_display(logger), PlainDisplay) and current_display(logger).logger is logger
    console = Console(file=io.StringIO(), force_terminal=True)
    try:
        live = use_live_display(console)
        assert current_display(logger) is live and live.console is console
    finally:
        pd_module.stop_live_display()
    assert isinstance(current_display(logger), PlainDisplay)
