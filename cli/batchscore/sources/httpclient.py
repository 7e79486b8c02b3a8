"""The HTTP client of the http and feast sources: one pooled ``aiohttp.ClientSession`` per source.

aiohttp is the one HTTP client, chosen by measurement (``bench/results/http-clients.md``): at 64
connections and 20 ms of latency it does ~2,400 requests/s where httpx on aiohttp's pool did
~1,500 and httpx's own pool ~60, because httpx's request and response objects cost ~125 us of
event-loop time per request and the loop is the bottleneck of a per-ID run.

:class:`Endpoint` makes one source's requests: every attempt holds a slot of the shared
:class:`~batchscore.sources.limits.Limits`, the per-source ``timeout`` bounds the whole attempt
(connect, headers and body: a server that stalls or drips bytes is cut off), statuses become
answers or failures as SPEC.md says, and :mod:`~batchscore.sources.retry` decides what to retry.
URLs are sent exactly as given (already percent-encoded: ``%2F`` and ``%2E`` stay one path
segment); credentials in a URL leave it for a Basic ``Authorization`` header.  Redirects are never
followed; TLS is verified unless the config says ``insecure = true``; proxy variables from the
environment are never read.  Everything that does not change per request (the session, its
headers, the no-timeout :class:`aiohttp.ClientTimeout`) is built once, in :meth:`Endpoint.open`.
A body is read as it arrives, decompressed a block at a time, up to the source's
``max_response_bytes`` (:func:`read_capped`): a gzip bomb or an endless body costs that much
memory at most, and fails its IDs with ``response_too_large``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import orjson
import yarl
from aiohttp import hdrs
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDict, CIMultiDictProxy

from batchscore import __version__, jsontext
from batchscore.errors import ConfigError, SourceDownError
from batchscore.report import RunStats
from batchscore.sources import NOT_FOUND, Failure
from batchscore.sources.configs import ClientOptions
from batchscore.sources.limits import Limits
from batchscore.sources.retry import (
    RETRYABLE_STATUSES,
    AttemptFailed,
    RetryPolicy,
    SourceHealth,
    call,
    parse_retry_after,
)

log = logging.getLogger("batchscore.sources")

T = TypeVar("T")
Headers = CIMultiDictProxy[str]

MALFORMED = "malformed_response"
TOO_LARGE = "response_too_large"
READ_BLOCK = 1 << 20
"""Decoded bytes aiohttp may buffer (and decompress in one step) ahead of the reader: a whole
usual answer, read without pausing the connection, while a bomb inflates a block at a time."""
USER_AGENT = f"batchscore/{__version__}"
KEEPALIVE_SECONDS = 30.0
NO_TIMEOUTS = aiohttp.ClientTimeout()  # aiohttp's own limits off: asyncio.timeout bounds attempts

# Transport failures, most specific first: (exception type, reason, retryable).  A certificate
# the source's CA bundle does not accept will not change on a retry; everything else here is
# the network or the server having a bad moment.  aiohttp's types cover what it raises (its
# ClientConnectorError includes proxy connection failures; ServerDisconnectedError and
# ConnectionDropped are ClientConnectionErrors); ssl and OSError what escapes it.
TRANSPORT_FAILURES: tuple[tuple[type[BaseException], str, bool], ...] = (
    (aiohttp.ClientConnectorCertificateError, "tls_error", False),
    (aiohttp.ClientSSLError, "tls_error", False),
    (ssl.SSLError, "tls_error", False),
    (aiohttp.ClientConnectorError, "connect_error", True),
    (aiohttp.ClientPayloadError, "truncated_response", True),
    (aiohttp.ServerTimeoutError, "timeout", True),
    (aiohttp.ClientConnectionError, "connection_error", True),
    (OSError, "connection_error", True),
)


def transport_failure(exc: BaseException, where: str = "") -> AttemptFailed:
    """The failed attempt a transport exception stands for (its cause decides, if known);
    ``where`` (``host:port``) and the OS's reason are its detail, for the exit-4 line."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        for aside in ("os_error", "certificate_error"):  # aiohttp keeps the OS's error aside
            inner = getattr(current, aside, None)
            if isinstance(inner, BaseException) and inner not in chain:
                chain.append(inner)
        current = current.__cause__ or current.__context__
    detail = f"{where}: {_why(chain)}" if where else _why(chain)
    for kind, reason, retryable in TRANSPORT_FAILURES:
        if any(isinstance(e, kind) for e in chain):
            return AttemptFailed(reason, retryable=retryable, detail=detail)
    return AttemptFailed("connection_error", retryable=True, detail=detail)


