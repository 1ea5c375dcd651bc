"""The artifact store: run folder / stage folder / version folder / shards + manifest.

Layout (docs/DESIGN.md section 3)::

    <run>/<stage>/<version>/
        config.json                       resolved config + input versions (written first)
        problems.parquet                  side tables a stage needs downstream (optional)
        shard-00000-of-00008.parquet      written to a temporary name, then os.replace'd
        ...
        manifest.json                     written last: present == complete

``version`` is a hash of the stage name, its versioned config fields and its inputs' versions,
so a changed config gets a new folder and an unchanged one finds its old results. A shard file
that exists is complete (the rename is atomic); a killed stage loses at most the shards in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import gftrepro
from gftrepro.config import content_hash
from gftrepro.errors import GftError

# pipeline order; each stage adds itself here when it exists
STAGES = ("sample-teacher", "sample-self", "verify", "build-groups", "train", "eval")
MANIFEST = "manifest.json"
CONFIG = "config.json"
SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.parquet$")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.parquet"


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, or raise one clear error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise GftError(f"output folder {folder} is not writable: {e.strerror or e}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def write_table(path: Path, table: pa.Table, metadata: dict[str, Any] | None = None) -> None:
    """Write Parquet to a temporary name in the same folder, then rename into place."""
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta[b"gft"] = json.dumps(metadata, default=str).encode()
        table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def shard_metadata(path: Path) -> dict[str, Any]:
    """The ``gft`` key-value metadata stored with a shard (timings, token counts)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"gft", b"{}"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class VersionDir:
    """One version folder of one stage."""

    path: Path
    stage: str
    version: str

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_complete(self) -> bool:
        return self.manifest_path.exists()

    def shard_path(self, index: int, count: int) -> Path:
        return self.path / shard_name(index, count)

    def done_shards(self) -> dict[int, int]:
        """{shard index: shard count} for every complete shard file present."""
        found = {}
        if self.path.is_dir():
            for entry in os.listdir(self.path):
                m = SHARD_RE.match(entry)
                if m:
                    found[int(m.group(1))] = int(m.group(2))
        return found

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def clear_stale_temporaries(self) -> None:
        """Remove temporary files left by killed writers (only call with no writer running)."""
        for entry in self.path.glob(".*.tmp-*"):
            entry.unlink(missing_ok=True)


def open_version(run_dir: Path, stage: str, config: dict[str, Any], inputs: dict[str, Any],
                 full_config: dict[str, Any]) -> VersionDir:
    """Create (or find) the version folder for this exact config and inputs."""
    version = content_hash({"stage": stage, "config": config, "inputs": inputs})
    folder = run_dir / stage / version
    ensure_writable(folder)
    if not (folder / CONFIG).exists():
        atomic_write_json(folder / CONFIG, {"stage": stage, "version": version, "config": full_config,
                                            "inputs": inputs, "created_at": now()})
    return VersionDir(folder, stage, version)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def environment() -> dict[str, Any]:
    """Versions of what can change results."""
    env = {"gft": gftrepro.__version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "transformers", "vllm", "datasets", "pyarrow"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # not installed (vllm is optional) or broken import
            continue
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        env["device"] = "unknown"
    return env


def finalize(vdir: VersionDir, shard_count: int, extra: dict[str, Any]) -> dict[str, Any] | None:
    """Write the manifest if every shard is present; return it, or None if shards are missing.

    Several processes sharing a stage (``--shard-index``) may all reach this point; each writes
    the same manifest atomically, so the last rename wins with identical content.
    """
    done = vdir.done_shards()
    if any(i not in done for i in range(shard_count)):
        return None
    cfg = json.loads((vdir.path / CONFIG).read_text(encoding="utf-8"))
    shards = []
    for i in range(shard_count):
        path = vdir.shard_path(i, shard_count)
        shards.append({"name": path.name, "rows": pq.read_metadata(path).num_rows,
                       "sha256": file_sha256(path), **shard_metadata(path)})
    manifest = {
        "stage": vdir.stage,
        "version": vdir.version,
        "complete": True,
        "completed_at": now(),
        "rows": sum(s["rows"] for s in shards),
        "config": cfg["config"],
        "inputs": cfg["inputs"],
        "shards": shards,
        "environment": environment(),
        **extra,
    }
    atomic_write_json(vdir.manifest_path, manifest)
    return manifest


def versions(run_dir: Path, stage: str) -> list[VersionDir]:
    folder = run_dir / stage
    if not folder.is_dir():
        return []
    return [VersionDir(p, stage, p.name) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def chosen_version(run_dir: Path, stage: str, wanted: str) -> VersionDir:
    """Version ``wanted`` of ``stage``, which must be complete; the latest complete one when ``''``."""
    if not wanted:
        return latest_complete(run_dir, stage)
    vdir = VersionDir(run_dir / stage / wanted, stage, wanted)
    if not vdir.is_complete():
        raise GftError(f"{stage} version {wanted} is not complete in {run_dir}")
    return vdir


def latest_complete(run_dir: Path, stage: str) -> VersionDir:
    """The most recently completed version of ``stage`` (what a downstream stage reads by default)."""
    done = [v for v in versions(run_dir, stage) if v.is_complete()]
    if not done:
        raise GftError(f"no complete '{stage}' stage in {run_dir}: run `gft {stage}` first")
    return max(done, key=lambda v: v.manifest_path.stat().st_mtime)


def status_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per version folder (or per missing stage), from manifests and shard names only."""
    rows = []
    for stage in STAGES:
        found = versions(run_dir, stage)
        if not found:
            rows.append({"stage": stage, "version": "-", "state": "missing", "shards": "-", "rows": "-",
                         "when": "-", "what": ""})
            continue
        for v in found:
            done = v.done_shards()
            total = max(done.values(), default=0)
            if v.is_complete():
                m = v.read_manifest()
                count = len(m.get("shards", []))  # train and eval keep no top-level shards
                what = m.get("summary", {}).get("method") or m.get("metrics", {}).get("model") or ""
                rows.append({"stage": stage, "version": v.version, "state": "complete",
                             "shards": f"{count}/{count}" if count else "-",
                             "rows": str(m["rows"]) if count else "-", "when": m.get("completed_at", "-"),
                             "what": str(what)})
            else:
                rows.append({"stage": stage, "version": v.version, "state": "partial",
                             "shards": f"{len(done)}/{total or '?'}", "rows": "-", "when": "-", "what": ""})
    return rows
