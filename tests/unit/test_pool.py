"""The worker pool: requests' batches interleave fairly, a cancelled request stops, a swap never splits a request."""

from __future__ import annotations

import threading
import time

import pytest

from scoring.choice import Choice
from scoring.engines.base import Engine
from scoring.errors import Cancelled
from scoring.pool import Shared, WorkerPool


class Replica(Engine):
    """A stand-in engine that records which batches ran, in order, taking ``seconds`` each."""

    def __init__(self, name: str, log: list, seconds: float = 0.02) -> None:
        self.name, self.log, self.seconds = name, log, seconds


class FakeTokenizer:
    def copy(self):
        return self


def _pool(workers: int, log: list, name: str = "a", seconds: float = 0.02) -> WorkerPool:
    return WorkerPool([Replica(name, log, seconds) for _ in range(workers)], FakeTokenizer(), Choice(name, "test"))


def _task(label: str):
    def run(replica: Replica):
        time.sleep(replica.seconds)
        replica.log.append((label, replica.name))
        return label
    return run


def test_a_small_request_is_not_stuck_behind_a_large_one():
    log: list = []
    pool = _pool(1, log)
    big = pool.ticket("big")
    results: dict = {}
    worker = threading.Thread(target=lambda: results.update(big=pool.run(big, [(1000, _task(f"big{i}")) for i in range(30)])))
    worker.start()
    time.sleep(0.1)  # the large request is under way
    with pool.ticket("small") as small:
        assert pool.run(small, [(100, _task("small0")), (100, _task("small1"))]) == ["small0", "small1"]
    done_at = [label for label, _ in log].index("small1")
    assert done_at < 10  # served within a few batches of arriving, not after the 30 large ones
    worker.join(10)
    big.__exit__(None, None, None)
    assert results["big"] == [f"big{i}" for i in range(30)]  # the large request still completes, in order


def test_cancelling_drops_the_batches_not_yet_started():
    log: list = []
    pool = _pool(1, log, seconds=0.05)
    ticket = pool.ticket("doomed")
    errors = []

    def run():
        try:
            pool.run(ticket, [(1, _task(f"t{i}")) for i in range(40)])
        except Cancelled as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.2)
    ticket.cancel()
    worker.join(5)
    ran = len(log)
    time.sleep(0.3)
    assert errors and "cancelled" in str(errors[0])
    assert len(log) == ran < 10  # nothing runs after the cancel (at most the batch in progress finished)
    assert ticket.batches_dropped == 40 - ran and pool.batches_dropped == 40 - ran
    with pytest.raises(Cancelled):
        pool.run(ticket, [(1, _task("late"))])
    ticket.__exit__(None, None, None)
    assert pool.idle()


def test_a_swap_waits_until_no_request_is_in_flight():
    log: list = []
    pool = _pool(2, log, name="old", seconds=0.03)
    ticket = pool.ticket("request")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(r=pool.run(ticket, [(1, _task(f"t{i}")) for i in range(20)])))
    worker.start()
    time.sleep(0.05)
    assert pool.swap([Replica("new", log), Replica("new", log)], Choice("new", "test"), timeout=0.1) is False
    swapper = threading.Thread(target=lambda: outcome.update(swapped=pool.swap([Replica("new", log), Replica("new", log)],
                                                                               Choice("new", "test"), timeout=10)))
    swapper.start()
    worker.join(10)
    ticket.__exit__(None, None, None)
    swapper.join(10)
    assert outcome["swapped"] is True and pool.choice.backend == "new"
    assert {engine for label, engine in log if label.startswith("t")} == {"old"}  # one request, one engine
    assert pool.map([_task("after")]) == ["after"] and log[-1] == ("after", "new")


def test_background_work_yields_to_requests():
    log: list = []
    pool = _pool(1, log)
    build = pool.ticket("index build", background=True)
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(b=pool.run(build, [(1, _task(f"bg{i}")) for i in range(20)])))
    worker.start()
    time.sleep(0.08)
    with pool.ticket("request") as request:
        pool.run(request, [(1, _task(f"req{i}")) for i in range(5)])
    labels = [label for label, _ in log]
    first_request = labels.index("req0")
    assert labels[first_request:first_request + 5] == [f"req{i}" for i in range(5)]  # no background batch in between
    worker.join(10)
    build.__exit__(None, None, None)
    assert len(done["b"]) == 20


