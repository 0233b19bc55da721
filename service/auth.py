"""The key: with ``RERANK_API_KEY`` set, nothing ranks, searches or describes the service without it.

Programs send ``Authorization: Bearer <key>`` (HTTP routes, ``gradio_client`` through
``Client(url, headers=...)``, MCP clients). A browser signs in once on ``/login`` with the key and
gets a session cookie that holds a keyed digest, never the key itself. Comparisons take constant time.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "rag_augment_session"
_COOKIE_PURPOSE = b"rag-augment browser session v1"


class KeyCheck:
    """Decides whether a request carries the configured key (always yes when none is configured)."""

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key.encode() if api_key else None

    @property
    def required(self) -> bool:
        """Whether a key is configured at all."""
        return self._key is not None

    def bearer_ok(self, authorization: str | None) -> bool:
        """``Authorization: Bearer <key>`` with the right key."""
        if self._key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)

    def key_ok(self, key: str | None) -> bool:
        """The key itself, as typed on the login page."""
        return self._key is None or hmac.compare_digest((key or "").encode(), self._key)

    def session_value(self) -> str:
        """The cookie value a signed-in browser holds: a digest keyed by the key, so the key never sits in a cookie."""
        return hmac.new(self._key or b"", _COOKIE_PURPOSE, hashlib.sha256).hexdigest()

    def cookie_ok(self, value: str | None) -> bool:
        """A session cookie issued for the current key."""
        return self._key is None or hmac.compare_digest((value or "").encode(), self.session_value().encode())

    def allows(self, authorization: str | None = None, cookie: str | None = None) -> bool:
        """A bearer key or a session cookie, either one."""
        return self.bearer_ok(authorization) or (cookie is not None and self.cookie_ok(cookie))
