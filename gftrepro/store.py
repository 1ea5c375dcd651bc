"""The artifact store: run folder / stage folder / version folder / shards + manifest.

Layout (docs/DESIGN.md section 3)::

    <run>/<stage>/<version>/
        config.json                       resolved config + input versions (written first)
        problems.parquet                  side tables a stage needs downstream (optional)
        shard-00000-of-00008.parquet      written to a temporary name, then os.replace'd
        ...
        manifest.json                     written last

``version`` is a hash of the stage name, its versioned config fields and its inputs' versions,
so a changed config gets a new folder and an unchanged one finds its old results.

A version is *complete* when its manifest parses and every shard and file it lists exists with
the recorded size; a stage that reads a version (and a stage rerun over its own) also checks the
recorded sha256. A damaged version is named with what is wrong, and rerunning its stage removes
the damaged files and redoes only them. A shard without a manifest counts as done only if its
Parquet footer reads (a rename is atomic, but a copy or a full disk is not). One process writes a
version at a time: ``locks.writer_lock`` (holder's pid, host and start time; a dead holder's lock is
stale and taken over).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gftrepro.config import content_hash, within_run
from gftrepro.errors import GftError
from gftrepro.locks import alive, running
from gftrepro.provenance import environment

# pipeline order; each stage adds itself here when it exists
STAGES = ("sample-teacher", "sample-self", "verify", "build-groups", "train", "eval")
MANIFEST = "manifest.json"
CONFIG = "config.json"
OUTSIDE = "outside the version folder (a symbolic link?)"  # a listed file repair must never touch
SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.parquet$")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.parquet"


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, or raise one clear error."""
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise GftError(f"output folder {folder} is not writable: {parent} is a file, not a folder")
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
    """Write Parquet to a temporary name in the same folder, then rename into place.

    ``metadata`` (timings) goes to a hidden side file written first, never into the Parquet file: the
    same work gives byte-identical shards on any machine, so their hashes mean the content.
    """
    if metadata:
        atomic_write_json(side_file(path), metadata)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def side_file(shard: Path) -> Path:
    return shard.with_name(f".{shard.name}.json")


