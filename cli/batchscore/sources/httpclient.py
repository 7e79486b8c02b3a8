"""The HTTP client of the http and feast sources: one pooled ``httpx.AsyncClient`` per source.

httpx is the client API; aiohttp's connection pool is the transport, because httpcore's pool
collapses under concurrency (about 100 requests/s at 64 connections where 3,200/s is possible:
``bench/results/http-clients.md``).  :class:`Transport` is ``httpx_aiohttp.AiohttpTransport``
with two changes: the URL goes to aiohttp exactly as httpx encoded it (``encoded=True``), because
yarl otherwise decodes ``%2E`` and removes ``.``/``..`` segments, and an ID must never change the
path (URL credentials are dropped there: httpx has already turned them into a Basic
``Authorization`` header, and aiohttp refuses to see both); and aiohttp's hidden second attempt
on a dropped keep-alive connection is off, so that every attempt is the retry policy's.

:class:`Endpoint` makes one source's requests: every attempt holds a slot of the shared
:class:`~batchscore.sources.limits.Limits`, the per-source ``timeout`` bounds the whole attempt
(connect, headers and body: a server that stalls or drips bytes is cut off), statuses become
answers or failures as SPEC.md says, and :mod:`~batchscore.sources.retry` decides what to retry.
Redirects are never followed; TLS is verified unless the config says ``insecure = true``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from batchscore import __version__
from batchscore.errors import ConfigError, SourceDownError
from batchscore.report import RunStats
from batchscore.sources import NOT_FOUND, Failure
from batchscore.sources.limits import Limits
from batchscore.sources.retry import (
    RETRYABLE_STATUSES,
    AttemptFailed,
    RetryPolicy,
    SourceHealth,
    call,
    parse_retry_after,
    transport_failure,
)

log = logging.getLogger("batchscore.sources")

T = TypeVar("T")

MALFORMED = "malformed_response"
USER_AGENT = f"batchscore/{__version__}"
KEEPALIVE_SECONDS = 30.0


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


class Transport(AiohttpTransport):
    """``AiohttpTransport`` that sends the URL exactly as httpx encoded it."""

    def get_client(self) -> aiohttp.ClientSession:
        """aiohttp's session, without its hidden retry.

        aiohttp quietly sends an idempotent request a second time when a kept-alive connection
        turns out closed.  That attempt would bypass the retry policy: not counted, not limited
        by ``--rate-limit``.  The retry policy retries connection errors itself.
        """
        session: aiohttp.ClientSession = super().get_client()
        session._retry_connection = False  # private (aiohttp 3.10+), no public switch exists
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request on aiohttp's pool; the body is streamed back through httpx."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        url = yarl.URL(str(request.url), encoded=True)
        if url.user is not None:
            url = url.with_user(None)
        with map_aiohttp_exceptions():
            response = await self.client.request(
                method=request.method,
                url=url,
                headers=request.headers,
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(),  # the caller's asyncio.timeout bounds attempts
                proxy=str(self.proxy.url) if self.proxy else None,
                proxy_auth=aiohttp.BasicAuth(*self.proxy.auth)
                if self.proxy and self.proxy.auth
                else None,
            ).__aenter__()
            # Feature answers are small: read the body here, in one piece, and hand httpx
            # the bytes (streaming it through an async iterator cost ~15% of a request's CPU).
            try:
                content = await response.read()
            finally:
                response.release()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            content=content,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )


@dataclass(frozen=True)
class ClientOptions:
    """The connection settings every http and feast source has."""

    timeout: float
    headers: Mapping[str, str]
    ca_bundle: str | None = None
    insecure: bool = False
    proxy: str | None = None
    tls: bool = True  # the source's URL is https (redirects are never followed to one)

    @classmethod
    def of(cls, config: Any) -> ClientOptions:
        """The connection settings of an http or feast source's config (same key names)."""
        return cls(
            config.timeout,
            config.headers,
            config.ca_bundle,
            config.insecure,
            config.proxy,
            tls=config.url.lower().startswith("https:"),
        )


def check_options(options: ClientOptions, where: str) -> None:
    """Config errors in the connection settings, before anything connects."""
    if not options.timeout > 0:
        raise ConfigError(f"{where}.timeout must be more than 0 seconds")
    if options.insecure and options.ca_bundle:
        raise ConfigError(
            f"{where}: give ca_bundle (verify with this CA) or insecure = true, not both"
        )
    if options.ca_bundle and not Path(options.ca_bundle).is_file():
        raise ConfigError(f"{where}.ca_bundle: no file {options.ca_bundle}")
    if options.proxy is not None:
        check_url(options.proxy, f"{where}.proxy")