def _why(chain: list[BaseException]) -> str:
    """The OS's reason in a transport failure's chain, as an operator reads it."""
    for e in chain:
        message = getattr(e, "verify_message", None)
        if isinstance(e, ssl.SSLCertVerificationError) and message:
            return f"TLS certificate not accepted ({message})"
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return f"TLS error ({e.reason or e})"
        if isinstance(e, socket.gaierror):
            return "name not resolved"
    for e in chain:
        if isinstance(e, OSError) and e.errno and e.errno > 0:
            return os.strerror(e.errno).lower()
    text = str(chain[0]) if chain else ""
    return text or (type(chain[0]).__name__ if chain else "unknown")


def where_of(url: yarl.URL) -> str:
    """``host:port`` of a URL: never its credentials, path or query."""
    return f"{url.host}:{url.port}" if url.port is not None else str(url.host)


class Malformed(ValueError):
    """A response body that is not the JSON shape the source expects."""


class CredentialsRejected(SourceDownError):
    """401 or 403: every request would fail the same way, so the run stops (exit 4)."""

    def __init__(self, source: str, status: int) -> None:
        super().__init__(
            f"source '{source}' rejected our credentials (HTTP {status}); check the token or "
            "headers in its config, then rerun with --resume"
        )
        self.source = source
        self.status = status


class ConnectionDropped(aiohttp.ClientConnectionError):
    """The connection closed or reset before the response (see :func:`no_hidden_retry`)."""


