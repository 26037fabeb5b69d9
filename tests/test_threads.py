"""cvapps.threads: the one thread-stage helper used by sources, the predictor and the writer."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from cvapps.errors import CvappsError
import cvapps.threads as threads_module
from cvapps.threads import Consumer, Producer


def test_producer_yields_in_order_and_bounds_the_queue() -> None:
    produced = []

    def produce(stop: threading.Event):
        for i in range(20):
            produced.append(i)
            yield i

    stage = Producer(produce, maxsize=2)
    it = iter(stage)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 4  # 1 taken + 2 queued + 1 waiting to be put: bounded
    assert list(it) == list(range(1, 20))


def test_producer_error_reraised_in_consumer() -> None:
    def produce(stop: threading.Event):
        yield 1
        raise ValueError("decoder exploded")

    stage = Producer(produce)
    got = []
    with pytest.raises(ValueError, match="decoder exploded"):
        for item in stage:
            got.append(item)
    assert got == [1]


def test_producer_keep_newest_drops_stale_items() -> None:
    def produce(stop: threading.Event):
        for i in range(200):
            time.sleep(0.001)
            yield i

    stage = Producer(produce, keep_newest=True)
    got = []
    for item in stage:
        got.append(item)
        time.sleep(0.02)
    assert got == sorted(got) and got[-1] == 199
    assert stage.dropped > 0 and len(got) + stage.dropped == 200


def test_producer_stop_and_close_are_prompt() -> None:
    def produce(stop: threading.Event):
        i = 0
        while not stop.is_set():
            i += 1
            yield i

    stage = Producer(produce, maxsize=1)
    it = iter(stage)
    next(it)
    stage.stop()  # what a signal handler calls
    assert list(it) == []
    assert stage.close() is True
    assert stage.thread is not None and not stage.thread.is_alive()
    assert Producer(produce).close() is False  # never started


def test_consumer_handles_in_order_and_finishes() -> None:
    seen = []
    stage = Consumer(seen.append, maxsize=2)
    stage.start()
    for i in range(50):
        stage.put(i)
    stage.finish()
    assert seen == list(range(50)) and not stage.is_alive()


def test_consumer_error_raised_at_next_put() -> None:
    def handle(item: int) -> None:
        if item == 3:
            raise OSError("disk full")

    stage = Consumer(handle, maxsize=1)
    stage.start()
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            stage.put(i)
    stage.finish()
    assert isinstance(stage.error, OSError)


def test_consumer_abort_drops_queue() -> None:
    seen = []
    release = threading.Event()

    def handle(item: int) -> None:
        release.wait(5)
        seen.append(item)

    stage = Consumer(handle, maxsize=10)
    stage.start()
    for i in range(10):
        stage.put(i)
    stage.abort()
    release.set()
    stage.finish()
    assert len(seen) <= 1  # at most the item being handled when aborted
    with pytest.raises(CvappsError, match="stopped unexpectedly"):
        stage.put(99)


def test_byte_budget_bounds_queued_bytes() -> None:
    """A frame count alone lets a queue of large photos hold gigabytes: the byte budget waits."""
    produced = []

    def produce(stop: threading.Event):
        for i in range(10):
            produced.append(i)
            yield bytes(100)

    stage = Producer(produce, maxsize=64, max_bytes=250, weigh=len)
    it = iter(stage)
    next(it)
    time.sleep(0.2)
    assert len(produced) <= 4  # 1 taken + 2 queued (200 bytes) + 1 waiting for room
    assert len(list(it)) == 9

    sizes = []
    held = threading.Event()

    def handle(item: bytes) -> None:
        held.wait(5)
        sizes.append(len(item))

    sink = Consumer(handle, maxsize=64, max_bytes=250, weigh=len)
    sink.start()
    putter = threading.Thread(target=lambda: [sink.put(bytes(100)) for _ in range(10)], daemon=True)
    putter.start()
    time.sleep(0.2)
    assert putter.is_alive()  # blocked: the budget is full while the writer is busy
    held.set()
    putter.join(5)
    sink.finish()
    assert sizes == [100] * 10
    big = Producer(lambda stop: iter([bytes(1000)]), max_bytes=10, weigh=len)
    assert [len(b) for b in big] == [1000]  # one item alone always fits


def test_openmp_workers_sleep_unless_the_user_chose() -> None:
    """Importing cvapps (before torch) sets OMP_WAIT_POLICY=PASSIVE; a user's own setting is kept."""
    import os
    import subprocess
    import sys

    code = "import os, cvapps, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
def test_stage_threads_run_below_the_model_threads_priority() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    main = niceness()
    seen: list[int] = []
    assert list(Producer(lambda stop: iter([niceness()]))) == [min(19, main + threads_module.STAGE_NICENESS)]
    writer = Consumer(lambda item: seen.append(niceness()))
    writer.start()
    writer.put(1)
    writer.finish()
    assert seen == [min(19, main + threads_module.STAGE_NICENESS)]
    assert niceness() == main, "the caller's own thread keeps its priority"
