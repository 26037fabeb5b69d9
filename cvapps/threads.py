"""One thread stage: a worker thread joined to the caller by a bounded queue.

The same plumbing serves both directions (a bounded queue, so memory stays flat; a stop event, so
the stage can be stopped from anywhere, even a signal handler; an end sentinel; and the worker's
exception carried over the queue and re-raised on the caller's side):

* :class:`Producer`: the worker runs ``produce(stop_event)`` and queues what it yields; the caller
  iterates the stage. Sources (decode ahead) and the predictor (prefetch batches) use it.
* :class:`Consumer`: the caller ``put``\\ s items; the worker calls ``handle(item)`` on each, in
  order. The runner's writer thread (sinks) uses it.

This module sits at the bottom of the package (it imports only :mod:`cvapps.errors`), so ``io``
and ``engine`` can both use it.

Threads that do not fight: torch's OpenMP workers by default spin (busy-wait) after every parallel
region, which on a machine with few cores takes the cores the reader and writer threads need, and
under load collapses the forward pass (measured on 2 shared cores: the shapes YOLO at 5-18
frames/s spinning vs 60-73 passive). :func:`passive_openmp` (called when ``cvapps`` is imported,
before torch loads) makes them sleep instead, unless the user set ``OMP_WAIT_POLICY`` already.
Every stage thread also lowers its own priority (:func:`yield_to_model`), so decoding and writing
fill the moments the model leaves a core idle rather than preempting its threads.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from cvapps.errors import CvappsError

__all__ = ["POLL_S", "QUEUE_BYTES", "Producer", "Consumer", "passive_openmp"]

T = TypeVar("T")

POLL_S = 0.1  # how often blocked queue operations re-check the stop event
#: Decoded frames queued between two stages (source -> prefetch -> ... -> writer) take at most
#: about this many bytes per queue (plus one item), whatever the frame count limit says.
QUEUE_BYTES = 256 << 20


def passive_openmp() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless set: OpenMP reads it once, when torch is first imported,
    so it takes effect only when cvapps is imported before torch (always so for the CLI)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: Niceness of the stage threads (reader, prefetch, writer); CVAPPS_STAGE_NICE=0 keeps them at the
#: model's priority. Measured (benchmarks/pipeline_overhead.py, video case, 2 cores): 5 -> 0.87-0.99 of
#: the slowest stage, 0 -> 0.77-0.93, in alternating runs.
STAGE_NICENESS = int(os.environ.get("CVAPPS_STAGE_NICE", "5"))


def yield_to_model() -> None:
    """Lower the calling thread's CPU priority (Linux niceness is per thread): stage threads then run
    in the moments the model's threads leave a core idle instead of taking cores from them."""
    if STAGE_NICENESS > 0 and sys.platform.startswith("linux"):  # elsewhere a thread id is no process id
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + STAGE_NICENESS))
        except OSError:
            pass


class _End:
    """Queue sentinel: the side that fills the queue has finished normally."""


_END = _End()


class _Raised:
    """Queue item: the worker raised; carries the exception to the caller."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Budget:
    """Bytes held by queued items, bounded: a put waits while the queue holds other items and
    adding this one would pass ``limit`` (one item alone always fits, however large)."""

    def __init__(self, limit: int, weigh: Callable[[Any], int]) -> None:
        self.limit, self.weigh = limit, weigh
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, item: Any, give_up: Callable[[], bool]) -> bool:
        """Reserve ``item``'s bytes; False when ``give_up()`` turns true while waiting."""
        n = self.weigh(item)
        with self._cond:
            while self.used > 0 and self.used + n > self.limit:
                if give_up():
                    return False
                self._cond.wait(POLL_S)
            self.used += n
        return True

    def release(self, item: Any) -> None:
        with self._cond:
            self.used = max(0, self.used - self.weigh(item))
            self._cond.notify_all()


def _drain(q: queue.Queue[Any]) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