def test_a_swap_may_change_the_number_of_workers():
    log: list = []
    pool = WorkerPool([Replica("a", log), Replica("b", log)], FakeTokenizer(), Choice("torch", "test"))
    assert pool.map([lambda r: r.name] * 4) and pool.workers == 2
    assert pool.swap([Replica("c", log)], Choice("torch", "one worker"))
    assert pool.workers == 1 and set(pool.map([lambda r: r.name] * 6)) == {"c"}
    assert pool.swap([Replica(x, log) for x in "defg"], Choice("torch", "four workers"))
    seen, lock, gate = set(), threading.Lock(), threading.Barrier(4, timeout=10)

    def task(replica):
        gate.wait()  # four batches run at once: four threads, one per replica
        with lock:
            seen.add(replica.name)
        return replica.name

    assert sorted(pool.map([task] * 4)) == ["d", "e", "f", "g"] and seen == set("defg")


class MergingReplica(Replica):
    """A stand-in for an engine whose pairs do not depend on what shares their pass (the packed GPU engine)."""

    merges = True


def _hold(pool: WorkerPool, release: threading.Event) -> threading.Thread:
    """Keep the pool's one worker busy until ``release``, so batches queue up behind it."""
    ticket = pool.ticket("holder")
    thread = threading.Thread(target=lambda: (pool.run(ticket, [(1, lambda r: release.wait(10))]), ticket.__exit__()))
    thread.start()
    return thread


def _queued(pool: WorkerPool, count: int) -> None:
    deadline = time.monotonic() + 10
    while sum(len(t.pending) for t in pool._open) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_shared_batches_of_waiting_requests_run_in_one_pass_each_getting_its_own_outputs():
    passes: list = []

    def run(replica, items):
        passes.append(list(items))
        return [f"out-{item}" for item in items]

    for replica_class, expected_passes in ((MergingReplica, 1), (Replica, 3)):
        passes.clear()
        pool = WorkerPool([replica_class("a", [])], FakeTokenizer(), Choice("a", "test"))
        release = threading.Event()
        holder = _hold(pool, release)
        results: dict = {}

        def request(name: str, items: list, results=results, pool=pool) -> None:
            with pool.ticket(name) as ticket:
                results[name] = pool.run(ticket, [(len(items) * 10, Shared("pairs", items, run, 1000, 100))])[0]

        threads = [threading.Thread(target=request, args=(f"r{k}", [f"{k}.{j}" for j in range(k + 1)])) for k in range(3)]
        for t in threads:
            t.start()
        _queued(pool, 3)
        release.set()
        for t in [holder, *threads]:
            t.join(10)
        assert results == {f"r{k}": [f"out-{k}.{j}" for j in range(k + 1)] for k in range(3)}
        assert len(passes) == expected_passes  # merged only where the replica says its pairs are independent
        assert pool.batches_shared == (3 if expected_passes == 1 else 0)


def test_sharing_stops_at_the_budget_and_at_another_kind_of_batch():
    passes: list = []

    def run(replica, items):
        passes.append(list(items))
        return list(items)

    pool = WorkerPool([MergingReplica("a", [])], FakeTokenizer(), Choice("a", "test"))
    release = threading.Event()
    holder = _hold(pool, release)
    plain = []
    with pool.ticket("a") as a, pool.ticket("b") as b, pool.ticket("c") as c:
        futures = []
        for ticket, task in ((a, (600, Shared("pairs", ["a"], run, 1000, 100))),
                             (b, (600, Shared("pairs", ["b"], run, 1000, 100))),  # would pass the budget with a's
                             (c, (10, lambda replica: plain.append("c") or "c"))):
            futures.append(threading.Thread(target=pool.run, args=(ticket, [task])))
            futures[-1].start()
            _queued(pool, len(futures))
        release.set()
        for t in [holder, *futures]:
            t.join(10)
    assert passes == [["a"], ["b"]] and plain == ["c"]
    assert pool.batches_shared == 0


