"""A real, fault-injecting HTTP/1.1 feature server for tests and benchmarks.

The server speaks just enough HTTP/1.1 (keep-alive, pipelining, ``Content-Length``
request bodies; no chunked request bodies) on raw :mod:`asyncio`, so that faults
can be injected at byte level (connection resets, truncated bodies, one byte at a
time).  It only ever binds to ``127.0.0.1``.  Dependencies: the standard library
and :mod:`orjson`.

Endpoints (faults apply to the first three only):

``GET /features/{id}``
    ``{id}`` is ONE percent-encoded path segment (a raw ``/`` in it is a 404).
    200 ``{"id": "<id>", "features": {...}}``; unknown id: 404 ``{"error": "not found"}``.
``POST /batch`` with ``{"ids": [...]}``
    200 ``{"results": [{"id": ..., "features": {...}}, ...]}`` (unknown ids omitted);
    with ``?shape=object``: ``{"results": {"<id>": {...features...}, ...}}``.
``POST /get-online-features``
    The Feast feature-server format, column-major: ``metadata.feature_names`` is
    ``[<entity key>, feat...]`` and ``results[i]`` holds ``values``, ``statuses``
    and ``event_timestamps`` for column ``i`` (one entry per requested id).
``GET /_stats`` (``?brief=1`` omits the big lists) and ``POST /_reset``
    Statistics as JSON (see :meth:`FeatureServer.stats`) and their reset.
``POST /_raw-body?route=features|batch|feast``
    From now on answer that route 200 with exactly the request's body (even an empty one;
    ``&clear=1`` goes back to normal answers): how a test serves arbitrary JSON, or anything
    else, to a client run in another process.  ``&encoding=gzip`` sends it with that
    ``Content-Encoding`` (the body is then the compressed bytes: see :func:`gzip_padded`);
    ``&padding=N`` sends N spaces after it, streamed as the client reads (a body of any size,
    never held in memory).  See :attr:`Faults.raw_bodies`.

In-process use (pytest)::

    with FeatureServer({"a": {"x": 1.0}}, faults=Faults(latency=0.01)) as srv:
        httpx.get(f"{srv.url}/features/a")
        srv.faults.p_500 = 0.5          # takes effect for the next request
        assert srv.stats()["requests_total"] == 1

As a process (benchmarks, tests of the real CLI)::

    python tests/featureserver.py --db sample_data/features.db \\
        --table customer_features --key customer_id --latency 0.02 --p-500 0.05

prints exactly one line ``READY http://127.0.0.1:PORT`` once it listens, and
serves until SIGTERM/SIGINT (exit status 0).  ``--json-data PATH`` (a JSON object
``id -> {feature: value}``) replaces ``--db/--table/--key``.  ``--help`` lists
every fault flag; each maps 1:1 to a :class:`Faults` field.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import socket
import sqlite3
import struct
import sys
import threading
import time
import traceback
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import parse_qs, unquote

import orjson

__all__ = [
    "Faults",
    "FeatureServer",
    "FeatureValue",
    "gzip_padded",
    "load_json",
    "load_sqlite",
    "main",
]

HOST: Final = "127.0.0.1"
FeatureValue = float | int | str | None
Data = dict[str, dict[str, FeatureValue]]

_MAX_HEAD_BYTES: Final = 64 * 1024
_MAX_BODY_BYTES: Final = 64 * 1024 * 1024
_PAUSE_QUEUE: Final = 32  # pipelined requests queued before we stop reading
_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}
_NOT_FOUND: Final = b'{"error":"not found"}'
_EPOCH_TS: Final = "1970-01-01T00:00:00Z"
_PRESENT_TS: Final = "2024-01-01T00:00:00Z"
_STALE_TS: Final = "2000-01-01T00:00:00Z"
_FEAST_STATUSES: Final = ("PRESENT", "NULL_VALUE")
# Valid JSON prefixes that stop mid-document (p_malformed), per endpoint.
_MALFORMED: Final = {
    "features": b'{"id": "x", "features": {',
    "batch": b'{"results": [{"id": "x", "features": {"a": 1',
    "feast": b'{"metadata": {"feature_names": ["id", ',
}
_WRONG_SHAPES: Final = (b"[1, 2, 3]", b'{"foo": 1}')
_ROUTES: Final = ("features", "batch", "feast", "other")
TIMELINE_STEP: Final = 0.5  # seconds per entry of the statistics' timeline


@dataclass
class Faults:
    """Faults injected into ``/features``, ``/batch`` and ``/get-online-features``.

    Fields may be changed on a running server (``srv.faults.p_500 = 0.1``); the
    next request sees them.  Per request, in this order: the ``latency`` delay is
    applied to every answer; then ``redirect_to``, ``required_token``, ``fail_all``,
    ``fail_first``, ``fail_ids`` and ``raw_bodies`` (deterministic) win; otherwise ONE
    uniform draw from a
    ``random.Random(seed)`` picks at most one of the probabilistic faults, tried in
    the order ``p_reset, p_truncate, p_malformed, p_wrong_shape, p_500, p_502,
    p_503, p_504, p_429, p_stall, p_drip`` (the probabilities add up; keep the sum
    <= 1).  The draw happens for every faultable request, so a given seed yields
    the same fault sequence for the same request order.
    """

    latency: float = 0.0
    """Base delay in seconds before any answer."""
    latency_per_inflight: float = 0.0
    """Extra seconds per request in flight (this one included) when it is taken up."""
    p_500: float = 0.0
    p_502: float = 0.0
    p_503: float = 0.0
    p_504: float = 0.0
    p_429: float = 0.0
    retry_after: str = "1"
    """``Retry-After`` for 429s (and ``retry_after_on``): seconds, as a string."""
    retry_after_on: frozenset[int] = frozenset({429})
    """The statuses whose answers carry ``Retry-After``."""
    retry_after_date: bool = False
    """Send ``Retry-After`` as an HTTP-date ``retry_after`` seconds from now."""
    p_reset: float = 0.0
    """Close the connection with a TCP RST, no response at all."""
    p_truncate: float = 0.0
    """Send the headers and half of the body, then close (Content-Length lies)."""
    p_malformed: float = 0.0
    """200 with a body that is not valid JSON (correct Content-Length)."""
    p_wrong_shape: float = 0.0
    """200 with valid JSON of the wrong shape (``[1, 2, 3]`` or ``{"foo": 1}``)."""
    p_stall: float = 0.0
    stall_seconds: float = 30.0
    """Extra delay of a stalled request; ``math.inf`` never answers."""
    p_drip: float = 0.0
    drip_interval: float = 0.05
    """Seconds between the single bytes of a dripped response."""
    fail_all: bool = False
    """Every request gets 503 (a source that is down)."""
    fail_first: int = 0
    """The first this many requests get 503 (a burst: a backend restarting); counted from
    the start or the last statistics reset."""
    required_token: str | None = None
    """If set, requests without ``Authorization: Bearer <token>`` get 401."""
    redirect_to: str | None = None
    """If set, every request gets 302 with this ``Location``."""
    fail_ids: dict[str, int] = field(default_factory=dict)
    """``GET /features/{id}`` for these (decoded) ids always answers this status."""
    error_body_delay: float = 0.0
    """Seconds between the head and the body of the deterministic error answers
    (``required_token``, ``fail_all``, ``fail_first``, ``fail_ids``): the client knows the
    status long before the answer is complete."""
    raw_bodies: dict[str, bytes] = field(default_factory=dict)
    """Route (``features``, ``batch``, ``feast``) -> a body every request to it is answered
    with, status 200, sent as is (any bytes: JSON of any shape, or not JSON)."""
    raw_encodings: dict[str, str] = field(default_factory=dict)
    """Route -> the ``Content-Encoding`` its raw body is sent with (``gzip``: the raw body is
    compressed bytes, e.g. from :func:`gzip_padded`)."""
    raw_padding: dict[str, int] = field(default_factory=dict)
    """Route -> spaces sent after its raw body (counted in ``Content-Length``), written as the
    client reads them: a huge body that the server never holds."""
    outside_max_age_ids: set[str] = field(default_factory=set)
    """Feast: known ids answered with status ``OUTSIDE_MAX_AGE`` (values still sent)."""
    seed: int = 0
    """Seed of the fault draws (re-applied on ``faults`` assignment and stats reset)."""
    workers: int = 0
    """A queueing service: at most this many answers are being worked on at once (each for
    ``latency``); the others wait their turn in arrival order (0: no limit)."""
    capacity_schedule: tuple[tuple[float, int], ...] = ()
    """``(seconds, workers)`` steps: from that many seconds after the first request on,
    ``workers`` is the number given (a service losing capacity mid-run, then recovering)."""
    shed_over: int = 0
    """A load-shedding service: a request that arrives with more than this many in flight
    (itself included) is answered 503 at once, with ``Retry-After: retry_after`` (0: never)."""


# --------------------------------------------------------------------------- data


def _clean_value(value: Any) -> FeatureValue:
    if value is None or isinstance(value, float | int | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"unsupported feature value {value!r}")


def _normalize(data: Mapping[Any, Mapping[str, Any]]) -> Data:
    return {
        str(key): {str(k): _clean_value(v) for k, v in feats.items()} for key, feats in data.items()
    }


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def load_sqlite(path: str | Path, table: str, key: str) -> Data:
    """Read ``table`` of SQLite file ``path``: ``key`` -> all other columns.

    Ids become strings, NULL becomes None, BLOBs become hex strings.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True)
    try:
        cur = con.execute(f"SELECT * FROM {_quote_ident(table)}")
        columns = [d[0] for d in cur.description]
        if key not in columns:
            raise ValueError(f"key column {key!r} not in table {table!r}: {columns}")
        k = columns.index(key)
        data: Data = {}
        for row in cur:
            if row[k] is None:
                continue
            data[str(row[k])] = {
                col: _clean_value(v)
                for i, (col, v) in enumerate(zip(columns, row, strict=True))
                if i != k
            }
        return data
    finally:
        con.close()


