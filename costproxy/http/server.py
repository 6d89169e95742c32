"""Serving the application: HTTP hygiene, graceful drain, and several workers on one port.

``serve(settings, sock)`` runs the app on an already bound listening socket until SIGTERM or
SIGINT, then drains:

1. readiness goes false (``/readyz`` answers 503 ``draining``) and the listener closes, so no new
   connection is accepted;
2. requests and streams in flight get ``server.drain_timeout_s`` to finish; whatever is still
   running then is cancelled by ``Services.end_in_flight`` while aiohttp still holds its connection
   open, so its client is told (``server_shutting_down``: a stream's last error event, a unary 503)
   and the pipeline settles it in its ``finally`` (a cut stream is charged what was generated, a
   reservation is settled or released);
3. the application's cleanup runs: background tasks stop, the ledger writer flushes every accepted
   entry, Redis settlements that could not be sent are already in the durable outbox.

A second signal during the drain ends the process at once.

HTTP hygiene: idle connections — including one that never completes its request header (a
slowloris) — are closed after ``server.idle_timeout_s``; request bodies must arrive within
``server.body_timeout_s`` (``http.bodies``); errors of the HTTP parser (a malformed request line,
a header too long) are answered in OpenAI's error shape, not as plain text.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from costproxy.analyzer.encodings import trim_heap
from costproxy.errors import InternalError, MalformedRequest, ProxyError
from costproxy.http.app import create_app
from costproxy.http.messages_api import anthropic_path
from costproxy.http.state import DRAINING, SERVICES
from costproxy.observability import configure_logging
from costproxy.pipeline.services import Services
from costproxy.protocols.messages import error_body as messages_error_body
from costproxy.settings import Settings

log = structlog.get_logger("costproxy")


_QUOTED_BYTES = re.compile(r"""\s*(?:bytearray\()?b(['"]).*?\1\)?\s*(?:\^\s*)?""", re.DOTALL)


def parser_message(status: int, message: str | None) -> str:
    """The parser's message without the request bytes it quotes (``b'...'``): a header line too long
    to read is quoted from its start — ``Authorization: Bearer cp-…`` — and neither the answer nor the
    log line may carry a secret."""
    text = _QUOTED_BYTES.sub(" ", message or "").strip().rstrip(" :.")
    return text or HTTPStatus(status).phrase


_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} (/[^ \r\n?]{0,256})")
HEAD_KEPT = 280  # enough of a request's first bytes for its method and path (``_REQUEST_LINE``)


def parser_error_body(status: int, message: str | None, *, anthropic: bool = False) -> bytes:
    """An HTTP parser error in OpenAI's shape, Anthropic's on the Messages API's paths (the
    request never reached the application)."""
    error: ProxyError = InternalError("internal error while reading the request") if status >= 500 else \
        MalformedRequest(f"malformed HTTP request: {parser_message(status, message)[:200]}")
    return orjson.dumps(messages_error_body(error) if anthropic else error.body())


def request_path(head: bytes) -> str | None:
    """The path of the request line ``head`` starts with, if it starts with one."""
    found = _REQUEST_LINE.match(head)
    return found.group(1).decode("ascii", "replace") if found else None


class ProxyRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors in OpenAI's shape (Anthropic's on the
    Messages API's paths).

    A request the parser rejects reaches ``handle_error`` as a placeholder (path ``/``): the path
    is read from the latest request line received (``_head``: the first ``HEAD_KEPT`` bytes of the
    last chunk that began with one, or of a first line still arriving in pieces).  A best effort —
    a request line split across chunks after an earlier request's keeps that one's path — that only
    chooses the error's shape."""

    _head = b""

    def data_received(self, data: bytes) -> None:
        if _REQUEST_LINE.match(data):
            self._head = data[:HEAD_KEPT]
        elif b"\n" not in self._head and len(self._head) < HEAD_KEPT:  # a first line arriving in pieces
            self._head += data[:HEAD_KEPT - len(self._head)]
        super().data_received(data)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response is already on its way: only closing is left
            return super().handle_error(request, status, exc, message)
        log.info("http_parser_error", status=status, remote=request.remote,
                 error=parser_message(status, message) if message else type(exc).__name__)
        path = request.path if request.method != "UNKNOWN" else request_path(self._head) or "/"
        response = web.Response(status=status, body=parser_error_body(status, message, anthropic=anthropic_path(path)),
                                content_type="application/json")
        response.force_close()
        return response


class ProxyServer(Server):
    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """An ``AppRunner`` whose connections use ``ProxyRequestHandler``."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = ProxyServer  # same state, one overridden factory method
        return server


def access_logger(settings: Settings) -> logging.Logger | None:
    return logging.getLogger("aiohttp.access") if settings.server.access_log else None


async def serve(settings: Settings, sock: socket.socket, announce: Callable[[], None] | None = None,
                **app_options: Any) -> None:
    """Serve on ``sock`` until a signal, then drain (see the module docstring)."""
    app = create_app(settings, **app_options)
    server = settings.server
    runner = ProxyRunner(app, access_log=access_logger(settings), keepalive_timeout=server.idle_timeout_s,
                         shutdown_timeout=server.drain_timeout_s, handle_signals=False)
    await runner.setup()
    # What start-up built (modules, settings, registry, router, stores) lives as long as the
    # process: out of the collector's sight, full collections under traffic walk only what requests
    # allocated (measured in-process on auto traffic: ~3 µs a request instead of ~9).
    gc.collect()
    gc.freeze()
    # Start-up parsed YAML and built tables, then dropped the temporaries: give the free pages of the
    # heap back to the OS (glibc's malloc_trim; ~3 MB less resident at start, proxy_bench).
    trim_heap()
    stop = asyncio.Event()
    _on_signals(asyncio.get_running_loop(), stop)
    try:
        await web.SockSite(runner, sock).start()
        if announce is not None:
            announce()
        await stop.wait()
        app[DRAINING] = True
        log.info("draining", deadline_s=server.drain_timeout_s)
        # at the deadline, requests still running are ended by the pipeline itself (a last error event
        # for a stream, a 503 for a unary call) while aiohttp still holds their connections open
        asyncio.get_running_loop().call_later(server.drain_timeout_s, _end_in_flight, app[SERVICES])
    finally:
        await runner.cleanup()
    log.info("stopped")


def _end_in_flight(services: Services) -> None:
    ended = services.end_in_flight()
    if ended:
        log.warning("drain_deadline_ended_requests", count=ended)


def _on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def first() -> None:
        if stop.is_set():
            log.warning("second_signal_exit_now")
            os._exit(1)  # the operator asked twice: no more waiting
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, first)


def run(settings: Settings, sock: socket.socket, announce: Callable[[], None] | None = None,
        **app_options: Any) -> None:
    """Serve in this process (blocking) on the event loop policy already installed."""
    preload_encodings(settings)
    asyncio.run(serve(settings, sock, announce, **app_options))


def preload_encodings(settings: Settings) -> None:
    """Load the encodings a server loads at start (``STARTUP_ENCODINGS``) on this thread, before
    any event loop runs: built on the main thread, their tables go to the main heap (~5 MB less
    resident than built on a worker thread, whose malloc arena keeps the parse's fragments); the
    app's own load then finds them cached.  A no-op in a worker forked after ``_share_before_fork``.
    """
    from costproxy.analyzer.encodings import STARTUP_ENCODINGS, load_encodings

    load_encodings(STARTUP_ENCODINGS, directory=settings.encodings_dir)


# --- several workers on one port ----------------------------------------------------------------


RESTART_DELAY_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_settings(settings: Settings, index: int) -> Settings:
    """A worker's settings: its own local SQLite file (``-w<index>`` before the suffix)."""
    from dataclasses import replace

    root, dot, suffix = settings.store.local_path.rpartition(".")
    local = f"{root}-w{index}.{suffix}" if dot else f"{settings.store.local_path}-w{index}"
    return replace(settings, store=replace(settings.store, local_path=local))


def run_workers(settings: Settings, sock: socket.socket, announce: Callable[[], None] | None = None) -> int:
    """Fork ``server.workers`` processes that all accept on ``sock``; supervise them (a worker that
    dies is restarted), forward SIGTERM/SIGINT to them, and return when they have all drained: 0,
    or 1 when a worker ended badly while stopping (its drain crashed, or a second signal killed it).

    Budgets stay exact because every worker uses the shared Redis store (``costproxy serve``
    refuses several workers on SQLite); metrics are kept in files in a directory of this run and
    ``/metrics`` on any worker sums all of them.
    """
    count = settings.server.workers
    _share_before_fork(settings)
    metrics_dir = tempfile.mkdtemp(prefix="costproxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client in the workers
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        # SIGTERM/SIGINT are held across the fork: a signal that reached the new worker before it
        # reset the supervisor's handler would run that handler in the worker (which then served on,
        # its stop signal spent, and the supervisor waited for it forever); held, it is delivered
        # once the worker has the default action back, and ends it before it serves
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                _reset_child_signals()
                _end_with(supervisor)
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                _multiprocess_metrics()
                writer = configure_logging(settings.logging)  # the parent's writer thread did not fork
                try:
                    run(worker_settings(settings, index), sock, metrics_dir=metrics_dir)
                finally:
                    writer.close()
            except BaseException:  # the worker's outermost boundary: log, then exit non-zero
                log.exception("worker_crashed", worker=index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index  # known before a stop signal may run ``on_signal``, which forwards it to each child
        signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        kill = signal.SIGKILL if stopping else signal.SIGTERM  # a second signal ends at once
        if not stopping:
            # the supervisor's copy of the listener would keep it open after every worker closed
            # its own: new connections would wait in its backlog for the whole drain, then be reset
            sock.close()
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, kill)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    for index in range(count):
        spawn(index)
    if announce is not None:
        announce()
    failed = 0  # workers that ended badly while the supervisor was stopping (a drain that crashed)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        if stopping and os.waitstatus_to_exitcode(status) not in (0, *(-int(n) for n in STOP_SIGNALS)):
            # a worker that the forwarded signal ended by its default action had not started serving
            failed += 1
            log.error("worker_drain_failed", worker=index, status=os.waitstatus_to_exitcode(status))
        if not stopping:
            log.error("worker_exited", worker=index, status=os.waitstatus_to_exitcode(status))
            time.sleep(RESTART_DELAY_S)  # never a restart loop at full speed
            if not stopping:
                spawn(index)
    sock.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


def _share_before_fork(settings: Settings) -> None:
    """Load the encodings every worker loads at start here, once, so the workers inherit them (the
    BPE tables, ~45 MB for o200k_base, are never written after they are built: the forked workers
    share those pages instead of each building a copy of its own; an encoding only some models use,
    like cl100k_base, is still loaded by a worker when its traffic first needs it), then move every
    object so far out of the garbage collector's sight (``gc.freeze``): a worker's collections
    then do not write to the inherited objects' pages, which stay shared.
    """
    preload_encodings(settings)
    gc.collect()
    gc.freeze()


def _multiprocess_metrics() -> None:
    """Make prometheus_client keep values in ``PROMETHEUS_MULTIPROC_DIR`` files in this process
    (it picks its value class when first imported, which may have been before the fork)."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _reset_child_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


PR_SET_PDEATHSIG = 1


def _end_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when its supervisor dies, however it
    dies (SIGKILL included): orphaned workers would serve on and hold the port (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