async def no_hidden_retry(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware: aiohttp never sends a request a second time behind our back.

    aiohttp quietly repeats an idempotent request (a per-ID GET) once when its connection fails
    before the response, raising ``ClientOSError`` or ``ServerDisconnectedError`` (meant for a
    kept-alive connection the server has just closed).  That attempt would bypass the retry
    policy: not counted, not rate-limited, no backoff.  There is no public switch for it
    (aio-libs/aiohttp#10790; ``ClientSession._retry_connection`` is private), but the retry
    only catches those two types from the request handler, which middlewares wrap: re-raised as
    :class:`ConnectionDropped`, the failure reaches :mod:`~batchscore.sources.retry` as one
    failed attempt (``connection_error``), counted and retried with backoff like any other.
    """
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise  # connecting failed: aiohttp does not retry these; keep the type
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise ConnectionDropped(str(exc)) from exc


def _ssl_context(options: ClientOptions) -> ssl.SSLContext | bool:
    # Loading the system CA store costs ~0.1-0.5 s of start-up: only when TLS can happen.
    if options.insecure or not (options.tls or options.proxy):
        return False
    try:
        return ssl.create_default_context(cafile=options.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_bundle {options.ca_bundle} is not a usable CA file: {exc}") from None


class GatedConnector(aiohttp.TCPConnector):
    """A connector that stops handing out connections once its source is refused.

    A request holds its slot and passes :class:`Endpoint`'s own check before it waits for a
    connection; opening one takes a round trip (more with TLS), during which another request's
    401 may arrive.  Checking again here, the last step before aiohttp writes the request,
    means nothing is sent after a refusal is seen: the connection goes back to the pool unused.
    """

    def __init__(self, *, refusal: Callable[[], BaseException | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refusal = refusal

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        """A pooled or new connection, unless the source has been refused meanwhile."""
        connection = await super().connect(req, traces, timeout)
        refused = self._refusal()
        if refused is not None:
            connection.release()  # nothing was written on it: it stays reusable
            raise refused
        return connection


def open_session(
    options: ClientOptions,
    *,
    connections: int,
    refusal: Callable[[], BaseException | None] = lambda: None,
) -> aiohttp.ClientSession:
    """One pooled keep-alive session for one source (on the running loop).

    No default headers (:class:`Endpoint` passes its prepared ones per request: aiohttp merges
    session headers into a proxy's headers and would send our ``Authorization`` to the proxy as
    ``Proxy-Authorization``), no cookies, no timeouts of its own, no proxies or netrc from the
    environment.  ``refusal`` returns the error to raise instead of sending (see
    :class:`GatedConnector`), or None.
    """
    connector = GatedConnector(
        refusal=refusal,
        limit=connections,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ssl=_ssl_context(options),
    )
    return aiohttp.ClientSession(
        connector=connector,
        proxy=options.proxy,  # credentials in it become a Proxy-Authorization header
        timeout=NO_TIMEOUTS,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        middlewares=(no_hidden_retry,),
    )


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body of ``response``, decoded, or None when it is longer than ``limit`` bytes: then
    the connection is closed, and the rest is never read or decompressed.

    Not ``response.read()``: it reads the whole body, inflating each compressed block without
    bound (two ~500 KB gzip answers took a run to 2.1 GB).  aiohttp decompresses into the
    stream read here at most :data:`READ_BLOCK` at a time, and stops reading the socket while
    that much waits.  A ``Content-Length`` beyond the limit (an uncompressed body) is refused
    before anything is read.
    """
    if (
        response.content_length is not None
        and response.content_length > limit
        and hdrs.CONTENT_ENCODING not in response.headers
    ):
        response.close()
        return None
    content = response.content
    content.set_read_chunk_size(min(limit, READ_BLOCK))
    chunks = []
    size = 0
    try:
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                response.close()
                return None
            chunks.append(chunk)
    except BaseException:
        response.close()  # as response.read() does: the connection is not reusable
        raise
    # The end of the body gave the connection back to the pool (aiohttp's on-eof callback).
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def parse_json(content: bytes) -> Any:
    """A response body as JSON, or :class:`Malformed`: read by :func:`batchscore.jsontext.loads`,
    the rule of every JSON batchscore reads (numbers beyond the double range and
    ``NaN``/``Infinity`` are ``null``, a missing value, instead of failing every ID the answer
    was for)."""
    try:
        return jsontext.loads(content)
    except ValueError:
        raise Malformed("the body is not JSON") from None


def dig(body: Any, path: str, what: str) -> Any:
    """The value at a dotted ``path`` in parsed JSON (empty path: the body itself)."""
    value = body
    if path:
        for key in path.split("."):
            if not isinstance(value, dict) or key not in value:
                raise Malformed(f"no '{path}' in the {what}")
            value = value[key]
    return value


def features_at(body: Any, path: str, what: str) -> dict[str, Any]:
    """The feature mapping at ``path``; anything but a JSON object is malformed."""
    features = dig(body, path, what)
    if not isinstance(features, dict):
        raise Malformed(f"the features in the {what} are not a JSON object")
    return features


class Endpoint:
    """One source's requests: the pooled session, limits, timeout, statuses, retries."""

    def __init__(
        self,
        *,
        source: str,
        options: ClientOptions,
        limits: Limits,
        policy: RetryPolicy,
        stats: RunStats,
    ) -> None:
        self.source = source
        self.options = options
        self.limits = limits
        self.policy = policy
        self.stats = stats
        self._session: aiohttp.ClientSession | None = None
        # Request headers, built once: [0] without a body, [1] with a JSON body.
        plain: CIMultiDict[str] = CIMultiDict({"User-Agent": USER_AGENT})
        plain.update(options.headers)
        with_body = CIMultiDict(plain)
        with_body["Content-Type"] = "application/json"
        self._headers = (CIMultiDictProxy(plain), CIMultiDictProxy(with_body))
        self._with_credentials: dict[tuple[str, str, bool], Headers] = {}
        self.health = SourceHealth(source, policy.down_after)
        self._rejected: int | None = None  # the 401/403 status once credentials were refused
        self._told: set[str] = set()  # failures for good already said (a TLS error ...)
        self._told_too_large = False
        self.connections = limits.declare(source)  # its own adaptive limit under auto

    def open(self) -> None:
        """Create the pooled session (on the running loop)."""
        if self._session is None:
            self._session = open_session(
                self.options, connections=self.connections, refusal=self._refusal
            )
            if self.options.insecure:
                log.warning(
                    "source '%s': TLS certificates are not verified (insecure = true)", self.source
                )

    def _refusal(self) -> SourceDownError | None:
        """Why nothing more may be sent to this source: its credentials were refused, or it
        is down (a new error each time, see :meth:`SourceHealth.refusal`)."""
        if self._rejected is not None:
            return CredentialsRejected(self.source, self._rejected)
        return self.health.refusal()

    async def close(self) -> None:
        """Close the pool."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _credentials_to_header(self, url: yarl.URL, has_body: bool) -> tuple[yarl.URL, Headers]:
        """``url`` without its credentials, and headers that carry them as Basic auth."""
        key = (url.user or "", url.password or "", has_body)
        headers = self._with_credentials.get(key)
        if headers is None:
            merged = CIMultiDict(self._headers[has_body])
            merged["Authorization"] = _basic(key[0], key[1])
            headers = self._with_credentials[key] = CIMultiDictProxy(merged)
        return url.with_user(None), headers

    async def request(
        self,
        method: str,
        url: str,
        parse: Callable[[bytes], T],
        *,
        body: bytes | None = None,
        per_id: bool = False,
    ) -> T | Failure:
        """Send with retries; ``parse`` turns a 2xx body into the answer or raises Malformed
        (reading the JSON with :func:`parse_json`).

        ``url`` is sent exactly as given, so it must be fully percent-encoded already (the
        config's URL, checked by :func:`check_url`, with IDs put in by ``encode_id``).
        ``per_id``: the URL names one ID, so 404 means that ID is not found (for a batch or
        Feast endpoint a 404 means the URL is wrong, an ordinary permanent failure).
        """
        session = self._session
        if session is None:
            raise RuntimeError(f"source '{self.source}' was not opened")
        target = yarl.URL(url, encoded=True)
        if target.raw_user is None and target.raw_password is None:
            headers = self._headers[body is not None]
        else:
            target, headers = self._credentials_to_header(target, body is not None)
        timeout = self.options.timeout
        limit = self.options.max_response_bytes

        async def send() -> tuple[aiohttp.ClientResponse, bytes | None]:
            refused = self._refusal()
            if refused is not None:  # credentials refused, or the source is down
                raise refused
            try:
                async with asyncio.timeout(timeout):
                    response = await session.request(
                        method, target, headers=headers, data=body, allow_redirects=False
                    )
                    self.limits.answering()  # a stop now waits for this body (the grace)
                    if response.status in (401, 403):  # stop other sends now, not after the body
                        self._rejected = response.status
                    content = await read_capped(response, limit)  # None: longer than the limit
            except TimeoutError:
                raise AttemptFailed(
                    "timeout",
                    retryable=True,
                    detail=f"{where_of(target)}: timed out after {timeout:.1f} s",
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                failed = transport_failure(exc, where_of(target))
                if not failed.retryable and failed.reason not in self._told:
                    # Every ID will fail the same way (a certificate is not accepted): said
                    # once, with where and why, not only as a reason in the errors file.
                    self._told.add(failed.reason)
                    log.warning("source '%s': %s", self.source, failed.described)
                raise failed from None
            log.debug(  # secrets in the URL are masked by the log handler
                'HTTP Request: %s %s "HTTP/1.1 %d %s"',
                method,
                target,
                response.status,
                response.reason,
            )
            return response, content

        def interpret(answer: tuple[aiohttp.ClientResponse, bytes | None]) -> T:
            response, content = answer
            status = response.status
            if 200 <= status < 300:
                if content is None:  # the same request would get the same answer: no retry
                    self._too_large(status, per_id)
                    raise AttemptFailed(TOO_LARGE, status=status, retryable=False)
                try:
                    return parse(content)
                except (Malformed, orjson.JSONDecodeError) as exc:
                    log.debug("source '%s': status %d, %s", self.source, status, exc)
                    raise AttemptFailed(MALFORMED, status=status, retryable=True) from None
            if status in (401, 403):
                self._rejected = status
                raise CredentialsRejected(self.source, status)
            if status == 404 and per_id:
                raise AttemptFailed(NOT_FOUND, status=404, retryable=False)
            retryable = status in RETRYABLE_STATUSES
            raise AttemptFailed(
                f"http_{status}",
                status=status,
                retryable=retryable,
                retry_after=parse_retry_after(response.headers.get("Retry-After"))
                if retryable
                else None,
            )

        return await call(
            send,
            interpret,
            policy=self.policy,
            limits=self.limits,
            source=self.source,
            on_retry=self._retrying,
            health=self.health,
        )

    def _too_large(self, status: int, per_id: bool) -> None:
        """Say once per source what an oversized answer means and what to change."""
        if not self._told_too_large:
            self._told_too_large = True
            log.warning(
                "source '%s': an answer (HTTP %d) was longer than max_response_bytes = %d; the "
                "IDs of such answers fail with %s (raise max_response_bytes in its config%s)",
                self.source,
                status,
                self.options.max_response_bytes,
                TOO_LARGE,
                "" if per_id else ", or ask for fewer IDs at once with batch_size",
            )

    def _retrying(self, failed: AttemptFailed, attempt: int) -> None:
        self.stats.retries += 1
        log.debug(
            "source '%s': attempt %d failed (%s); retrying", self.source, attempt, failed.described
        )


__all__ = [
    "MALFORMED",
    "TOO_LARGE",
    "TRANSPORT_FAILURES",
    "ConnectionDropped",
    "CredentialsRejected",
    "Endpoint",
    "GatedConnector",
    "Malformed",
    "dig",
    "features_at",
    "no_hidden_retry",
    "open_session",
    "parse_json",
    "read_capped",
    "transport_failure",
    "where_of",
]