def load_json(path: str | Path) -> Data:
    """Read a JSON object ``id -> {feature: value}``."""
    raw = orjson.loads(Path(path).read_bytes())
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(f"{path}: expected a JSON object id -> {{feature: value}}")
    return _normalize(raw)


# -------------------------------------------------------------------------- stats


class _Stats:
    """Counters, updated on the server loop, read (under the lock) from anywhere."""

    def __init__(self, max_recorded: int) -> None:
        self._lock = threading.Lock()
        self._max = max_recorded
        self.inflight = 0
        self._clear()

    def _clear(self) -> None:
        self.total = 0
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.max_inflight = self.inflight
        self.id_requests: Counter[str] = Counter()
        self.paths: list[str] = []
        self.decoded_ids: list[str] = []
        self.dropped = 0
        self.auth_values: set[str] = set()
        self.no_auth = 0
        self.rejected = False  # a 401 or 403 has been written
        self.after_rejection = 0
        self.queue_waits = 0  # answers that needed a worker (Faults.workers)
        self.queue_wait_total = 0.0  # seconds they waited for one
        self.first: float | None = None  # when the first counted request arrived
        # Per TIMELINE_STEP since the first request: answers (200/404), 503s, the most in
        # flight, and the queue waits begun in it (sum of seconds, count).
        self.timeline: list[list[float]] = []

    def reset(self) -> None:
        with self._lock:
            self._clear()

    def _slot(self) -> list[float]:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        index = int((now - self.first) / TIMELINE_STEP)
        while len(self.timeline) <= index:
            self.timeline.append([0, 0, 0, 0.0, 0])
        return self.timeline[index]

    def elapsed(self) -> float:
        """Seconds since the first counted request (0 before it)."""
        return 0.0 if self.first is None else time.monotonic() - self.first

    def received(self, route: str, target: str, auth: str | None) -> None:
        with self._lock:
            self.total += 1
            self.by_endpoint[route] += 1
            self.after_rejection += self.rejected
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            slot = self._slot()
            slot[2] = max(slot[2], self.inflight)
            if len(self.paths) < self._max:
                self.paths.append(target)
            else:
                self.dropped += 1
            if auth is None:
                self.no_auth += 1
            else:
                self.auth_values.add(auth)

    def done(self, n: int = 1) -> None:
        with self._lock:
            self.inflight -= n

    def decoded_id(self, key: str) -> None:
        with self._lock:
            self.id_requests[key] += 1
            if len(self.decoded_ids) < self._max:
                self.decoded_ids.append(key)

    def ids(self, keys: Iterable[str]) -> None:
        with self._lock:
            self.id_requests.update(keys)

    def status(self, code: int) -> None:
        with self._lock:
            self.by_status[code] += 1
            self.rejected = self.rejected or code in (401, 403)
            if self.first is not None and code in (200, 404, 503):
                self._slot()[1 if code == 503 else 0] += 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.queue_waits += 1
            self.queue_wait_total += seconds
            slot = self._slot()
            slot[3] += seconds
            slot[4] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def snapshot(self, brief: bool = False) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = {
                "requests_total": self.total,
                "requests_by_endpoint": {r: self.by_endpoint[r] for r in _ROUTES},
                "responses_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "faults": dict(sorted(self.faults.items())),
                "inflight": self.inflight,
                "max_inflight": self.max_inflight,
                "distinct_auth_values": len(self.auth_values),
                "requests_without_auth": self.no_auth,
                "requests_after_rejection": self.after_rejection,
                "distinct_ids": len(self.id_requests),
                "paths_dropped": self.dropped,
                "queue_wait_mean": (
                    self.queue_wait_total / self.queue_waits if self.queue_waits else 0.0
                ),
                "timeline_step": TIMELINE_STEP,
                "timeline": [list(slot) for slot in self.timeline],
            }
            if not brief:
                snap["id_requests"] = dict(self.id_requests)
                snap["paths"] = list(self.paths)
                snap["decoded_ids"] = list(self.decoded_ids)
            return snap


