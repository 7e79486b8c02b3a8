"""Secrets never leak: one registry of secret strings, applied to everything batchscore prints.

Every value a config's ``${VAR}`` reference expanded to is registered as the config is read,
whatever key holds it; sources register what is secret in their config when they are built
(header values, the password and user of URL credentials, query-string values, a PostgreSQL
DSN's password); from then on every log record that reaches the stderr handler, every error
message and every ``--debug`` traceback passes through :func:`redact`.  Redaction works on the
final text, so it also covers text we do not compose: the per-request ``HTTP Request: GET
<url>`` line at ``--debug`` (the URL with its query tokens), and aiohttp's exception messages
and tracebacks, which can hold a URL.

Each secret is also redacted in its percent-encoded and ``+``-for-space forms, because that is
how it appears inside a URL.  Strings shorter than :data:`MIN_SECRET_LENGTH` are not registered:
redacting every ``1`` or ``on`` would garble the output while protecting nothing real.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "***"
MIN_SECRET_LENGTH = 4


class Redactor:
    """A set of secret strings and the function that masks them in text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        """Register one secret (and its URL-encoded forms)."""
        if len(secret) < MIN_SECRET_LENGTH:
            return
        forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
        with self._lock:
            if forms <= self._secrets:
                return
            self._secrets |= forms
            ordered = sorted(self._secrets, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def add_header_value(self, value: str) -> None:
        """A header value: the whole value, the credential after its scheme, Basic's decoding."""
        self.add(value)
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if not credential:
            return
        self.add(credential)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode("utf-8")
            except ValueError:
                return
            self.add(decoded)
            self.add(decoded.partition(":")[2])

    def add_url(self, url: str) -> None:
        """A URL's user, password and query-string values (``{id}`` placeholders excepted)."""
        try:
            parts = urlsplit(url)
        except ValueError:
            self.add(url)  # unparsable: the whole thing is all we can protect
            return
        for value in (parts.username, parts.password):
            if value:
                self.add(value)
                self.add(unquote(value))
        if parts.username or parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            self.add_header_value(
                "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            )
        for _, value in parse_qsl(parts.query, keep_blank_values=False):
            if value != "{id}":
                self.add(value)

    def add_dsn(self, dsn: str) -> None:
        """A PostgreSQL DSN's password (in the URI's credentials or a ``password`` parameter).

        Its user is not a secret, and often a common word (``postgres``): masking it everywhere
        would garble messages while protecting nothing.
        """
        try:
            parts = urlsplit(dsn)
            password = parts.password
        except ValueError:
            self.add(dsn)  # unparsable: the whole thing is all we can protect
            return
        if password:
            self.add(password)
            self.add(unquote(password))
        for key, value in parse_qsl(parts.query, keep_blank_values=False):
            if key in ("password", "sslpassword"):
                self.add(value)

    def add_source_config(self, table: Mapping[str, object]) -> None:
        """Everything secret in one ``[[sources]]`` table: header values, URL credentials, and a
        PostgreSQL source's password."""
        if table.get("kind") == "postgres":
            dsn = table.get("dsn")
            if isinstance(dsn, str):
                self.add_dsn(dsn)
            return
        headers = table.get("headers")
        if isinstance(headers, Mapping):
            for value in headers.values():
                if isinstance(value, str):
                    self.add_header_value(value)
        for key in ("url", "proxy"):
            url = table.get(key)
            if isinstance(url, str):
                self.add_url(url)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``***``."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def clear(self) -> None:
        """Forget every secret (tests)."""
        with self._lock:
            self._secrets.clear()
            self._pattern = None


REDACTOR = Redactor()
"""The process-wide registry; sources add to it, every output path reads from it."""


def redact(text: str) -> str:
    """Mask every registered secret in ``text``."""
    return REDACTOR.redact(text)


def register_sources(tables: Iterable[Mapping[str, object]]) -> None:
    """Register the secrets of every ``[[sources]]`` table."""
    for table in tables:
        REDACTOR.add_source_config(table)


def register_secrets(values: Iterable[str]) -> None:
    """Register values that are secret whatever they are (what a config's ``${VAR}``
    references expanded to)."""
    for value in values:
        REDACTOR.add(value)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line (message, traceback, stack) has the secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then redact the whole text."""
        return redact(super().format(record))


def format_exception(exc: BaseException) -> str:
    """A traceback of ``exc`` (with its chain), redacted."""
    import traceback

    return redact("".join(traceback.format_exception(exc)))


__all__ = [
    "MASK",
    "REDACTOR",
    "RedactingFormatter",
    "Redactor",
    "format_exception",
    "redact",
    "register_secrets",
    "register_sources",
]
