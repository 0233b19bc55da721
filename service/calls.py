"""One request's passage through the service: the limits it is held to, its cancel token, its record."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from scoring.media import ImageLimits
from scoring.pool import Ticket, WorkerPool


@dataclass(frozen=True)
class Limits:
    """What one request, and the service as a whole, may take (see the README's Configuration table)."""

    max_documents: int = 1000
    max_request_tokens: int = 262_144
    max_in_flight: int = 64
    max_in_flight_per_client: int = 16
    max_body_bytes: int = 10 * 1024 * 1024
    max_upload_bytes: int = 5 * 1024 * 1024
    max_upload_passages: int = 5000
    upload_ttl_seconds: float = 3600.0
    images: ImageLimits = ImageLimits()  # one image document's bytes and pixels


class CancelToken:
    """Cancels a request's work in the worker pool, including tickets it opens after being cancelled."""

    def __init__(self) -> None:
        self.cancelled = False
        self._tickets: list[Ticket] = []
        self._lock = threading.Lock()

    def open(self, pool: WorkerPool, label: str, client: str | None = None) -> Ticket:
        """A pool ticket that this token cancels (``client``: whose turn it takes, see :class:`scoring.pool.Share`)."""
        ticket = pool.ticket(label, client=client)
        with self._lock:
            self._tickets.append(ticket)
            if self.cancelled:
                ticket.cancel()
        return ticket

    def cancel(self) -> None:
        """Drop every batch of this request that has not started."""
        with self._lock:
            self.cancelled = True
            tickets = list(self._tickets)
        for ticket in tickets:
            ticket.cancel()


@dataclass
class Call:
    """One request on its way through the service."""

    face: str
    route: str
    id: str
    token: CancelToken
    client: str | None = None
    documents: int = 0