def test_a_client_with_many_requests_gets_no_more_turns_than_a_client_with_one():
    log: list = []
    pool = _pool(1, log, seconds=0.01)
    flood = [pool.ticket(f"flood{n}", client="flooder") for n in range(4)]
    threads = [threading.Thread(target=pool.run, args=(t, [(10, _task(f"flood{n}-{i}")) for i in range(10)]))
               for n, t in enumerate(flood)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # the flood is under way
    with pool.ticket("single", client="other") as single:
        pool.run(single, [(10, _task(f"single{i}")) for i in range(6)])
    labels = [label for label, _ in log]
    window = labels[labels.index("single0"):labels.index("single5") + 1]
    # one flood batch between each of the other client's batches: the four flooding requests share one turn
    assert len(window) <= 2 * 6, window
    for thread in threads:
        thread.join(10)
    for ticket in flood:
        ticket.__exit__(None, None, None)
    assert len(log) == 46 and not pool._shares  # every batch ran; closed clients leave no share behind


def test_background_work_waits_while_a_request_is_in_the_service_even_between_its_batches():
    log: list = []
    pool = _pool(1, log, seconds=0.005)
    with pool.foreground():  # a request is planning: none of its batches is queued yet
        build = pool.ticket("index build", background=True)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (pool.run(build, [(1, _task("bg0")), (1, _task("bg1"))]), done.set()))
        worker.start()
        assert not done.wait(0.2) and log == []  # nothing of the build ran while the request was in the service
    assert done.wait(5) and [label for label, _ in log] == ["bg0", "bg1"]
    worker.join(5)
    build.__exit__(None, None, None)


def test_a_stream_of_new_clients_never_starves_an_older_request():
    log: list = []
    pool = _pool(1, log, seconds=0.002)
    old = pool.ticket("old", client="old")
    waiting = threading.Thread(target=pool.run, args=(old, [(1000, _task(f"old{i}")) for i in range(5)]))
    waiting.start()

    def stream(k: int) -> None:
        for n in range(40):
            with pool.ticket(f"new{k}-{n}", client=f"new{k}-{n}") as new:  # each request a client with nothing in flight
                pool.run(new, [(1000, _task(f"new{k}-{n}"))])

    streams = [threading.Thread(target=stream, args=(k,)) for k in range(3)]
    for thread in streams:
        thread.start()
    for thread in [waiting, *streams]:
        thread.join(30)
    old.__exit__(None, None, None)
    labels = [label for label, _ in log]
    assert len(labels) == 125 and labels.index("old4") < 0.6 * len(labels)  # served while the streams still ran


def test_a_new_clients_small_request_goes_ahead_of_a_large_one_that_started_alone():
    log: list = []
    pool = _pool(1, log, seconds=0.01)
    large = pool.ticket("large", client="large")  # arrives alone: nothing else waits
    worker = threading.Thread(target=pool.run, args=(large, [(512, _task(f"large{i}")) for i in range(40)]))
    worker.start()
    time.sleep(0.1)  # the large request is well under way
    with pool.ticket("small", client="small") as small:
        arrived = len(log)
        pool.run(small, [(512, _task("small0")), (512, _task("small1"))])
    labels = [label for label, _ in log]
    assert labels.index("small1") <= arrived + 2  # both small batches next, after at most the batch in progress
    worker.join(10)
    large.__exit__(None, None, None)


def test_closing_ends_the_workers_and_lets_go_of_the_replicas():
    """A model no longer needed is freed: its worker threads end and nothing keeps its replicas alive."""
    import gc
    import weakref

    log: list = []
    pool = _pool(2, log)
    assert sorted(pool.map([lambda r: r.name] * 2)) == ["a", "a"]
    held = [weakref.ref(replica) for replica in pool.replicas]
    threads = list(pool._threads.values())
    assert pool.close(timeout=10)
    gc.collect()
    assert not any(thread.is_alive() for thread in threads)
    assert all(ref() is None for ref in held)
    with pytest.raises(RuntimeError, match="closed"):
        pool.ticket("late")