# ----------------------------------------------------------------------- protocol


class _Request:
    __slots__ = (
        "auth",
        "body",
        "counted",
        "error",
        "expect",
        "keep_alive",
        "method",
        "need",
        "route",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        *,
        keep_alive: bool,
        auth: str | None = None,
        need: int = 0,
        expect: bool = False,
        error: int = 0,
    ) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.auth = auth
        self.need = need
        self.expect = expect
        self.error = error
        self.body = b""
        self.route = ""
        self.counted = False


@dataclass(slots=True)
class _Plan:
    """What to do with a request once its delay has passed."""

    action: str  # "send" | "reset" | "truncate" | "drip" | "hang" | "split"
    data: bytes = b""
    head_len: int = 0
    status: int = 0
    delay: float = 0.0
    close: bool = False
    interval: float = 0.0
    padding: int = 0  # action "pad": spaces streamed after data
    worker: bool = False  # waits for one of Faults.workers before its delay starts


def _response(
    status: int,
    body: bytes,
    *,
    close: bool = False,
    headers: Iterable[tuple[str, str]] = (),
    padding: int = 0,
) -> tuple[bytes, int]:
    """Return the full response bytes (but ``padding``) and the length of its head."""
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "Server: featureserver",
        "Content-Type: application/json",
        f"Content-Length: {len(body) + padding}",
    ]
    head.extend(f"{k}: {v}" for k, v in headers)
    if close:
        head.append("Connection: close")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return raw + body, len(raw)


def _send(
    status: int,
    body: bytes,
    close: bool,
    delay: float = 0.0,
    headers: Iterable[tuple[str, str]] = (),
) -> _Plan:
    data, head_len = _response(status, body, close=close, headers=headers)
    return _Plan("send", data, head_len, status, delay, close)


def gzip_padded(body: bytes, spaces: int) -> bytes:
    """``body`` and ``spaces`` spaces after it, gzip-compressed (a gigabyte of spaces in about
    a megabyte: a gzip bomb that is valid JSON), in about a second where zlib takes four.

    After a full flush a compressor starts afresh, so one megabyte of spaces compresses to the
    same bytes every time: they are repeated, and the trailer's CRC (the second) and size
    computed here.
    """
    block = b" " * (1 << 20)
    whole, rest = divmod(spaces, len(block))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and trailer are ours
    flush = zlib.Z_FULL_FLUSH
    packed = deflate.compress(body) + deflate.flush(flush)
    packed += (deflate.compress(block) + deflate.flush(flush)) * whole if whole else b""
    packed += deflate.compress(block[:rest]) + deflate.flush()
    crc = zlib.crc32(body)
    for _ in range(whole):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(block[:rest], crc)
    size = (len(body) + spaces) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + packed + struct.pack("<II", crc, size)


