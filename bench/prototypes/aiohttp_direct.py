"""Prototype: ``Endpoint.request`` sends on the aiohttp session directly, without httpx.

Same statuses, retries, limits and timeout as ``batchscore.sources.httpclient.Endpoint.request``;
only the transport call differs: ``session.request(...)`` and ``resp.read()`` instead of
``httpx.AsyncClient.request`` (whose request/response objects, cookie extraction and chunked
``aread`` cost ~60% of the per-request CPU in P1).  With ``PATCHES=url`` the per-ID URL is also
built as a string and handed to yarl pre-encoded, instead of parsed by ``httpx.URL`` per ID.
Measurement only (see README.md here).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import yarl

import batchscore.sources.http as hs
import batchscore.sources.httpclient as hc
from batchscore.__main__ import main
from batchscore.sources import NOT_FOUND
from batchscore.sources.httpclient import transport_failure
from batchscore.sources.retry import (
    RETRYABLE_STATUSES,
    AttemptFailed,
    call,
    parse_retry_after,
)

_HEADERS: dict[tuple[int, bool], dict[str, str]] = {}


async def request(
    self: Any,
    method: str,
    url: Any,
    parse: Callable[[bytes], Any],
    *,
    body: bytes | None = None,
    per_id: bool = False,
) -> Any:
    """``Endpoint.request`` on aiohttp."""
    client = self._client
    transport = client._transport
    if not isinstance(transport.client, aiohttp.ClientSession):
        transport.client = transport.get_client()
    session = transport.client
    key = (id(self), body is not None)
    headers = _HEADERS.get(key)
    if headers is None:
        headers = dict(client.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        _HEADERS[key] = headers
    target = url if isinstance(url, yarl.URL) else yarl.URL(str(url), encoded=True)

    async def send() -> tuple[int, str | None, bytes]:
        if self._rejected is not None:
            raise hc.CredentialsRejected(self.source, self._rejected)
        try:
            async with (
                asyncio.timeout(self.options.timeout),
                session.request(
                    method, target, headers=headers, data=body, allow_redirects=False
                ) as resp,
            ):
                return resp.status, resp.headers.get("Retry-After"), await resp.read()
        except TimeoutError:
            raise AttemptFailed("timeout", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise transport_failure(exc) from None

    def interpret(answer: tuple[int, str | None, bytes]) -> Any:
        status, retry_after_header, content = answer
        if 200 <= status < 300:
            try:
                return parse(content)
            except (orjson.JSONDecodeError, hc.Malformed):
                raise AttemptFailed(hc.MALFORMED, status=status, retryable=True) from None
        if status in (401, 403):
            self._rejected = status
            raise hc.CredentialsRejected(self.source, status)
        if status == 404 and per_id:
            raise AttemptFailed(NOT_FOUND, status=404, retryable=False)
        retryable = status in RETRYABLE_STATUSES
        raise AttemptFailed(
            f"http_{status}",
            status=status,
            retryable=retryable,
            retry_after=parse_retry_after(retry_after_header) if retryable else None,
        )

    return await call(
        send,
        interpret,
        policy=self.policy,
        limits=self.limits,
        source=self.source,
        on_retry=self._retrying,
    )


async def fetch_one(self: Any, id_: str) -> Any:
    """``HttpSource._fetch_one`` with the URL built as a string (no ``httpx.URL`` parse)."""
    url = yarl.URL(hs.encode_id(id_).join(self._template), encoded=True)
    return await self._endpoint.request("GET", url, self._parse_one, per_id=True)


hc.Endpoint.request = request  # type: ignore[method-assign]
if "url" in os.environ.get("PATCHES", "").split(","):
    hs.HttpSource._fetch_one = fetch_one  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
