"""A process pool with a hard wall-clock deadline per item.

math-verify's own timeouts use ``signal.alarm``: they fail off the main thread and cannot
interrupt a long big-integer operation inside C code (``9^{9^{9^{9}}}``). Here each worker
process gets one item at a time; the parent waits on the workers' pipes, and a worker still busy
past ``timeout`` seconds is killed (SIGKILL) and replaced, and its item is reported as timed out.
The pool never waits on a hung worker: at most ``timeout`` plus a process start per bad item.

Workers come from a ``forkserver`` (a clean, single-threaded parent to fork from), so a caller
that has pyarrow or torch threads running is safe.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

TIMED_OUT = object()  # the result given for an item that passed its deadline


def worker_loop(fn: Callable[..., Any], conn: Connection) -> None:
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        key, args = item
        try:
            conn.send((key, True, fn(*args)))
        except Exception as e:  # reported to the parent, which decides the status
            conn.send((key, False, f"{type(e).__name__}: {e}"))


class Worker:
    def __init__(self, ctx: Any, fn: Callable[..., Any]):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_loop, args=(fn, child), daemon=True)
        self.process.start()
        child.close()
        self.key: Any = None
        self.started = 0.0

    def submit(self, key: Any, args: tuple) -> None:
        self.key, self.started = key, time.monotonic()
        self.conn.send((key, args))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()


class DeadlinePool:
    """``for key, ok, result in pool.run(items)``: results in completion order.

    ``ok`` is False when ``fn`` raised (``result`` is the error text); ``result is TIMED_OUT``
    when the item passed its deadline (the worker was killed and replaced).
    """

    def __init__(self, fn: Callable[..., Any], workers: int, timeout: float, preload: list[str] | None = None):
        self.fn, self.size, self.timeout = fn, max(1, workers), timeout
        self.ctx = mp.get_context("forkserver")
        if preload:  # modules imported once in the fork server, so a replacement worker starts fast
            self.ctx.set_forkserver_preload(preload)
        self.workers: list[Worker] = []
        self.timeouts = 0

    def __enter__(self) -> DeadlinePool:
        self.workers = [Worker(self.ctx, self.fn) for _ in range(self.size)]
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def run(self, items: Iterable[tuple[Any, tuple]]):
        pending = iter(items)
        busy: dict[Connection, Worker] = {}

        def feed(worker: Worker) -> None:
            nxt = next(pending, None)
            if nxt is not None:
                worker.submit(*nxt)
                busy[worker.conn] = worker

        for w in self.workers:
            feed(w)
        while busy:
            now = time.monotonic()
            soonest = min(w.started for w in busy.values()) + self.timeout
            for conn in wait(list(busy), timeout=max(0.0, soonest - now)):
                worker = busy.pop(conn)
                try:
                    key, ok, result = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. out of memory): replace it
                    key, ok, result = worker.key, False, "worker process died"
                    self.replace(worker)
                    worker = self.workers[-1]
                yield key, ok, result
                feed(worker)
            now = time.monotonic()
            for conn, worker in list(busy.items()):
                if now - worker.started > self.timeout:
                    del busy[conn]
                    self.timeouts += 1
                    key = worker.key
                    self.replace(worker)
                    yield key, False, TIMED_OUT
                    feed(self.workers[-1])

    def replace(self, worker: Worker) -> None:
        worker.kill()
        self.workers.remove(worker)
        self.workers.append(Worker(self.ctx, self.fn))