def _split(plan: _Plan, body_delay: float) -> _Plan:
    """``plan`` with its body sent ``body_delay`` seconds after its head (if > 0)."""
    if body_delay > 0 and plan.action == "send":
        plan.action = "split"
        plan.interval = body_delay
    return plan


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _abort_with_rst(transport: asyncio.Transport) -> None:
    """Close with a TCP RST: ``abort()`` alone sends a FIN on a healthy socket."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them one at a time, in order."""

    def __init__(self, server: FeatureServer, loop: asyncio.AbstractEventLoop) -> None:
        self._srv = server
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: _Request | None = None  # head parsed, body incomplete
        self._queue: deque[_Request] = deque()
        self._current: _Request | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drip: asyncio.Task[None] | None = None  # a dripped or padded answer's writer
        self._writable = asyncio.Event()  # the transport's buffer is below its high mark
        self._writable.set()
        self._closed = False
        self._broken = False  # stop reading requests on this connection
        self._paused = False
        self._in_next = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._srv._conns.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drip is not None:
            self._drip.cancel()
            self._drip = None
        if self._current is not None:
            if self._current.counted:
                self._srv._stats.done()
            self._current = None
        self._drop_queue()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        buf = self._buf
        buf += data
        while not self._broken:
            req = self._pending
            if req is None:
                idx = buf.find(b"\r\n\r\n")
                if idx < 0:
                    if len(buf) > _MAX_HEAD_BYTES:
                        self._enqueue_error(431)
                    return
                head = bytes(buf[:idx]).lstrip(b"\r\n")
                del buf[: idx + 4]
                if not head:
                    continue
                parsed = self._parse_head(head)
                if parsed is None:
                    return
                req = parsed
                if req.need == 0:
                    self._enqueue(req)
                    continue
                self._pending = req
                if (
                    req.expect
                    and len(buf) < req.need
                    and self._current is None
                    and not self._queue
                    and self._transport is not None
                ):
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if len(buf) < req.need:
                return
            req.body = bytes(buf[: req.need])
            del buf[: req.need]
            self._pending = None
            self._enqueue(req)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- parsing

    def _parse_head(self, head: bytes) -> _Request | None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._enqueue_error(400)
            return None
        method, target, version = parts
        conn = b""
        length = 0
        auth: str | None = None
        expect = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._enqueue_error(400)
                return None
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if not 0 <= length <= _MAX_BODY_BYTES:
                    self._enqueue_error(400)
                    return None
            elif name == b"connection":
                conn = value.lower()
            elif name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"transfer-encoding":
                self._enqueue_error(501)  # chunked request bodies are not supported
                return None
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
        # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only if asked.
        keep_alive = b"close" not in conn if version == b"HTTP/1.1" else b"keep-alive" in conn
        return _Request(
            method.decode("latin-1"),
            target.decode("latin-1"),
            keep_alive=keep_alive,
            auth=auth,
            need=length,
            expect=expect,
        )

    # -- request queue

    def _enqueue(self, req: _Request) -> None:
        req.counted = self._srv._on_received(req)
        self._queue.append(req)
        if self._current is None:
            self._next()
        elif len(self._queue) > _PAUSE_QUEUE and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    def _enqueue_error(self, status: int) -> None:
        self._broken = True
        self._buf.clear()
        self._pending = None
        self._enqueue(_Request("", "", keep_alive=False, error=status))

    def _drop_queue(self) -> None:
        counted = sum(1 for r in self._queue if r.counted)
        self._queue.clear()
        if counted:
            self._srv._stats.done(counted)

    def _next(self) -> None:
        self._in_next = True
        try:
            while self._current is None and self._queue and not self._closed:
                req = self._queue.popleft()
                self._current = req
                if self._paused and len(self._queue) < _PAUSE_QUEUE // 4 and self._transport:
                    self._paused = False
                    self._transport.resume_reading()
                plan = self._srv._plan_safely(req)
                if plan.action == "hang":
                    return
                if plan.worker:
                    self._srv._queue_for_worker(self, plan)
                    return
                if plan.delay > 0:
                    self._timer = self._loop.call_later(plan.delay, self._execute, plan)
                    return
                self._execute(plan)
        finally:
            self._in_next = False

    def _finish(self, close: bool) -> None:
        req = self._current
        self._current = None
        if req is not None and req.counted:
            self._srv._stats.done()
        if close:
            self._broken = True
            self._drop_queue()
            if self._transport is not None and not self._transport.is_closing():
                self._transport.close()
        elif not self._in_next:
            self._next()

    def _execute(self, plan: _Plan) -> None:
        self._timer = None
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            return
        if plan.action == "reset":
            self._broken = True
            _abort_with_rst(transport)  # connection_lost() does the bookkeeping
            return
        self._srv._stats.status(plan.status)
        if plan.action == "send":
            transport.write(plan.data)
            self._finish(plan.close)
        elif plan.action == "truncate":
            body_len = len(plan.data) - plan.head_len
            transport.write(plan.data[: plan.head_len + body_len // 2])
            self._finish(close=True)
        elif plan.action == "drip":
            self._drip = self._loop.create_task(self._drip_out(plan))
        elif plan.action == "pad":
            self._drip = self._loop.create_task(self._pad_out(plan))
        elif plan.action == "split":  # the head now, the body after plan.interval
            transport.write(plan.data[: plan.head_len])
            self._timer = self._loop.call_later(plan.interval, self._send_body, plan)

    def _send_body(self, plan: _Plan) -> None:
        self._timer = None
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            return
        transport.write(plan.data[plan.head_len :])
        self._finish(plan.close)

    async def _pad_out(self, plan: _Plan) -> None:
        """The answer, then its padding a block at a time, as fast as the client reads."""
        transport = self._transport
        assert transport is not None
        transport.write(plan.data)
        block = b" " * min(plan.padding, 1 << 20)
        left = plan.padding
        while left > 0:
            await self._writable.wait()
            if transport.is_closing():
                return
            transport.write(block if left >= len(block) else block[:left])
            left -= len(block)
        self._drip = None
        self._finish(plan.close)

    async def _drip_out(self, plan: _Plan) -> None:
        transport = self._transport
        assert transport is not None
        data = plan.data
        for i in range(len(data)):
            if transport.is_closing():
                return
            transport.write(data[i : i + 1])
            if i + 1 < len(data):
                await asyncio.sleep(plan.interval)
        self._drip = None
        self._finish(plan.close)


# ------------------------------------------------------------------------- server


class FeatureServer:
    """The feature server.  ``with FeatureServer(data) as srv:`` runs it in a thread.

    ``data`` maps id -> {feature: value}; ids are looked up as strings.  For async
    callers, :meth:`serve` runs it on the current event loop instead.
    """

    def __init__(
        self,
        data: Mapping[Any, Mapping[str, Any]],
        faults: Faults | None = None,
        *,
        port: int = 0,
        feast_null_status: str = "PRESENT",
        max_recorded: int = 100_000,
    ) -> None:
        if feast_null_status not in _FEAST_STATUSES:
            raise ValueError(f"feast_null_status must be one of {_FEAST_STATUSES}")
        self._data = _normalize(data)
        self._columns: list[str] = list(
            dict.fromkeys(col for feats in self._data.values() for col in feats)
        )
        self._features_json: dict[str, bytes] = {}
        self._get_cache: dict[str, tuple[bytes, int]] = {}
        self._faults = faults if faults is not None else Faults()
        self._rng = random.Random(self._faults.seed)
        self._burst = 0  # requests answered 503 by fail_first so far
        self._busy = 0  # answers being worked on (Faults.workers)
        self._waiting: deque[tuple[_HttpProtocol, _Plan, float]] = deque()
        self.feast_null_status = feast_null_status
        self._requested_port = port
        self._port: int | None = None
        self._stats = _Stats(max_recorded)
        self._conns: set[_HttpProtocol] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None

    @classmethod
    def from_sqlite(cls, path: str | Path, table: str, key: str, **kwargs: Any) -> Self:
        """Build a server over ``table`` of a SQLite file (see :func:`load_sqlite`)."""
        return cls(load_sqlite(path, table, key), **kwargs)

    # -- public properties

    @property
    def data(self) -> Data:
        return self._data

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)

    def stats(self, brief: bool = False) -> dict[str, Any]:
        """A JSON-able snapshot of the statistics (what ``GET /_stats`` returns).

        Keys: ``requests_total``, ``requests_by_endpoint`` (features/batch/feast/
        other), ``responses_by_status`` (status code as a string -> count; truncated,
        dripped and stalled answers count under their status), ``faults`` (kind ->
        count), ``inflight``, ``max_inflight``, ``distinct_auth_values``,
        ``requests_without_auth``, ``requests_after_rejection`` (requests received after
        the first 401 or 403 was sent), ``distinct_ids``, ``paths_dropped``, and unless
        ``brief``: ``id_requests`` (id -> times asked, all endpoints), ``paths``
        (raw request targets in arrival order) and ``decoded_ids`` (ids decoded
        from ``GET /features/...``, in order).  ``/_stats`` and ``/_reset`` are
        never counted.
        """
        return self._stats.snapshot(brief)

    def reset_stats(self) -> None:
        """Zero the statistics (``max_inflight`` restarts at the current in-flight
        count) and re-seed the fault draws."""
        self._stats.reset()
        self._rng = random.Random(self._faults.seed)
        self._burst = 0

    def auth_seen(self, value: str) -> bool:
        """Whether some request carried exactly this ``Authorization`` value."""
        with self._stats._lock:
            return value in self._stats.auth_values

    # -- running

    async def serve(
        self,
        stop: asyncio.Event,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        """Serve on the running loop until ``stop`` is set; ``on_ready(url)`` once bound."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        server = await loop.create_server(
            lambda: _HttpProtocol(self, loop),
            host=HOST,
            port=self._requested_port,
            backlog=1024,
        )
        self._port = server.sockets[0].getsockname()[1]
        try:
            if on_ready is not None:
                on_ready(self.url)
            await stop.wait()
        finally:
            server.close()
            for conn in list(self._conns):
                conn.abort()
            await server.wait_closed()
            self._port = None

    def start(self) -> Self:
        """Start serving in a daemon thread with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="featureserver", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("feature server failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Stop the background thread (aborting open connections)."""
        thread, loop, stop = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        async def run() -> None:
            self._stop_event = asyncio.Event()
            await self.serve(self._stop_event, on_ready=lambda _url: ready.set())

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by start() when it happens early
            self._start_error = exc
        finally:
            ready.set()

    # -- request handling (all on the server loop)

    def _on_received(self, req: _Request) -> bool:
        """Route a fully received request; count it unless it is an admin request."""
        if req.error:
            return False
        path = req.target.partition("?")[0]
        if path in ("/_stats", "/_reset", "/_raw-body"):
            req.route = "admin"
            return False
        if path.startswith("/features/"):
            req.route = "features"
        elif path == "/batch":
            req.route = "batch"
        elif path == "/get-online-features":
            req.route = "feast"
        else:
            req.route = "other"
        self._stats.received(req.route, req.target, req.auth)
        return True

    def _workers(self) -> int:
        """Faults.workers, or the capacity schedule's step for now."""
        f = self._faults
        workers = f.workers
        elapsed = self._stats.elapsed()
        for after, count in f.capacity_schedule:
            if elapsed >= after:
                workers = count
        return workers

    def _queue_for_worker(self, conn: _HttpProtocol, plan: _Plan) -> None:
        """Serve ``plan`` when a worker is free (now, or after those waiting before it)."""
        assert self._loop is not None
        self._waiting.append((conn, plan, self._loop.time()))
        self._next_worker()

    def _next_worker(self) -> None:
        assert self._loop is not None
        while self._waiting and self._busy < self._workers():
            conn, plan, queued = self._waiting.popleft()
            if conn._closed:
                continue
            self._busy += 1
            self._stats.waited(self._loop.time() - queued)
            self._loop.call_later(plan.delay, self._worker_done, conn, plan)

    def _worker_done(self, conn: _HttpProtocol, plan: _Plan) -> None:
        self._busy -= 1
        conn._execute(plan)
        self._next_worker()

    def _plan_safely(self, req: _Request) -> _Plan:
        try:
            return self._plan(req)
        except Exception:  # a bug here must not silently kill the connection
            traceback.print_exc(file=sys.stderr)
            self._stats.fault("internal_error")
            return _send(500, _error_body("internal server error"), close=True)

    def _plan(self, req: _Request) -> _Plan:
        close = not req.keep_alive
        if req.error:
            return _send(req.error, _error_body(_REASONS.get(req.error, "error")), True)
        path, _, query = req.target.partition("?")
        route = req.route
        if route == "admin":
            return self._plan_admin(req.method, path, query, close, req.body)
        if route == "other":
            return _send(404, _error_body("no such route"), close)
        method = "GET" if route == "features" else "POST"
        if req.method != method:
            return _send(405, _error_body("method not allowed"), close, headers=[("Allow", method)])

        render: Callable[[], tuple[int, bytes]]
        key = segment = ""
        if route == "features":
            segment = path[len("/features/") :]
            key = unquote(segment)
            self._stats.decoded_id(key)
            render = partial(self._render_get, segment, key)
        elif route == "batch":
            shape = parse_qs(query).get("shape", ["list"])[-1] if query else "list"
            render = self._prepare_batch(req.body, shape)
        else:
            render = self._prepare_feast(req.body)

        f = self._faults
        draw = self._rng.random()
        delay = f.latency + f.latency_per_inflight * self._stats.inflight
        stats = self._stats
        if f.redirect_to:
            stats.fault("redirect")
            return _send(302, _error_body("moved"), close, delay, [("Location", f.redirect_to)])
        if f.required_token is not None and req.auth != f"Bearer {f.required_token}":
            stats.fault("unauthorized")
            plan = _send(
                401, _error_body("unauthorized"), close, delay, [("WWW-Authenticate", "Bearer")]
            )
            return _split(plan, f.error_body_delay)
        if f.shed_over and stats.inflight > f.shed_over:
            stats.fault("shed")
            return _send(
                503, _error_body("overloaded"), close, headers=[("Retry-After", f.retry_after)]
            )
        if f.fail_all:
            stats.fault("fail_all")
            return _split(self._plan_status(503, f, close, delay), f.error_body_delay)
        if self._burst < f.fail_first:
            self._burst += 1
            stats.fault("fail_first")
            return _split(self._plan_status(503, f, close, delay), f.error_body_delay)
        if route == "features" and f.fail_ids and key in f.fail_ids:
            status = f.fail_ids[key]
            stats.fault("fail_id")
            return _split(self._plan_status(status, f, close, delay), f.error_body_delay)
        raw = f.raw_bodies.get(route)
        if raw is not None:
            stats.fault("raw_body")
            encoding = f.raw_encodings.get(route)
            padding = f.raw_padding.get(route, 0)
            data, head_len = _response(
                200,
                raw,
                close=close,
                headers=[("Content-Encoding", encoding)] if encoding else [],
                padding=padding,
            )
            return _Plan(
                "pad" if padding else "send", data, head_len, 200, delay, close, 0.0, padding
            )

        kind, frac = _pick(f, draw)
        if kind is not None:
            stats.fault(kind)
        if kind is None or kind in ("truncate", "stall", "drip"):
            if kind == "stall":
                if math.isinf(f.stall_seconds):
                    return _Plan("hang")
                delay += f.stall_seconds
            # Fast path: a keep-alive hit of GET /features/{id} is one dict lookup.
            cacheable = route == "features" and kind is None and not close and "/" not in segment
            worker = kind is None and (f.workers > 0 or bool(f.capacity_schedule))
            if cacheable and (cached := self._get_cache.get(key)) is not None:
                return _Plan("send", cached[0], cached[1], 200, delay, worker=worker)
            status, body = render()
            if cacheable and status == 200:
                data, head_len = self._get_cache[key] = _response(200, body)
                return _Plan("send", data, head_len, 200, delay, worker=worker)
            plan = _send(status, body, close, delay)
            plan.worker = worker
            if kind == "truncate":
                plan.action = "truncate"
            elif kind == "drip":
                plan.action = "drip"
                plan.interval = f.drip_interval
            return plan
        if kind == "reset":
            return _Plan("reset", delay=delay)
        if kind == "malformed":
            return _send(200, _MALFORMED[route], close, delay)
        if kind == "wrong_shape":
            return _send(200, _WRONG_SHAPES[frac >= 0.5], close, delay)
        return self._plan_status(int(kind[-3:]), f, close, delay)  # "http_NNN"

    def _plan_status(self, status: int, f: Faults, close: bool, delay: float) -> _Plan:
        """An error answer of ``status`` (with ``Retry-After`` if ``f`` says so)."""
        headers: list[tuple[str, str]] = []
        if status in f.retry_after_on:
            retry_after = f.retry_after
            if f.retry_after_date:
                with contextlib.suppress(ValueError):
                    retry_after = formatdate(time.time() + float(retry_after), usegmt=True)
            headers.append(("Retry-After", retry_after))
        body = _NOT_FOUND if status == 404 else _error_body(f"injected {status}")
        return _send(status, body, close, delay, headers)

    def _plan_admin(
        self, method: str, path: str, query: str, close: bool, body: bytes = b""
    ) -> _Plan:
        if path == "/_stats" and method == "GET":
            brief = parse_qs(query).get("brief", ["0"])[-1] not in ("", "0", "false")
            return _send(200, orjson.dumps(self.stats(brief)), close)
        if path == "/_reset" and method == "POST":
            self.reset_stats()
            return _send(200, b'{"ok":true}', close)
        if path == "/_raw-body" and method == "POST":
            route = parse_qs(query).get("route", [""])[-1]
            if route not in _ROUTES[:3]:
                return _send(400, _error_body("route must be features, batch or feast"), close)
            bodies = dict(self._faults.raw_bodies)
            encodings = dict(self._faults.raw_encodings)
            padding = dict(self._faults.raw_padding)
            params = parse_qs(query)
            for table in (bodies, encodings, padding):
                table.pop(route, None)
            if not params.get("clear"):
                bodies[route] = body
                if "encoding" in params:
                    encodings[route] = params["encoding"][-1]
                if "padding" in params:
                    padding[route] = int(params["padding"][-1])
            self._faults = replace(
                self._faults, raw_bodies=bodies, raw_encodings=encodings, raw_padding=padding
            )
            return _send(200, b'{"ok":true}', close)
        return _send(405, _error_body("method not allowed"), close)

    # -- rendering

    def _feature_bytes(self, key: str) -> bytes:
        raw = self._features_json.get(key)
        if raw is None:
            raw = self._features_json[key] = orjson.dumps(self._data[key])
        return raw

    def _render_get(self, segment: str, key: str) -> tuple[int, bytes]:
        if "/" in segment or key not in self._data:
            return 404, _NOT_FOUND
        features = self._feature_bytes(key)
        return 200, b'{"id":' + orjson.dumps(key) + b',"features":' + features + b"}"

    def _prepare_batch(self, body: bytes, shape: str) -> Callable[[], tuple[int, bytes]]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return lambda: (400, _error_body("body is not JSON"))
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list):
            return lambda: (400, _error_body('expected {"ids": [...]}'))
        keys = [i if isinstance(i, str) else str(i) for i in ids]
        self._stats.ids(keys)
        if shape not in ("list", "object"):
            return lambda: (400, _error_body("shape must be list or object"))

        def render() -> tuple[int, bytes]:
            data = self._data
            if shape == "object":
                parts = [
                    orjson.dumps(k) + b":" + self._feature_bytes(k)
                    for k in dict.fromkeys(keys)
                    if k in data
                ]
                return 200, b'{"results":{' + b",".join(parts) + b"}}"
            parts = [
                b'{"id":' + orjson.dumps(i) + b',"features":' + self._feature_bytes(k) + b"}"
                for i, k in zip(ids, keys, strict=True)
                if k in data
            ]
            return 200, b'{"results":[' + b",".join(parts) + b"]}"

        return render

    def _prepare_feast(self, body: bytes) -> Callable[[], tuple[int, bytes]]:
        def bad(message: str, status: int = 400) -> Callable[[], tuple[int, bytes]]:
            return lambda: (status, orjson.dumps({"error": message, "detail": message}))

        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return bad("body is not JSON")
        if not isinstance(payload, dict):
            return bad("body must be a JSON object")
        entities = payload.get("entities")
        if not isinstance(entities, dict) or len(entities) != 1:
            return bad("entities must map exactly one entity key to a list of ids")
        ((entity_key, ids),) = entities.items()
        if not isinstance(ids, list):
            return bad("entity values must be a list")
        keys = [i if isinstance(i, str) else str(i) for i in ids]
        self._stats.ids(keys)

        columns: list[tuple[str, str]] = []  # (view, feature)
        service = payload.get("feature_service")
        if service:
            columns = [(str(service), col) for col in self._columns]
        else:
            features = payload.get("features")
            if not isinstance(features, list) or not all(isinstance(x, str) for x in features):
                return bad("features must be a list of strings")
            for ref in features:
                view, _, feat = ref.rpartition(":")
                columns.append((view, feat))
            known = set(self._columns)
            unknown = [f"{v}:{c}" if v else c for v, c in columns if c not in known]
            if unknown:
                return bad(f"feature not found: {', '.join(unknown)}", 404)
        full = bool(payload.get("full_feature_names"))
        names = [entity_key] + [f"{v}__{c}" if full and v else c for v, c in columns]

        def render() -> tuple[int, bytes]:
            n = len(ids)
            rows = [self._data.get(k) for k in keys]
            stale = self._faults.outside_max_age_ids
            null_status = self.feast_null_status
            results: list[dict[str, list[Any]]] = [
                {"values": ids, "statuses": ["PRESENT"] * n, "event_timestamps": [_EPOCH_TS] * n}
            ]
            for _, col in columns:
                values: list[Any] = []
                statuses: list[str] = []
                stamps: list[str] = []
                for k, row in zip(keys, rows, strict=True):
                    if row is None:
                        values.append(None)
                        statuses.append("NOT_FOUND")
                        stamps.append(_EPOCH_TS)
                        continue
                    value = row.get(col)
                    values.append(value)
                    if k in stale:
                        statuses.append("OUTSIDE_MAX_AGE")
                        stamps.append(_STALE_TS)
                    else:
                        statuses.append(null_status if value is None else "PRESENT")
                        stamps.append(_PRESENT_TS)
                results.append({"values": values, "statuses": statuses, "event_timestamps": stamps})
            return 200, orjson.dumps({"metadata": {"feature_names": names}, "results": results})

        return render


_DRAW_ORDER: Final = (
    ("reset", "p_reset"),
    ("truncate", "p_truncate"),
    ("malformed", "p_malformed"),
    ("wrong_shape", "p_wrong_shape"),
    ("http_500", "p_500"),
    ("http_502", "p_502"),
    ("http_503", "p_503"),
    ("http_504", "p_504"),
    ("http_429", "p_429"),
    ("stall", "p_stall"),
    ("drip", "p_drip"),
)


def _pick(f: Faults, draw: float) -> tuple[str | None, float]:
    """Map one uniform draw to a fault kind (or None) and the draw's position in it."""
    acc = 0.0
    for kind, attr in _DRAW_ORDER:
        p: float = getattr(f, attr)
        if p > 0:
            if draw < acc + p:
                return kind, (draw - acc) / p
            acc += p
    return None, 0.0


# ---------------------------------------------------------------------------- CLI


def _fail_id(text: str) -> tuple[str, int]:
    key, sep, status = text.rpartition("=")
    if not sep or not status.isdigit():
        raise argparse.ArgumentTypeError(f"expected ID=STATUS, got {text!r}")
    return key, int(status)


def _build_parser() -> argparse.ArgumentParser:
    d = Faults()
    p = argparse.ArgumentParser(
        prog="featureserver",
        description="Fault-injecting HTTP feature server (binds 127.0.0.1 only).",
    )
    src = p.add_argument_group("data")
    src.add_argument("--db", type=Path, help="SQLite file (with --table and --key)")
    src.add_argument("--table", help="table holding one row per id")
    src.add_argument("--key", help="id column; every other column is a feature")
    src.add_argument("--json-data", type=Path, help="JSON object id -> {feature: value}")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the fault draws")
    p.add_argument(
        "--feast-null-status",
        choices=_FEAST_STATUSES,
        default="PRESENT",
        help="Feast status of a stored null value (default PRESENT)",
    )
    p.add_argument(
        "--max-recorded",
        type=int,
        default=100_000,
        help="cap of the recorded paths/decoded ids lists",
    )
    fg = p.add_argument_group("faults")
    fg.add_argument("--latency", type=float, default=d.latency, help="seconds before answering")
    fg.add_argument(
        "--latency-per-inflight",
        type=float,
        default=d.latency_per_inflight,
        help="extra seconds per request in flight",
    )
    for code in (500, 502, 503, 504, 429):
        fg.add_argument(
            f"--p-{code}", type=float, default=0.0, help=f"probability of a {code} answer"
        )
    fg.add_argument("--retry-after", default=d.retry_after, help="Retry-After seconds for 429s")
    fg.add_argument(
        "--retry-after-date", action="store_true", help="send Retry-After as an HTTP-date"
    )
    fg.add_argument("--p-reset", type=float, default=0.0, help="probability of a TCP reset")
    fg.add_argument("--p-truncate", type=float, default=0.0, help="probability of a body cut short")
    fg.add_argument(
        "--p-malformed", type=float, default=0.0, help="probability of a 200 with invalid JSON"
    )
    fg.add_argument(
        "--p-wrong-shape",
        type=float,
        default=0.0,
        help="probability of a 200 with JSON of the wrong shape",
    )
    fg.add_argument("--p-stall", type=float, default=0.0, help="probability of a stall")
    fg.add_argument(
        "--stall-seconds",
        type=float,
        default=d.stall_seconds,
        help="length of a stall; 'inf' never answers",
    )
    fg.add_argument(
        "--p-drip",
        type=float,
        default=0.0,
        help="probability of a response sent one byte at a time",
    )
    fg.add_argument(
        "--drip-interval", type=float, default=d.drip_interval, help="seconds between dripped bytes"
    )
    fg.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="a queueing service: N answers worked on at once (each --latency), the rest wait",
    )
    fg.add_argument(
        "--capacity-schedule",
        default="",
        metavar="S:N,...",
        help="from S seconds after the first request on, N workers (e.g. 3:12,9:48)",
    )
    fg.add_argument(
        "--shed-over",
        type=int,
        default=0,
        metavar="N",
        help="a load-shedding service: over N in flight, answer 503 + Retry-After at once",
    )
    fg.add_argument("--fail-all", action="store_true", help="answer every request 503")
    fg.add_argument(
        "--fail-first", type=int, default=0, metavar="N", help="answer the first N requests 503"
    )
    fg.add_argument(
        "--retry-after-on",
        type=int,
        action="append",
        default=[],
        metavar="STATUS",
        help="also send Retry-After with this status (repeatable; 429 always has it)",
    )
    fg.add_argument(
        "--error-body-delay",
        type=float,
        default=0.0,
        help="seconds between head and body of the deterministic error answers",
    )
    fg.add_argument(
        "--raw-body",
        action="append",
        default=[],
        metavar="ROUTE=PATH",
        help="answer ROUTE (features, batch, feast) 200 with the bytes of PATH (repeatable)",
    )
    fg.add_argument(
        "--raw-encoding",
        action="append",
        default=[],
        metavar="ROUTE=ENCODING",
        help="send ROUTE's raw body with this Content-Encoding (its bytes are compressed)",
    )
    fg.add_argument(
        "--raw-padding",
        action="append",
        default=[],
        metavar="ROUTE=BYTES",
        help="stream BYTES spaces after ROUTE's raw body (repeatable)",
    )
    fg.add_argument("--required-token", help="require 'Authorization: Bearer TOKEN', else 401")
    fg.add_argument("--redirect-to", help="answer every request 302 to this Location")
    fg.add_argument(
        "--fail-id",
        type=_fail_id,
        action="append",
        default=[],
        metavar="ID=STATUS",
        help="always answer STATUS for this id (repeatable)",
    )
    fg.add_argument(
        "--outside-max-age-id",
        action="append",
        default=[],
        metavar="ID",
        help="Feast: status OUTSIDE_MAX_AGE for this id (repeatable)",
    )
    return p


def _faults_from_args(args: argparse.Namespace) -> Faults:
    return replace(
        Faults(),
        latency=args.latency,
        latency_per_inflight=args.latency_per_inflight,
        p_500=args.p_500,
        p_502=args.p_502,
        p_503=args.p_503,
        p_504=args.p_504,
        p_429=args.p_429,
        retry_after=args.retry_after,
        retry_after_date=args.retry_after_date,
        p_reset=args.p_reset,
        p_truncate=args.p_truncate,
        p_malformed=args.p_malformed,
        p_wrong_shape=args.p_wrong_shape,
        p_stall=args.p_stall,
        stall_seconds=args.stall_seconds,
        p_drip=args.p_drip,
        drip_interval=args.drip_interval,
        fail_all=args.fail_all,
        fail_first=args.fail_first,
        retry_after_on=frozenset({429, *args.retry_after_on}),
        error_body_delay=args.error_body_delay,
        raw_bodies={
            route: Path(path).read_bytes()
            for route, _, path in (text.partition("=") for text in args.raw_body)
        },
        raw_encodings=dict(text.partition("=")[::2] for text in args.raw_encoding),
        raw_padding={
            route: int(size) for route, _, size in (t.partition("=") for t in args.raw_padding)
        },
        required_token=args.required_token,
        redirect_to=args.redirect_to,
        fail_ids=dict(args.fail_id),
        outside_max_age_ids=set(args.outside_max_age_id),
        seed=args.seed,
        workers=args.workers,
        capacity_schedule=tuple(
            (float(after), int(count))
            for after, _, count in (
                step.partition(":") for step in args.capacity_schedule.split(",") if step
            )
        ),
        shed_over=args.shed_over,
    )


async def _serve_until_signal(server: FeatureServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.serve(stop, on_ready=lambda url: print(f"READY {url}", flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.json_data is not None:
        if args.db is not None:
            parser.error("give either --json-data or --db, not both")
        data = load_json(args.json_data)
    elif args.db is not None and args.table and args.key:
        data = load_sqlite(args.db, args.table, args.key)
    else:
        parser.error("give --db PATH --table T --key K, or --json-data PATH")
    server = FeatureServer(
        data,
        _faults_from_args(args),
        port=args.port,
        feast_null_status=args.feast_null_status,
        max_recorded=args.max_recorded,
    )
    asyncio.run(_serve_until_signal(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