def shard_metadata(path: Path) -> dict[str, Any]:
    """What was measured while a shard was made (timings): its side file, or, for shards written before
    side files, the Parquet key-value metadata."""
    try:
        return json.loads(side_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(b"gft", b"{}"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path, root: Path) -> dict[str, Any]:
    """What a manifest records of one output file: its path inside the version, size and sha256."""
    return {"name": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": file_sha256(path)}


def readable_parquet(path: Path) -> bool:
    """The footer reads (a truncated or half-copied file fails here)."""
    try:
        pq.read_metadata(path)
        return True
    except Exception:  # pyarrow raises ArrowInvalid / OSError on truncated or foreign bytes
        return False


# what a manifest must hold beyond the listed files: every stage has config; eval has metrics
REQUIRED = {"eval": ("config", "metrics")}


@dataclass(frozen=True)
class VersionDir:
    """One version folder of one stage."""

    path: Path
    stage: str
    version: str

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def problems(self, hashes: bool = False) -> list[str]:
        """What keeps this version from being complete ([] = complete): the manifest, then each listed
        file (missing, wrong size; with ``hashes``, wrong content)."""
        return self.check(hashes)[0]

    def check(self, hashes: bool) -> tuple[list[str], list[Path]]:
        """(``problems``, the listed files that exist but are damaged: what ``repair`` removes)."""
        if not self.manifest_path.exists():
            return ["no manifest.json (not finished)"], []
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return [f"manifest.json does not parse ({type(e).__name__}: {e})"], []
        required = REQUIRED.get(self.stage, ("config", "summary"))
        if not isinstance(m, dict) or m.get("complete") is not True or any(k not in m for k in required):
            return [f"manifest.json lacks {', '.join(('complete',) + required)}"], []
        try:
            records = listed_files(m)
        except GftError as e:
            return [f"manifest.json: {e}"], []
        found, damaged = [], []
        for rec in records:
            path = self.path / rec["name"]
            if not self.holds(path):
                found.append(f"{rec['name']}: {OUTSIDE}")
                continue  # never removed by repair: it is not ours
            if not path.is_file():
                found.append(f"{rec['name']}: missing")
                continue
            if "size" in rec and path.stat().st_size != rec["size"]:
                found.append(f"{rec['name']}: {path.stat().st_size} bytes, the manifest says {rec['size']}")
            elif hashes and file_sha256(path) != rec["sha256"]:
                found.append(f"{rec['name']}: content differs from its sha256 in the manifest")
            else:
                continue
            damaged.append(path)
        return found, damaged

    def holds(self, path: Path) -> bool:
        """``path``, links resolved, lies inside this version folder (links within it are fine)."""
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(self.path)))

    def is_complete(self, hashes: bool = False) -> bool:
        return self.manifest_path.exists() and not self.problems(hashes)

    def verified(self) -> VersionDir:
        """This version, after checking every listed file's hash; a damaged one is one clear error."""
        if not self.manifest_path.exists():
            raise GftError(f"{self.stage} version {self.version} is not complete ({self.path}): run `gft {self.stage}`")
        found = self.problems(hashes=True)
        if found:
            raise GftError(f"{self.stage} version {self.version} is damaged ({self.path}): {first_few(found, '; ')}"
                           f"; rerun `gft {self.stage}` to redo the damaged parts")
        return self

    def shard_path(self, index: int, count: int) -> Path:
        return self.path / shard_name(index, count)

    def shard_paths(self) -> list[Path]:
        """The shards this version's manifest lists, in order (what a downstream stage reads)."""
        return [self.path / s["name"] for s in self.read_manifest()["shards"]]

    def done_shards(self) -> dict[int, int]:
        """{shard index: shard count} for every shard file present whose Parquet footer reads."""
        found = {}
        if self.path.is_dir():
            for entry in os.listdir(self.path):
                m = SHARD_RE.match(entry)
                if m and readable_parquet(self.path / entry):
                    found[int(m.group(1))] = int(m.group(2))
        return found

    def read_manifest(self) -> dict[str, Any]:
        found = self.problems()
        if found:
            raise GftError(f"{self.stage} version {self.version} is not complete ({self.path}): {found[0]}")
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def repair(self) -> list[str]:
        """Before a stage (re)writes this version: remove a damaged manifest and the files it lists
        that are damaged, and shards whose footer does not read; say what was removed. Call under
        ``writer_lock``."""
        said = []
        if self.manifest_path.exists():
            found, damaged = self.check(hashes=True)
            outside = [f for f in found if f.endswith(OUTSIDE)]
            if outside:
                raise GftError(f"{self.stage} version {self.version} lists files outside {self.path}: "
                               f"{first_few(outside, '; ')}; gft never modifies files outside a run: replace the "
                               "link with a copy of what it points to, or delete the version folder")
            if found:
                for path in damaged:
                    path.unlink()
                self.manifest_path.unlink()
                said.append(f"damaged, redoing: {first_few(found, '; ')}")
        bad = [p for p in sorted(self.path.rglob("shard-*.parquet")) if self.holds(p) and not readable_parquet(p)]
        for p in bad:
            p.unlink()
        if bad:
            said.append(f"unreadable, redoing: {first_few([p.relative_to(self.path).as_posix() for p in bad], ', ')}")
        return said

    def clear_stale_temporaries(self) -> None:
        """Remove temporary files whose writer is no longer running (their names end in its pid)."""
        for entry in self.path.glob(".*.tmp-*"):
            pid = entry.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and alive(int(pid))):
                entry.unlink(missing_ok=True)


