"""The worker threads that run every request's forward passes: fair between requests, cancellable, swappable.

On a small CPU one thread per core, each owning a model replica and running whole batches, does
more work than every core inside one batch (2 workers x 1 thread did a 50-document request's
batches 1.34x faster than 1 worker x 2 threads on 2 cores). Each replica has its own tokenizer:
fast tokenizers are not safe to share across threads.

Fairness: each request holds a :class:`Ticket`, and a client's tickets share one :class:`Share`; a
free worker takes the next batch of the client that has been served the fewest tokens so far, as in
start-time fair queueing, so the batches of concurrent requests interleave and a small request is
not stuck behind a large one. A client with nothing in flight starts ``credit`` tokens ahead of the
present (as a scheduler credits a task that slept): a small request from it runs on every worker
at once, as it would alone, while a client that keeps requests in flight never gets that head start
again. Background tickets (an index build) yield to every request. Cancelling a ticket drops its
batches that have not started.

Sharing: a batch given as :class:`Shared` may run in one forward pass with other requests' shared
batches of the same kind, where the replica computes each pair independently of what shares its pass
(``merges``, the packed GPU engine): a free worker takes the fairest batch, then the next shared
batches in fair order while they fit the batch's budget, as text-embeddings-inference's queue fills a
batch. On a GPU several small requests then cost one pass instead of several.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass

from scoring.cache import DEFAULT_TOKEN_CACHE_BYTES, TokenCache
from scoring.choice import Choice
from scoring.errors import Cancelled
from scoring.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Shared:
    """A batch that may share a forward pass: ``run(replica, items)`` gives one output per item, whichever batches'
    items it is handed; batches of the same ``kind`` merge while their costs add up to at most ``budget`` and their
    items to at most ``max_items``."""

    kind: str
    items: list
    run: Callable
    budget: int
    max_items: int
    filled: dict | None = None  # the items as a packed batch, filled on the request's thread (engines that ``fills``)

    def __call__(self, replica):
        if self.filled is not None and replica.fills:
            return replica.score_packed([self.filled])
        return self.run(replica, self.items)


Task = tuple[int, Callable]  # (cost in tokens, fn(replica) -> result; a Shared batch is such an fn)
Job = tuple["Ticket", int, Callable, Future]


class Share:
    """What one client has been served (tokens, in virtual time): its tickets take turns with other clients' as one,
    so a client with many requests in flight gets no more of the pool than a client with one."""

    def __init__(self, start: float) -> None:
        self.served = start
        self.tickets = 0


class Ticket:
    """One request's share of the pool: its pending batches, how much it has been served, whether it was cancelled."""

    def __init__(self, pool: WorkerPool, label: str, start: float, share: Share, *, background: bool = False,
                 client: str | None = None) -> None:
        self.label = label
        self.client = client
        self.background = background
        self.served = start
        self.share = share
        self.pending: deque[tuple[int, Callable, Future]] = deque()
        self.cancelled = False
        self.batches_run = 0
        self.batches_dropped = 0
        self._pool = pool

    def cancel(self) -> None:
        """Drop every batch not yet started; the waiting request raises :class:`Cancelled`."""
        self._pool._cancel(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self._pool._close(self)


class WorkerPool:
    """``workers`` threads that each own an engine replica; batches come from tickets, fairly interleaved."""

    def __init__(self, engines: Sequence, tokenizer: TextTokenizer, choice: Choice, *, source=None,
                 credit: int = 4096, token_cache_bytes: int = DEFAULT_TOKEN_CACHE_BYTES) -> None:
        self.replicas = list(engines)
        self.workers = len(self.replicas)
        self.choice = choice
        self.source = source
        self.tokenizer = tokenizer.copy()  # for counting tokens on request threads
        self.tokenizer_lock = threading.Lock()
        self._planners: queue.SimpleQueue = queue.SimpleQueue()  # a tokenizer copy a core: requests plan side by side
        for _ in range(max(1, os.cpu_count() or 1)):
            self._planners.put(tokenizer.copy())
        self.tokens = TokenCache(token_cache_bytes)  # see encode
        self._templated: bool | None = None
        self.batches_run = 0
        self.batches_dropped = 0
        self.batches_shared = 0  # batches that ran in a pass with another batch
        self.tokens_run = 0
        self._cv = threading.Condition()
        self._open: list[Ticket] = []
        self._shares: dict[str, Share] = {}
        self.credit = credit
        self._foreground = 0
        self._running = 0
        self._clock = 0.0
        self._swapping = False
        self._closed = False
        self._alive: set[int] = set()
        self._threads: dict[int, threading.Thread] = {}
        for n in range(self.workers):
            self._start(n)

    def _start(self, n: int) -> None:
        """A thread for worker ``n`` unless one still runs (a pool shrunk and grown again keeps its thread)."""
        if n not in self._alive:
            self._alive.add(n)
            self._threads[n] = threading.Thread(target=self._work, args=(n,), name=f"scorer-worker-{n}", daemon=True)
            self._threads[n].start()

    def alive(self) -> bool:
        """At least one worker thread runs (a health check's question)."""
        return any(thread.is_alive() for thread in self._threads.values())

    # --- tickets ---------------------------------------------------------------------------------

    def ticket(self, label: str = "", *, background: bool = False, client: str | None = None) -> Ticket:
        """Open a ticket for one request's work (waits while the replicas are being swapped).

        Tickets of one ``client`` share its turn (see :class:`Share`). A ``background`` ticket (an index build) is
        served only while no request is in the service (see :meth:`foreground`) and no other ticket has a batch waiting.
        """
        with self._cv:
            self._cv.wait_for(lambda: not self._swapping)
            if self._closed:
                raise RuntimeError("this model was closed: its replicas were let go")
            fresh = self._clock - self.credit  # a client with nothing in flight starts a little ahead of the present
            share = None
            if client is not None:
                share = self._shares.setdefault(client, Share(fresh))
                share.served = max(share.served, fresh)
                share.tickets += 1
            ticket = Ticket(self, label, self._clock, share or Share(fresh), background=background, client=client)
            self._open.append(ticket)
            return ticket

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Marks a request as in the service (planning, waiting or scoring): background batches wait until none is."""
        with self._cv:
            self._foreground += 1
        try:
            yield
        finally:
            with self._cv:
                self._foreground -= 1
                self._cv.notify_all()

    def run(self, ticket: Ticket, tasks: Sequence[Task]) -> list:
        """Queue ``tasks`` under ``ticket`` and wait for their results, in task order.

        Raises :class:`Cancelled` when the ticket is (or gets) cancelled.
        """
        futures: list[Future] = []
        with self._cv:
            if ticket.cancelled:
                raise Cancelled("the request was cancelled")
            for cost, fn in tasks:
                future: Future = Future()
                ticket.pending.append((int(cost), fn, future))
                futures.append(future)
            self._cv.notify_all()
        try:
            return [f.result() for f in futures]
        except CancelledError:
            raise Cancelled("the request was cancelled; its remaining batches were dropped") from None

    def map(self, tasks: Sequence[Callable], *, ticket: Ticket | None = None) -> list:
        """Run ``task(replica)`` for every task (cost 1 each) under ``ticket`` or a ticket of its own."""
        if ticket is not None:
            return self.run(ticket, [(1, t) for t in tasks])
        with self.ticket() as own:
            return self.run(own, [(1, t) for t in tasks])

    def _cancel(self, ticket: Ticket) -> None:
        with self._cv:
            ticket.cancelled = True
            while ticket.pending:
                _, _, future = ticket.pending.popleft()
                future.cancel()
                ticket.batches_dropped += 1
                self.batches_dropped += 1
            self._cv.notify_all()

    def _close(self, ticket: Ticket) -> None:
        if ticket.pending:
            self._cancel(ticket)
        with self._cv:
            if ticket in self._open:
                self._open.remove(ticket)
                if ticket.client is not None:
                    ticket.share.tickets -= 1
                    if ticket.share.tickets == 0:
                        del self._shares[ticket.client]
            self._cv.notify_all()

    # --- workers ---------------------------------------------------------------------------------

    def _ready(self) -> list[Ticket]:
        """Tickets with a batch waiting: requests first, background work only when no request is in the service."""
        requests = [t for t in self._open if t.pending and not t.background]
        if requests or self._foreground:
            return requests
        return [t for t in self._open if t.pending]

    def _take(self, ticket: Ticket) -> Job:
        """A ticket's next batch. The present (virtual time) is the served client's own progress while it is alone;
        with others waiting it moves on by the batch's fair share of the pool, never back, so a client's credited start
        is bounded and a stream of new clients cannot starve an older request."""
        waiting = len({id(t.share) for t in self._open if t.pending})
        cost, fn, future = ticket.pending.popleft()
        if waiting <= 1:
            self._clock = ticket.share.served + cost
        else:
            self._clock = max(self._clock, ticket.share.served) + cost / waiting
        ticket.served += cost
        ticket.share.served += cost
        return ticket, cost, fn, future

    def _next(self, n: int) -> list[Job] | None:
        """The next batches for worker ``n`` (call with the lock held): the fairest ticket's next batch, joined by
        other shared batches its replica can run with it; None when the pool has shrunk below ``n`` (the worker ends)."""
        while True:
            if n >= self.workers:
                return None
            ready = self._ready()
            if ready:
                jobs = [self._take(min(ready, key=_turn))]
                if isinstance(jobs[0][2], Shared) and self.replicas[n].merges:
                    self._join(jobs)
                self._running += 1
                return jobs
            self._cv.wait()

    def _join(self, jobs: list[Job]) -> None:
        """Add to a shared batch the next shared batches of the same kind, in fair order, while they fit its budget
        (call with the lock held)."""
        first: Shared = jobs[0][2]
        cost, items = jobs[0][1], len(first.items)
        while ready := self._ready():
            ticket = min(ready, key=_turn)
            extra_cost, fn, _ = ticket.pending[0]
            if not (isinstance(fn, Shared) and fn.kind == first.kind and cost + extra_cost <= first.budget
                    and items + len(fn.items) <= first.max_items):
                return
            jobs.append(self._take(ticket))
            cost, items = cost + extra_cost, items + len(fn.items)

    def _work(self, n: int) -> None:
        while True:
            with self._cv:
                jobs = self._next(n)
                if jobs is None:
                    self._alive.discard(n)
                    return
                replica = self.replicas[n]
            try:
                live = [job for job in jobs if job[3].set_running_or_notify_cancel()]
                if len(live) == 1:
                    _run_one(live[0][2], live[0][3], replica)
                elif live:
                    _run_shared(live, replica)
            finally:
                with self._cv:
                    self._running -= 1
                    for ticket, cost, _, _ in jobs:
                        ticket.batches_run += 1
                        self.tokens_run += cost
                    self.batches_run += len(jobs)
                    self.batches_shared += len(jobs) if len(jobs) > 1 else 0
                    self._cv.notify_all()

    # --- swapping --------------------------------------------------------------------------------

    def idle(self) -> bool:
        """No request holds a ticket and no batch runs."""
        with self._cv:
            return not self._open and self._running == 0

    def swap(self, engines: Sequence, choice: Choice, *, timeout: float | None = None) -> bool:
        """Serve with other replicas (same model; one worker thread each, so the count may change) once no request
        is in flight.

        New requests wait for the swap (it takes a moment); a request never mixes two engines.
        Returns False when the pool did not become idle within ``timeout`` seconds.
        """
        if not engines:
            raise ValueError("need at least one replica")
        with self._cv:
            self._swapping = True
            try:
                if not self._cv.wait_for(lambda: not self._open and self._running == 0, timeout):
                    return False
                before = self.workers
                self.replicas = list(engines)
                self.workers = len(self.replicas)
                self.choice = choice
                for n in range(before, self.workers):  # a larger pool: threads for the new replicas
                    self._start(n)
                return True
            finally:
                self._swapping = False
                self._cv.notify_all()

    def close(self, *, timeout: float | None = None) -> bool:
        """End the worker threads and let go of the replicas once no request is in flight: a model no longer needed (a
        candidate judged and dropped) would otherwise be held by its threads for the life of the process. New tickets
        are refused after. Returns False when the pool did not become idle within ``timeout`` seconds."""
        with self._cv:
            if not self._cv.wait_for(lambda: not self._open and self._running == 0, timeout):
                return False
            self.replicas, self.workers, self._closed = [], 0, True
            threads = list(self._threads.values())
            self._cv.notify_all()
        for thread in threads:
            thread.join(timeout)
        return True

    # --- token counting on request threads -------------------------------------------------------

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text (no special tokens)."""
        with self.tokenizer_lock:
            return self.tokenizer.count(texts)

    def encode(self, texts: Sequence[str], *, spans: bool = True, cached: bool = False) -> list:
        """Each text's tokens (with character spans unless ``spans=False``; no special tokens), one pass; concurrent
        requests tokenize on separate copies (fast tokenizers are not safe to share), so one request's planning never
        waits for another's. ``cached`` (without spans): texts seen before come from the token cache as
        :class:`~scoring.tokenizer.Tokens` (where pairs are filled from a template, so ids are all they need)."""
        if cached and not spans and self.tokens.capacity > 0 and self._uses_template():
            return self.tokens.encode(self.tokenizer.fingerprint, texts, lambda rest: self._tokenize(rest, spans=False))
        return self._tokenize(texts, spans=spans)

    def _tokenize(self, texts: Sequence[str], *, spans: bool) -> list:
        """Texts through one of the planners' tokenizers."""
        with self._planner() as tokenizer:
            return tokenizer.encode_plain(texts, spans=spans)

    def fill(self, pairs: Sequence[tuple]) -> dict:
        """Tokenized pairs as one packed batch, filled on the calling (request) thread with a tokenizer of its own: the
        worker that runs the pass only lays filled batches end to end, so filling overlaps other passes."""
        with self._planner() as tokenizer:
            return tokenizer.packed_pairs(pairs)

    @contextmanager
    def _planner(self) -> Iterator[TextTokenizer]:
        """A planner tokenizer for this thread alone while the block runs (fast tokenizers are not safe to share)."""
        tokenizer = self._planners.get()
        try:
            yield tokenizer
        finally:
            self._planners.put(tokenizer)

    def _uses_template(self) -> bool:
        """Whether pairs are filled from the tokenizer's template (checked once): else cached ids would not do."""
        if self._templated is None:
            with self.tokenizer_lock:
                self._templated = self.tokenizer.templated()
        return self._templated


def _turn(ticket: Ticket) -> tuple[float, float]:
    """Fair order: the client served least goes first, then its request served least."""
    return ticket.share.served, ticket.served


def _run_one(fn: Callable, future: Future, replica) -> None:
    try:
        future.set_result(fn(replica))
    except BaseException as exc:  # handed to the waiting request
        future.set_exception(exc)


def _run_shared(jobs: list[Job], replica) -> None:
    """Several requests' shared batches in one pass; each request gets its own items' outputs (or the error)."""
    batches = [job[2] for job in jobs]
    try:
        if replica.fills and all(b.filled is not None for b in batches):
            outputs = replica.score_packed([b.filled for b in batches])
        else:
            outputs = batches[0].run(replica, [item for b in batches for item in b.items])
    except BaseException as exc:
        for job in jobs:
            job[3].set_exception(exc)
        return
    start = 0
    for job, batch in zip(jobs, batches, strict=True):
        job[3].set_result(outputs[start:start + len(batch.items)])
        start += len(batch.items)