def check_url(url: str, where: str) -> httpx.URL:
    """An absolute http(s) URL, or a ConfigError that does not repeat it (it may hold secrets)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ConfigError(f"{where} is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"{where} must be an absolute http:// or https:// URL")
    return parsed


def _ssl_context(options: ClientOptions) -> ssl.SSLContext | bool:
    # Loading the system CA store costs ~0.1-0.5 s of start-up: only when TLS can happen.
    if options.insecure or not (options.tls or options.proxy):
        return False
    try:
        return ssl.create_default_context(cafile=options.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_bundle {options.ca_bundle} is not a usable CA file: {exc}") from None


def build_client(options: ClientOptions, *, connections: int) -> FeatureClient:
    """One pooled, keep-alive client for one source; no redirects, no proxies from the env."""
    transport = Transport(
        verify=_ssl_context(options),
        trust_env=False,
        limits=httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=KEEPALIVE_SECONDS,
        ),
        proxy=httpx.Proxy(options.proxy) if options.proxy else None,
    )
    return FeatureClient(
        transport=transport,
        headers={"User-Agent": USER_AGENT, **options.headers},
        timeout=None,  # Endpoint bounds every whole attempt with asyncio.timeout
        follow_redirects=False,
        trust_env=False,
    )


class FeatureClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose ``send`` goes straight to its transport.

    A feature request needs none of what ``AsyncClient.send`` wraps around the transport: no
    auth flow (credentials are headers from the config), no redirects (never followed), no
    cookie jar.  Those layers were a quarter of the event loop's CPU per request (profile in
    bench/RESULTS.md), so they are skipped; requests are built with :meth:`feature_request`.
    """

    def feature_request(self, method: str, url: httpx.URL, body: bytes | None) -> httpx.Request:
        """A request with this client's headers (and a JSON content type when there is a body).

        Credentials in the URL become a Basic ``Authorization`` header, as httpx's auth flow
        would make them, and leave the URL.
        """
        headers = self.headers
        if body is not None or url.userinfo:
            headers = httpx.Headers(headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if url.userinfo:
            pair = f"{url.username}:{url.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            url = url.copy_with(username=None, password=None)
        return httpx.Request(method, url, headers=headers, content=body)

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = None,
        follow_redirects: Any = None,
    ) -> httpx.Response:
        """Send on the transport; the body is read whole (see :class:`Transport`)."""
        del stream, auth, follow_redirects
        response = await self._transport.handle_async_request(request)
        if log.isEnabledFor(logging.DEBUG):  # what httpx logs (at INFO); secrets are masked
            log.debug(
                'HTTP Request: %s %s "HTTP/1.1 %d %s"',
                request.method,
                request.url,
                response.status_code,
                response.reason_phrase,
            )
        return response


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
    """One source's requests: the pooled client, limits, timeout, statuses, retries."""

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
        self._client: FeatureClient | None = None
        self.health = SourceHealth(source, policy.down_after)
        self._rejected: int | None = None  # the 401/403 status once credentials were refused

    def open(self) -> None:
        """Create the pooled client (on the running loop)."""
        if self._client is None:
            self._client = build_client(self.options, connections=self.limits.concurrency)
            if self.options.insecure:
                log.warning(
                    "source '%s': TLS certificates are not verified (insecure = true)", self.source
                )

    async def close(self) -> None:
        """Close the pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def request(
        self,
        method: str,
        url: httpx.URL,
        parse: Callable[[bytes], T],
        *,
        body: bytes | None = None,
        per_id: bool = False,
    ) -> T | Failure:
        """Send with retries; ``parse`` turns a 2xx body into the answer or raises Malformed.

        ``per_id``: the URL names one ID, so 404 means that ID is not found (for a batch or
        Feast endpoint a 404 means the URL is wrong, an ordinary permanent failure).
        """
        client = self._client
        if client is None:
            raise RuntimeError(f"source '{self.source}' was not opened")

        async def send() -> httpx.Response:
            if self._rejected is not None:  # credentials were refused: send nothing more
                raise CredentialsRejected(self.source, self._rejected)
            try:
                async with asyncio.timeout(self.options.timeout):
                    return await client.send(client.feature_request(method, url, body))
            except TimeoutError:
                raise AttemptFailed("timeout", retryable=True) from None
            except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
                raise transport_failure(exc) from None

        def interpret(response: httpx.Response) -> T:
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return parse(response.content)
                except (orjson.JSONDecodeError, Malformed) as exc:
                    log.debug("source '%s': status %d, %s", self.source, status, exc)
                    raise AttemptFailed(MALFORMED, status=status, retryable=True) from None
            if status in (401, 403):
                self._rejected = status
                raise CredentialsRejected(self.source, status)
            if status == 404 and per_id:
                raise AttemptFailed(NOT_FOUND, status=404, retryable=False)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise AttemptFailed(
                f"http_{status}",
                status=status,
                retryable=status in RETRYABLE_STATUSES,
                retry_after=retry_after if status in RETRYABLE_STATUSES else None,
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

    def _retrying(self, failed: AttemptFailed, attempt: int) -> None:
        self.stats.retries += 1
        log.debug(
            "source '%s': attempt %d failed (%s); retrying", self.source, attempt, failed.reason
        )


__all__ = [
    "MALFORMED",
    "ClientOptions",
    "CredentialsRejected",
    "Endpoint",
    "Malformed",
    "Transport",
    "build_client",
    "check_options",
    "check_url",
    "dig",
    "features_at",
]
