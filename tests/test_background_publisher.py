"""The flow's background thread for Prefect API calls (flows/run_loop/background.py): what a
stopping run leaves behind when the API does not answer in time."""
from __future__ import annotations

import logging
import threading

from flows.run_loop.background import BackgroundPublisher


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_close_that_times_out_drops_what_is_left_and_reports_nothing_afterwards():
    """A run's end waits for its last artifacts only so long. The call under way then ends
    unreported (its logger reaches the Prefect API, which may be gone: a script's exit hung 2 min
    on such a log line, bench/README.md), and the calls not started never run."""
    logger = logging.getLogger("test-background-publisher")
    lines = Lines()
    logger.addHandler(lines)
    entered, release = threading.Event(), threading.Event()
    ran = []

    def stuck() -> None:
        entered.set()
        release.wait(60)
        raise ConnectionError("the API is gone")

    publisher = BackgroundPublisher(logger)
    try:
        first = publisher.call(stuck)
        assert entered.wait(60)
        later = publisher.call(lambda: ran.append("later"))
        assert publisher.close(timeout=0.01) is False
        assert later.cancelled()
        release.set()
        assert isinstance(first.exception(timeout=60), ConnectionError)
        publisher._thread.join(60)
        assert not publisher._thread.is_alive()
        assert ran == [] and lines.messages == []
    finally:
        release.set()
        logger.removeHandler(lines)


def test_a_failed_call_is_reported_while_the_run_goes_on():
    logger = logging.getLogger("test-background-publisher-2")
    lines = Lines()
    logger.addHandler(lines)
    publisher = BackgroundPublisher(logger)
    try:
        def fail() -> None:
            raise ConnectionError("down for a while")

        publisher.call(fail)
        done = publisher.call(lambda: "sent")
        assert done.result(timeout=60) == "sent"
        assert publisher.close(timeout=60) is True
        assert lines.messages == ["Prefect API call failed (the run goes on): down for a while"]
    finally:
        logger.removeHandler(lines)
