"""``gft run --jobs N``: the run's trainings and evaluations in N worker processes.

A job is one entry (a method or a chain) trained and evaluated with one seed, or the base student's
evaluation with one seed: the very functions the sequential loop of ``pipeline.run`` calls
(``train_and_evaluate``, ``evaluate_base``), so a job writes the versions that loop would write, and the
loop, run after the jobs, finds every one of them complete and only collects their results.

Two jobs that would write the same version never run at once: each job lists what it writes that
another job may also write (``holds``: the chain prefixes it trains, each link by its resolved train
and groups configs, and the groups a later offline link rebuilds from the previous link's model), and
a job starts only when, for each of them, the first job that holds it has finished, after which it
finds that work done and reuses it (``sft:grpo`` waits for ``sft``; ``gft-online@ratio=4:4``, the
same training as ``gft-online``, for ``gft-online``). The groups a first offline link rebuilds from the
base student (``gft@n_self=2``, every seed's) are built before the jobs start.

The machine's cores are shared out: each worker runs ``cores // N`` threads (at least 1). Small models
gain most: their steps are too small to keep two threads busy, so two one-thread processes do more work
than one two-thread process (``benchmarks/RESULTS.md`` has the figures). Thread counts change the order
of floating-point sums, so a number may differ in its last digits from a ``--jobs 1`` run; the versions
are the same. A failed job is reported in one line and the jobs that need it are skipped; the others
run on, and the run then stops with an error naming them (what finished is kept; rerun to resume).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console

from gftrepro.entries import Link, chain
from gftrepro.errors import GftError


@dataclass(frozen=True)
class Job:
    entry: str | None  # None: the base student's evaluation
    seed: int
    holds: frozenset  # what it writes that another job may also write

    @property
    def weight(self) -> int:
        """A rough cost, to start long jobs first: an evaluation 1, an offline link 1, an on-policy link 4
        (it samples every step)."""
        return 1 + sum(4 if link.online else 1 for link in chain(self.entry)) if self.entry else 1

    @property
    def label(self) -> str:
        return f"{self.entry or 'base'} seed {self.seed}"


def holds(entry: str, seed: int, resolve: Callable[[Link], tuple[str, str]]) -> frozenset:
    """The chain prefixes ``entry`` trains with ``seed``, each link by ``resolve`` (what it trains: its train
    config and groups config), and the groups its offline links after the first rebuild from the previous
    link's model. (A first link's groups come from the base student: the run builds them before the jobs.)"""
    out: set[tuple] = set()
    prefix: tuple = (seed,)
    for link in chain(entry):
        trained, groups = resolve(link)
        if not link.online and len(prefix) > 1:
            out.add(("groups", prefix, groups))
        prefix = (*prefix, trained, groups)
        out.add(prefix)
    return frozenset(out)


def plan_jobs(entries: list[str], seeds: range, resolve: Callable[[Link], tuple[str, str]]) -> list[Job]:
    """Per seed: the base evaluation, then every entry."""
    jobs = []
    for seed in seeds:
        jobs.append(Job(None, seed, frozenset({("base", seed)})))
        jobs.extend(Job(entry, seed, holds(entry, seed, resolve)) for entry in entries)
    return jobs


def waits_for(jobs: list[Job]) -> list[set[int]]:
    """For each job, the jobs it must wait for: for each thing it holds, the first job that holds it (that
    job writes it; once it has finished, the others only read it, and may run side by side)."""
    owner: dict[tuple, int] = {}
    for j, job in enumerate(jobs):
        for key in job.holds:
            owner.setdefault(key, j)
    return [{owner[key] for key in job.holds} - {j} for j, job in enumerate(jobs)]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(jobs: int) -> tuple[int, int]:
    """(processes, threads each) for ``jobs`` (0 = one per core)."""
    workers = jobs or cores()
    return workers, max(1, cores() // workers)


def start_worker(threads: int) -> None:
    import torch

    from gftrepro.quiet import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()


def parallel(jobs: int) -> bool:
    """Whether ``jobs`` runs worker processes: more than one, or 0 (one per core) on a machine with several
    cores and no GPU. Several processes on one GPU are refused (torchrun spreads a training over GPUs)."""
    import torch

    if jobs == 1 or (jobs == 0 and (cores() == 1 or torch.cuda.is_available())):
        return False
    if torch.cuda.is_available():
        raise GftError(f"--jobs {jobs} runs worker processes on this machine's CPU cores; with a GPU use --jobs 1 "
                       "(and torchrun for several GPUs)")
    return True


def run_units(jobs: list[Job], count: int, work: Callable[[Job], float], console: Console) -> None:
    """Every job, ``count`` worker processes at a time (0 = one per core), each once the jobs it waits for have
    finished. ``work`` runs one job in a worker and returns its seconds (picklable: a module-level function)."""
    workers, threads = worker_count(count)
    console.print(f"  {len(jobs)} jobs (entries x seeds and the base evaluations) in {workers} processes of "
                  f"{threads} thread{'s' if threads > 1 else ''}", highlight=False)
    with worker_pool(workers, threads) as pool:
        failed = schedule(jobs, workers, lambda job: pool.submit(work, job), console)
    if failed:
        first = min(failed)
        raise GftError(f"{len(failed)} of {len(jobs)} jobs did not finish (first: {jobs[first].label}: "
                       f"{failed[first]}); finished work is kept: rerun to resume")


@contextmanager
def worker_pool(workers: int, threads: int) -> Iterator[ProcessPoolExecutor]:
    """Spawned workers of ``threads`` threads each; on an interrupt they are stopped too (their finished
    work is kept, their locks are stale and taken over by the next writer)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(threads) for k in saved})  # read by the workers' libraries as they start
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                               initargs=(threads,))
    clean = False
    try:
        yield pool
        clean = True
    finally:
        if not clean:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=clean, cancel_futures=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def schedule(jobs: list[Job], workers: int, submit: Callable[[Job], Future], console: Console) -> dict[int, str]:
    """Run the jobs, at most ``workers`` at once, each after the earlier jobs it waits for; a job whose
    prerequisite failed is skipped. Returns {job: why it did not finish}."""
    needs = waits_for(jobs)
    path = [job.weight for job in jobs]  # a job's weight and the longest chain of jobs waiting on it
    for j in reversed(range(len(jobs))):  # a job waits only on earlier ones
        for i in needs[j]:
            path[i] = max(path[i], jobs[i].weight + path[j])
    done: set[int] = set()
    failed: dict[int, str] = {}
    running: dict[Future, int] = {}
    waiting = sorted(range(len(jobs)), key=lambda j: (-path[j], j))  # the longest chains of work first
    while waiting or running:
        for j in list(waiting):
            blocked = needs[j] - done
            if blocked & set(failed):  # a job it needs failed (or was skipped)
                failed[j] = "skipped: " + ", ".join(jobs[i].label for i in sorted(blocked & set(failed)))
                waiting.remove(j)
            elif not blocked and len(running) < workers:
                waiting.remove(j)
                try:
                    running[submit(jobs[j])] = j
                except Exception as e:  # noqa: BLE001 - e.g. the pool broke: a worker was killed (out of memory?)
                    failed[j] = f"{type(e).__name__}: {e}"
                    console.print(f"  [red]failed[/red] {jobs[j].label}: {failed[j]}", highlight=False)
        if running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                j = running.pop(future)
                seconds, problem = outcome(future)
                if problem:
                    failed[j] = problem
                    console.print(f"  [red]failed[/red] {jobs[j].label}: {problem}", highlight=False)
                else:
                    done.add(j)
                    console.print(f"  [{len(done)}/{len(jobs)}] {jobs[j].label} ({seconds:.0f} s)", highlight=False)
    return failed


def outcome(future: Future) -> tuple[float, str]:
    """(seconds, '') for a finished job, (0, one line) for a failed one."""
    try:
        return future.result(), ""
    except GftError as e:
        return 0.0, str(e)
    except Exception as e:  # noqa: BLE001 - reported per job; --jobs 1 shows the traceback
        line = str(e).splitlines()[0] if str(e) else ""
        return 0.0, f"{type(e).__name__}: {line} (rerun with --jobs 1 --debug for the traceback)"