def first_few(items: list[str], sep: str, shown: int = 3) -> str:
    """The first ``shown`` items joined, and how many more there are."""
    return sep.join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def listed_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file a manifest vouches for: its shards, then its other outputs (a model, eval samples)."""
    recs = [*manifest.get("shards", []), *manifest.get("files", [])]
    if not all(isinstance(r, dict) and isinstance(r.get("name"), str) and "sha256" in r for r in recs):
        raise GftError("manifest lists a file without name and sha256")
    return recs


def open_version(run_dir: Path, stage: str, config: dict[str, Any], inputs: dict[str, Any],
                 full_config: dict[str, Any]) -> VersionDir:
    """Create (or find) the version folder for this exact config and inputs.

    Paths inside the run folder enter the hash relative to it (``run:train/<version>/model``), so a
    copied or moved run folder keeps every version id; everything else is hashed as given.
    """
    payload = within_run({"stage": stage, "config": config, "inputs": inputs}, run_dir)
    version = content_hash(payload)
    folder = run_dir / stage / version
    ensure_writable(folder)
    if not (folder / CONFIG).exists():
        atomic_write_json(folder / CONFIG, {"stage": stage, "version": version, "config": full_config,
                                            "inputs": inputs, "created_at": now()})
    return VersionDir(folder, stage, version)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def finalize(vdir: VersionDir, shard_count: int, extra: dict[str, Any],
             files: list[Path] = ()) -> dict[str, Any] | None:
    """Write the manifest if every shard is present; return it, or None if shards are missing. It records
    each shard's rows, size and sha256, and the same for ``files`` (outputs that are not shards).

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
        shards.append({**file_record(path, vdir.path), "rows": pq.read_metadata(path).num_rows,
                       **shard_metadata(path)})
    manifest = {
        "stage": vdir.stage,
        "version": vdir.version,
        "complete": True,
        "completed_at": now(),
        "rows": sum(s["rows"] for s in shards),
        "config": cfg["config"],
        "inputs": cfg["inputs"],
        "shards": shards,
        "files": [file_record(f, vdir.path) for f in files],
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
    """Version ``wanted`` of ``stage`` (the latest finished one when ``''``), checked file by file against
    its manifest, hashes included: what a stage reading it gets, or one clear error."""
    if not wanted:
        return latest_complete(run_dir, stage)
    vdir = VersionDir(run_dir / stage / wanted, stage, wanted)
    if not vdir.manifest_path.exists():
        raise GftError(f"{stage} version {wanted} is not complete in {run_dir}")
    return vdir.verified()


def latest_complete(run_dir: Path, stage: str) -> VersionDir:
    """The most recently finished version of ``stage`` (what a downstream stage reads by default),
    verified; a damaged latest version is an error, never silently replaced by an older one."""
    done = [v for v in versions(run_dir, stage) if v.manifest_path.exists()]
    if not done:
        raise GftError(f"no complete '{stage}' stage in {run_dir}: run `gft {stage}` first")
    return max(done, key=lambda v: v.manifest_path.stat().st_mtime).verified()


def status_rows(run_dir: Path, hashes: bool = False) -> list[dict[str, Any]]:
    """One row per version folder (or per missing stage): complete, partial (with progress), running
    (a live writer holds its lock) or damaged (what is wrong). Sizes are checked; with ``hashes`` the
    content too. One bad version never stops the others from being listed."""
    rows = []
    for stage in STAGES:
        found = versions(run_dir, stage)
        if not found:
            rows.append({"stage": stage, "version": "-", "state": "missing", "shards": "-", "rows": "-",
                         "when": "-", "what": ""})
        for v in found:
            try:
                rows.append(version_row(v, hashes))
            except Exception as e:  # a file we cannot read must not hide the rest of the run
                rows.append({"stage": stage, "version": v.version, "state": "damaged", "shards": "-", "rows": "-",
                             "when": "-", "what": f"{type(e).__name__}: {e}"})
    return rows


def version_row(v: VersionDir, hashes: bool) -> dict[str, Any]:
    row = {"stage": v.stage, "version": v.version, "shards": "-", "rows": "-", "when": "-", "what": ""}
    found = v.problems(hashes)
    if not found:
        m = json.loads(v.manifest_path.read_text(encoding="utf-8"))
        count = len(m.get("shards", []))  # train and eval keep no top-level shards
        what = m.get("summary", {}).get("method") or m.get("metrics", {}).get("model") or ""
        return row | {"state": "complete", "shards": f"{count}/{count}" if count else "-",
                      "rows": str(m["rows"]) if count else "-", "when": m.get("completed_at", "-"), "what": str(what)}
    holder = running(v)
    if v.manifest_path.exists() and holder is None:
        return row | {"state": "damaged", "what": "; ".join(found[:2]) + (f" (+{len(found) - 2})" if len(found) > 2
                                                                         else "")}
    row |= {"state": "running" if holder else "partial", "what": f"pid {holder['pid']}" if holder else ""}
    state_file = v.path / "checkpoint" / "trainer_state.json"
    if state_file.exists():  # a train version: the checkpoint's step
        state = json.loads(state_file.read_text())
        return row | {"shards": f"step {state['step']}/{state.get('total_steps', '?')}"}
    shards = list(v.path.rglob("shard-*.parquet"))
    done = v.done_shards()
    total = max(done.values(), default=0)
    return row | {"shards": f"{len(done)}/{total}" if total else f"{len(shards)} files"}
