"""One writer per version: ``writer_lock`` holds ``<version>/.lock`` (the holder's pid, host, start time and
command) while a stage writes; a second writer gets one clear error naming the holder, and a lock whose
holder died on this host is taken over."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from gftrepro.errors import GftError


class Versioned(Protocol):
    """What a lock needs of a version folder (``store.VersionDir``)."""

    path: Path
    stage: str
    version: str


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for
    the holder; '' where /proc is not there."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid: int, start: str = "") -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not start or process_start(pid) in ("", start)


def lock_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder, or None when the lock is gone or stale (its holder on this host died)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "since": "?", "command": f"unreadable lock file {path}"}
    if holder.get("host") == socket.gethostname() and not alive(int(holder["pid"]), holder.get("start", "")):
        return None
    return holder


@contextmanager
def writer_lock(vdir: Versioned, part: str = "") -> Iterator[None]:
    """Hold ``.lock`` (or ``.lock-<part>`` for one part of a shard-parallel stage) while writing a version.
    A second writer gets one clear error naming the holder; a lock whose holder died on this host is
    taken over. A whole-version writer and a part writer exclude each other."""
    name = ".lock" + (f"-{part}" if part else "")
    path = vdir.path / name
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": " ".join(sys.argv)}
    tmp = vdir.path / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)  # atomic: fails if held, and the lock is never seen half-written
                break
            except FileExistsError:
                holder = lock_holder(path)
                if holder is not None:
                    raise GftError(busy(vdir, holder, path)) from None
                path.unlink(missing_ok=True)  # stale: its holder is gone
        else:
            raise GftError(f"could not take the lock {path}")
    finally:
        tmp.unlink(missing_ok=True)
    try:
        for other in vdir.path.glob(".lock*"):
            conflict = other.name != name and (not part or other.name == ".lock")
            holder = lock_holder(other) if conflict else None
            if holder is not None:
                raise GftError(busy(vdir, holder, other))
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass


def busy(vdir: Versioned, holder: dict[str, Any], path: Path) -> str:
    return (f"{vdir.stage} version {vdir.version} is being written by pid {holder['pid']} on {holder['host']} "
            f"(since {holder['since']}: {holder['command']}); wait for it to finish, or if that process is gone, "
            f"delete {path}")


def running(vdir: Versioned) -> dict[str, Any] | None:
    """The live writer of this version, if any."""
    for path in vdir.path.glob(".lock*"):
        holder = lock_holder(path)
        if holder is not None:
            return holder
    return None