class Producer(Generic[T]):
    """A worker thread that runs ``produce(stop_event)`` and queues its items for the caller.

    ``maxsize``: items queued ahead at most (the worker blocks while the queue is full);
    ``max_bytes`` with ``weigh(item) -> bytes``: also at most this many bytes queued (a frame
    count alone lets a queue of large photos grow to gigabytes). ``keep_newest``: one slot; a new item replaces one the caller has not taken yet (counted in
    ``dropped``), for live sources. ``on_exit``: called in the worker once it is done (releases
    what it held). Iterating starts the worker; an exception raised in it is re-raised by the
    iteration, as is. Single pass: iterating again after the end yields nothing.
    """

    def __init__(self, produce: Callable[[threading.Event], Iterable[T]], *, maxsize: int = 2,
                 keep_newest: bool = False, name: str = "cvapps-producer",
                 on_exit: Callable[[], None] | None = None, max_bytes: int | None = None,
                 weigh: Callable[[T], int] | None = None) -> None:
        self.name = name
        use_budget = max_bytes is not None and weigh is not None and not keep_newest
        self._budget = _Budget(max_bytes, weigh) if use_budget else None  # type: ignore[arg-type]
        self.stop_event = threading.Event()
        self.dropped = 0
        self._produce, self._on_exit = produce, on_exit
        self._keep_newest = keep_newest
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1 if keep_newest else max(1, maxsize))
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._finished = False

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread, or None before :meth:`start`."""
        return self._thread

    def start(self) -> None:
        """Start the worker (once); does nothing after :meth:`stop`."""
        with self._lock:
            if self._thread is None and not self.stop_event.is_set():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        yield_to_model()
        try:
            for item in self._produce(self.stop_event):
                if self.stop_event.is_set():
                    break
                if self._keep_newest:
                    self._put_newest(item)
                    continue
                if self._budget is not None and not self._budget.acquire(item, self.stop_event.is_set):
                    break
                if not self._put(item):
                    break
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, not swallowed
            self._put(_Raised(exc))
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _put(self, item: Any) -> bool:
        """Put without dropping; give up (False) once stopped."""
        while not self.stop_event.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _put_newest(self, item: Any) -> None:
        """Replace an item the caller has not taken yet; single producer, so this terminates."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def __iter__(self) -> Iterator[T]:
        self.start()
        while not self._finished and not self.stop_event.is_set():
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                thread = self._thread
                if thread is None or (not thread.is_alive() and self._queue.empty()):
                    self._finished = True  # the worker ended without a sentinel (stopped meanwhile)
                continue
            if item is _END:
                self._finished = True
                return
            if isinstance(item, _Raised):
                self._finished = True
                raise item.exc
            if self._budget is not None:
                self._budget.release(item)
            yield item

    def stop(self) -> None:
        """Ask the worker to stop, without waiting (takes no lock: safe in a signal handler).

        The caller's iteration ends at its next poll (<= ``POLL_S``)."""
        self.stop_event.set()

    def close(self, join_s: float = 1.0) -> bool:
        """Stop the worker and wait for it at most ``join_s`` s; False when it never started.

        A worker stuck in a call that cannot be interrupted (a capture's read) is left to end on
        its own (daemon thread), so close never hangs on it."""
        with self._lock:
            self.stop_event.set()
            thread = self._thread
        if thread is None:
            return False
        _drain(self._queue)  # a worker blocked on put notices the stop event at its next poll
        if thread is not threading.current_thread():
            thread.join(timeout=join_s)
        return True


class Consumer(Generic[T]):
    """A worker thread that calls ``handle(item)`` on every item the caller puts, in order.

    After ``handle`` raises, the worker keeps draining (so the caller never blocks) and the next
    :meth:`put` raises that exception; ``error`` holds it. :meth:`finish` handles what is queued
    and joins; after :meth:`abort` queued items are dropped. ``max_bytes``/``weigh``: as for
    :class:`Producer`.
    """

    def __init__(self, handle: Callable[[T], None], *, maxsize: int = 32, name: str = "cvapps-consumer",
                 max_bytes: int | None = None, weigh: Callable[[T], int] | None = None) -> None:
        self.error: BaseException | None = None
        self._budget = _Budget(max_bytes, weigh) if max_bytes is not None and weigh is not None else None
        self.aborted = threading.Event()
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        yield_to_model()
        while True:
            item = self._queue.get()
            if item is _END or self.aborted.is_set():
                return
            try:
                if self.error is None:  # after an error: keep draining; the caller raises it
                    self._handle(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's side
                self.error = exc
            finally:
                if self._budget is not None:
                    self._budget.release(item)

    def put(self, item: T) -> None:
        """Queue ``item`` (blocks while full); raises the worker's error, if any."""
        if self._budget is not None:
            self._budget.acquire(item, lambda: self.error is not None or not self._thread.is_alive())
        while True:
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive():
                raise CvappsError(f"{self._thread.name} thread stopped unexpectedly")
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def abort(self) -> None:
        """Drop what is queued: :meth:`finish` then returns at once."""
        self.aborted.set()

    def finish(self) -> None:
        """Handle everything queued (unless aborted), then stop the worker and join it."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=POLL_S)
                break
            except queue.Full:
                if self.aborted.is_set():
                    _drain(self._queue)
        if self._thread.ident is not None:
            self._thread.join()
