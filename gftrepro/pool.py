"""A process pool with a hard wall-clock deadline per item.

math-verify's own timeouts use ``signal.alarm``: they fail off the main thread and cannot
interrupt a long big-integer operation inside C code (``9^{9^{9^{9}}}``). Here each worker
process gets one item at a time; the parent waits on the workers' pipes, and a worker still busy
past ``timeout`` seconds is killed (SIGKILL) and replaced, and its item is reported as timed out.
The pool never waits on a hung worker: at most ``timeout`` plus a process start per bad item.

Workers come from a ``forkserver`` (a clean, single-threaded parent to fork from), so a caller
that has pyarrow or torch threads running is safe. Two more guarantees:

- **The deadline counts the item, not the start-up.** A worker says it is ready once its function is
  imported; only then does it get an item and its clock start (a loaded machine once turned correct
  answers into timeouts because each new worker's imports ate the deadline).
- **Workers die with gft.** The fork server and every worker ask the kernel for SIGKILL when their
  parent dies (Linux ``PR_SET_PDEATHSIG``; the server through ``gftrepro.orphans``), so a SIGKILLed
  gft leaves no worker burning CPU on a power tower; a worker also leaves when its pipe closes.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

from gftrepro.locks import alive

TIMED_OUT = object()  # the result given for an item that passed its deadline
READY = "ready"  # a new worker's first message
START_LIMIT = 300.0  # seconds a new worker may take to import its function before the pool gives up


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def worker_loop(fn: Callable[..., Any], conn: Connection, owner: int) -> None:
    die_with_parent()  # the parent is the fork server, which itself dies with the owner (gftrepro.orphans)
    if not alive(owner):  # the owner died before the request above took hold
        os._exit(1)
    conn.send(READY)
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
        self.process = ctx.Process(target=worker_loop, args=(fn, child, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.key: Any = None
        self.started = 0.0

    def ready(self) -> None:
        """Wait for the worker's first message (its imports done), so no deadline counts them."""
        if not self.conn.poll(START_LIMIT):
            self.kill()
            raise RuntimeError(f"a verifier worker did not start within {START_LIMIT:.0f} s")
        if self.conn.recv() != READY:
            raise RuntimeError("a verifier worker sent something before it was ready")

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
        # modules imported once in the fork server, so a replacement worker starts fast; the first
        # makes the fork server die with this process
        self.ctx.set_forkserver_preload(["gftrepro.orphans", *(preload or [])])
        self.workers: list[Worker] = []
        self.timeouts = 0

    def __enter__(self) -> DeadlinePool:
        self.workers = [Worker(self.ctx, self.fn) for _ in range(self.size)]
        for w in self.workers:  # all started side by side, then waited for: no clock runs meanwhile
            w.ready()
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
                if now - worker.started > self.timeout and not conn.poll():  # a sent answer is never late
                    del busy[conn]
                    self.timeouts += 1
                    key = worker.key
                    self.replace(worker)
                    yield key, False, TIMED_OUT
                    feed(self.workers[-1])

    def replace(self, worker: Worker) -> None:
        worker.kill()
        self.workers.remove(worker)
        fresh = Worker(self.ctx, self.fn)
        fresh.ready()
        self.workers.append(fresh)
