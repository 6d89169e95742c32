"""The log writer: a logger structlog cached before logging was configured again (a worker forked
from a supervisor that had logged) writes to the new writer, not to the old one whose thread is gone."""

from __future__ import annotations

import io

import structlog

from costproxy.observability import configure_logging
from costproxy.settings import LoggingSettings
from tests.polling import eventually_sync


def test_a_logger_cached_before_logging_was_configured_again_writes_to_the_new_output() -> None:
    first, second = io.StringIO(), io.StringIO()
    settings = LoggingSettings()
    configure_logging(settings, first)
    log = structlog.get_logger("costproxy.test")
    log.info("supervisor_line")  # cached on first use, as the supervisor's module loggers are
    eventually_sync(lambda: "supervisor_line" in first.getvalue(), what="the first line written")
    writer = configure_logging(settings, second)  # what a forked worker does
    try:
        log.info("worker_line")
        eventually_sync(lambda: "worker_line" in second.getvalue(), what="the worker's line in its own output")
        assert "worker_line" not in first.getvalue()
    finally:
        writer.close()
        structlog.reset_defaults()  # the other tests' logging as it was
