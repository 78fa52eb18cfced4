"""What a run shows in the terminal while it goes: counts per status and backend, jobs running,
the completion rate and an ETA.

Two displays with one interface (`update(by_backend, rows_total, elapsed_seconds, down)`, `close()`;
`down`: {backend: epoch seconds since it is not answering} — shown, and no ETA while one is down):

- `PlainDisplay`: one log line at most every `every_seconds` (CI, workers, piped output); the
  default, so a deployment run logs its progress to the Prefect UI as well;
- `LiveDisplay`: a rich table refreshed in place. It draws on the same rich Console as Prefect's
  console log handler, so log lines scroll above the table instead of tearing through it.

The flow asks `current_display(logger)` for the active one; the command line calls
`use_live_display()` when attached to a terminal.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Deque, Dict, Mapping, Optional, Tuple, Union

from jobdb.status import (
    CANCELED, ERROR, FINISHED, HOLDS_SLOT, QUEUED, RUNNING, SKIPPED, START_FAILED, STATUSES, TERMINAL,
)

# Column order of the table and of the plain line: as a row moves through them.
STATUS_ORDER = STATUSES
STATUS_STYLES = {RUNNING: "dark_orange", QUEUED: "blue", FINISHED: "green", ERROR: "red",
                 START_FAILED: "red", CANCELED: "magenta", SKIPPED: "bright_black"}
RATE_WINDOW_SECONDS = 300.0

ByBackend = Mapping[str, Mapping[str, int]]
Down = Mapping[str, float]  # backend -> epoch seconds since it is not answering


def clock(epoch_seconds: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch_seconds))


class RateTracker:
    """Rows reaching a terminal status per second over the last few minutes, and the ETA."""

    def __init__(self, window_seconds: float = RATE_WINDOW_SECONDS):
        self.window_seconds = window_seconds
        self.samples: Deque[Tuple[float, int]] = deque()

    def add(self, elapsed_seconds: float, terminal: int) -> None:
        self.samples.append((elapsed_seconds, terminal))
        while len(self.samples) > 2 and elapsed_seconds - self.samples[1][0] >= self.window_seconds:
            self.samples.popleft()

    def rate(self) -> Optional[float]:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def eta_seconds(self, remaining: int) -> Optional[float]:
        if remaining <= 0:
            return 0.0
        rate = self.rate()
        return remaining / rate if rate else None


def totals(by_backend: ByBackend) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for backend_counts in by_backend.values():
        for status, n in backend_counts.items():
            counts[status] = counts.get(status, 0) + int(n)
    return counts


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def ordered(counts: Mapping[str, int]) -> list:
    known = [(s, counts[s]) for s in STATUS_ORDER if counts.get(s)]
    return known + [(s, n) for s, n in sorted(counts.items()) if s not in STATUS_ORDER and n]


class _Display:
    def __init__(self) -> None:
        self.rates = RateTracker()
        self.down: Dict[str, float] = {}
        self.last: Optional[Tuple[Dict[str, Dict[str, int]], int, float]] = None
        self.waiting: Dict[str, str] = {}  # backend -> who holds the slots this run waits for

    def waiting_for_slots(self, holders: Mapping[str, str]) -> None:
        """Backends whose slots other runs hold while this run has rows to start (tasks/accounts/slots.py)."""
        self.waiting = dict(holders)

    def waiting_text(self) -> str:
        return "; ".join(f"{b}: waiting for slots held by {who}" for b, who in sorted(self.waiting.items()))

    def _record(self, by_backend: ByBackend, rows_total: int, elapsed_seconds: float,
                down: Optional[Down] = None) -> Dict[str, int]:
        self.down = dict(down or {})
        self.last = ({b: dict(c) for b, c in by_backend.items()}, rows_total, elapsed_seconds)
        counts = totals(by_backend)
        self.rates.add(elapsed_seconds, sum(n for s, n in counts.items() if s in TERMINAL))
        return counts

    def summary(self, counts: Mapping[str, int], rows_total: int, elapsed_seconds: float) -> str:
        terminal = sum(n for s, n in counts.items() if s in TERMINAL)
        percent = 100.0 * terminal / rows_total if rows_total else 100.0
        rate = self.rates.rate()
        eta = self.rates.eta_seconds(rows_total - terminal)
        pace = f"{rate * 60:.1f} rows/min, ETA {duration(eta)}" if rate else "rate: measuring"
        if self.down:  # the rate of before the outage says nothing about when the rest ends
            pace = "ETA unknown: " + ", ".join(f"{b} not answering since {clock(t)}" for b, t in sorted(self.down.items()))
        return f"{percent:3.0f}% ({terminal}/{rows_total} done) after {duration(elapsed_seconds)}, {pace}"


class PlainDisplay(_Display):
    """A log line at most every `every_seconds`, and one when the run is done."""

    def __init__(self, logger: Optional[Union[logging.Logger, logging.LoggerAdapter]] = None,
                 every_seconds: float = 30.0):
        super().__init__()
        self.logger = logger or logging.getLogger(__name__)
        self.every_seconds = every_seconds
        self._last_line_at: Optional[float] = None
        self._last_line: Optional[str] = None

    def update(self, by_backend: ByBackend, rows_total: int, elapsed_seconds: float,
               down: Optional[Down] = None) -> None:
        was_down = set(self.down)
        counts = self._record(by_backend, rows_total, elapsed_seconds, down)
        done = sum(n for s, n in counts.items() if s in TERMINAL) >= rows_total
        now = time.monotonic()
        if done or self._last_line_at is None or now - self._last_line_at >= self.every_seconds \
                or set(self.down) != was_down:
            self._emit(self.line(by_backend, counts, rows_total, elapsed_seconds))
            self._last_line_at = now

    def line(self, by_backend: ByBackend, counts: Mapping[str, int], rows_total: int, elapsed_seconds: float) -> str:
        statuses = ", ".join(f"{s} {n}" for s, n in ordered(counts))
        active = "; ".join(
            f"{backend}: " + ("NOT ANSWERING" if backend in self.down else
                              f"{sum(n for s, n in c.items() if s in HOLDS_SLOT)} active")
            for backend, c in sorted(by_backend.items()) if backend != "(unassigned)"
        )
        line = f"{self.summary(counts, rows_total, elapsed_seconds)} | {statuses}" + (f" | {active}" if active else "")
        return line + (f" | {self.waiting_text()}" if self.waiting else "")

    def _emit(self, line: str) -> None:
        if line != self._last_line:
            self.logger.info("%s", line)
            self._last_line = line

    def close(self) -> None:
        if self.last is not None:
            by_backend, rows_total, elapsed = self.last
            self._emit(self.line(by_backend, totals(by_backend), rows_total, elapsed))


class LiveDisplay(_Display):
    """A rich table per backend x status, redrawn in place (at most `refresh_per_second`)."""

    def __init__(self, console=None, refresh_per_second: float = 2.0):
        super().__init__()
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.refresh_per_second = refresh_per_second
        self._live = None
        self._columns: set = set()  # statuses seen so far: columns stay put as rows move on

    def update(self, by_backend: ByBackend, rows_total: int, elapsed_seconds: float,
               down: Optional[Down] = None) -> None:
        counts = self._record(by_backend, rows_total, elapsed_seconds, down)
        renderable = self.render(by_backend, counts, rows_total, elapsed_seconds)
        if self._live is None:
            from rich.live import Live
            from rich.theme import Theme

            # Prefect's console has a theme without rich's defaults (no table styles): add them
            # on top while the table is shown.
            self.console.push_theme(Theme())
            self._live = Live(renderable, console=self.console, refresh_per_second=self.refresh_per_second,
                              transient=False, redirect_stdout=True, redirect_stderr=True)
            self._live.start()
        else:
            self._live.update(renderable)

    def render(self, by_backend: ByBackend, counts: Mapping[str, int], rows_total: int, elapsed_seconds: float):
        from rich.table import Table

        self._columns.update(s for s, n in counts.items() if n)
        columns = [s for s, _ in ordered({s: 1 for s in self._columns})]
        table = Table(title=self.summary(counts, rows_total, elapsed_seconds), title_justify="left",
                      expand=False, show_footer=len(by_backend) > 1)
        table.add_column("backend", footer="all")
        for status in columns:
            table.add_column(status, justify="right", style=STATUS_STYLES.get(status, ""),
                             footer=str(counts.get(status, 0)))
        table.add_column("active", justify="right", footer=str(sum(n for s, n in counts.items() if s in HOLDS_SLOT)))
        for backend, c in sorted(by_backend.items()):
            table.add_row(f"[red]{backend} (not answering)[/red]" if backend in self.down else backend, *(str(c.get(s, 0) or "") for s in columns),
                          str(sum(n for s, n in c.items() if s in HOLDS_SLOT)))
        if self.waiting:
            table.caption, table.caption_justify = self.waiting_text(), "left"
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self.console.pop_theme()


Display = Union[PlainDisplay, LiveDisplay]
_live_display: Optional[LiveDisplay] = None


def current_display(logger: Optional[Union[logging.Logger, logging.LoggerAdapter]] = None,
                    every_seconds: float = 30.0) -> Display:
    """The live display when the command line turned one on, else a new plain one on `logger`."""
    if _live_display is not None:
        return _live_display
    return PlainDisplay(logger, every_seconds)


def use_live_display(console=None) -> LiveDisplay:
    """Turn the live display on for this process, drawn on `console` (default: the one Prefect's
    console log handler prints to, so both share the terminal)."""
    global _live_display
    stop_live_display()
    _live_display = LiveDisplay(console or prefect_console())
    return _live_display


def stop_live_display() -> None:
    global _live_display
    if _live_display is not None:
        _live_display.close()
        _live_display = None


def prefect_console():
    """The rich Console of Prefect's console log handler, or a new one on stderr."""
    from rich.console import Console

    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if type(handler).__name__ == "PrefectConsoleHandler" and isinstance(console, Console):
            return console
    return Console(stderr=True)
