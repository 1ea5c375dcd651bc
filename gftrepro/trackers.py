"""``--report-to``: metrics to the experiment trackers labs use, through each library itself.

    gft train --report-to tensorboard            # event files in <run>/train/<version>/tensorboard
    gft run --report-to tensorboard,mlflow       # every training's steps, every eval's and the run's results

| name        | where it writes (nothing leaves the machine unless you configure it) | install              |
|-------------|-----------------------------------------------------------------------|----------------------|
| tensorboard | ``<version folder>/tensorboard`` (``tensorboard --logdir <run>``)      | ``gft[tensorboard]`` |
| mlflow      | MLflow's file store ``<run>/mlruns`` (``pass@k`` sent as ``pass_at_k``)       | ``gft[mlflow]``      |
| wandb       | ``<run>/wandb``, offline mode unless ``WANDB_MODE`` says otherwise     | ``gft[wandb]``       |
| trackio     | trackio's local store ``<run>/trackio`` unless ``TRACKIO_DIR`` is set   | ``gft[trackio]``     |

``metrics.jsonl`` stays the record; trackers get a copy. Training sends each step's metrics (loss,
entropy, KL to the base, the DCR-rectified share, the on-policy reward, learning rate, gradient
norm, tokens/s, ...) and the resolved config; ``gft eval`` and ``gft run`` send their final metrics
(pass@k per benchmark) and plots. Only the main process reports. Steps are sent when they are safe
on disk: at each checkpoint and at the end, so a run killed and resumed continues the same tracker
run (its ids are kept in ``trackers.json`` beside the outputs) and sends every step exactly once.
Trackers never enter a version hash.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from gftrepro.errors import GftError
from gftrepro.store import atomic_write_bytes

KNOWN = ("tensorboard", "mlflow", "wandb", "trackio")
PROJECT = "gft"
STATE = "trackers.json"


def names_of(report_to: list[str]) -> list[str]:
    """The trackers asked for, checked: known names, each installed (else one line saying how)."""
    names = list(dict.fromkeys(n.strip().lower() for n in report_to if n.strip() and n.strip().lower() != "none"))
    for n in names:
        if n not in KNOWN:
            raise GftError(f"unknown tracker '{n}' in --report-to (known: {', '.join(KNOWN)})")
        if importlib.util.find_spec(n) is None:  # found, not imported: trackio reads TRACKIO_DIR on import
            raise GftError(f"--report-to {n}: the {n} package is not installed: install with "
                           f"pip install 'gft[{n}]'")
    return names


def numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
            and k != "step"}


class TensorBoard:
    def __init__(self, folder: Path, run_dir: Path, name: str, state: dict, resume_step: int, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events written after the last step this tracker recorded as sent (a kill between sending
        # and recording) are dropped when the run resumes, then sent again
        sent = state.get("sent", {}).get("tensorboard", 0)
        self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=sent + 1 if resume_step else None)
        if config and not resume_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def image(self, name: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def floor(self) -> int | None:
        return None  # purge_step above

    def commit(self) -> None:
        self.writer.flush()  # on disk before the step is recorded as sent

    def close(self, finished: bool) -> None:
        self.writer.close()


def mlflow_name(key: str) -> str:
    """MLflow allows alphanumerics, _ - . space : / in metric names: pass@16 is sent as pass_at_16."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key.replace("@", "_at_"))


class MLflow:
    def __init__(self, folder: Path, run_dir: Path, name: str, state: dict, resume_step: int, config: dict):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store as an opt-in
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name(PROJECT)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(PROJECT)
        new = "mlflow" not in state
        self.run_id = state.get("mlflow") or self.client.create_run(exp_id, run_name=name).info.run_id
        state["mlflow"] = self.run_id
        self.boundary: tuple[int, set[str]] = (-1, set())
        if new and config:  # params are immutable in MLflow: a resumed run already has them
            from mlflow.entities import Param

            params = [Param(k, json.dumps(v, default=str)[:6000]) for k, v in sorted(config.items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        held = self.boundary[1] if step == self.boundary[0] else set()  # a step a kill left half-written
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_name(k), v, now, step) for k, v in metrics.items()
                                                    if mlflow_name(k) not in held])

    def image(self, name: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def floor(self) -> int | None:
        """The step before the last one the run holds: the file store writes a batch one metric at a time, so
        a kill can leave the last step half-written; it is sent again, without the keys it already holds."""
        keys = list(self.client.get_run(self.run_id).data.metrics)
        last = {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1) for k in keys}
        if not last:
            return None
        top = max(last.values())
        self.boundary = (top, {k for k, step in last.items() if step == top})
        return top - 1

    def close(self, finished: bool) -> None:
        if finished:
            self.client.set_terminated(self.run_id, "FINISHED")


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B offline ``.wandb`` file (its framing: 32 KiB blocks of chunks, each a 7-byte header of
    checksum, length and kind: full, first, middle, last), up to the first torn or cut one."""
    data, pos, partial = path.read_bytes(), 7, b""
    if data[:4] != b":W&B":
        return
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):
            return  # cut short by a kill
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            yield partial + chunk


def wandb_history(path: Path) -> Iterator[tuple[int, dict]]:
    """(step, metrics) of each history record of a W&B offline file."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    for raw in wandb_records(path):
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except DecodeError:
            return
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            yield int(items.pop("_step")), {k: v for k, v in items.items() if not k.startswith("_")}


class WandB:
    def __init__(self, folder: Path, run_dir: Path, name: str, state: dict, resume_step: int, config: dict):
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")  # nothing leaves the machine unless the user says so
        self.wandb = wandb
        state.setdefault("wandb", uuid.uuid4().hex[:12])
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), id=state["wandb"], name=name,
                              resume="allow", dir=str(run_dir), reinit="create_new", config=config or None,
                              settings=wandb.Settings(quiet=True, console="off"))
        self.files = run_dir / "wandb"

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def image(self, name: str, path: Path, step: int) -> None:
        self.run.log({name: self.wandb.Image(str(path))}, step=step)

    def floor(self) -> int | None:
        """Offline: the last step the run's files hold (W&B writes them from its own service process, so a kill
        just after a flush can lose steps the watermark counts as sent); online: the recorded watermark."""
        if not self.run.settings._offline:
            return None
        steps = [step for path in self.files.glob(f"offline-run-*-{self.run.id}/run-{self.run.id}.wandb")
                 for step, _ in wandb_history(path)]
        return max(steps, default=0)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


class Trackio:
    def __init__(self, folder: Path, run_dir: Path, name: str, state: dict, resume_step: int, config: dict):
        os.environ.setdefault("TRACKIO_DIR", str((run_dir / "trackio").resolve()))  # read when trackio is imported
        import trackio

        self.trackio = trackio
        state.setdefault("trackio", name)
        self.name = state["trackio"]
        flat = {k: json.dumps(v, default=str) if isinstance(v, list | dict) else v for k, v in (config or {}).items()}
        self.run = trackio.init(project=PROJECT, name=state["trackio"], resume="allow", embed=False,
                                auto_log_cpu=False, auto_log_gpu=False, config=flat or None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def image(self, name: str, path: Path, step: int) -> None:
        self.run.log({name: self.trackio.Image(str(path))}, step=step)

    def floor(self) -> int | None:
        from trackio.sqlite_storage import SQLiteStorage

        # None: the store holds no step of this run (trackio writes from a background thread, so a kill can
        # come after gft counted steps as sent and before any reached the store): all are sent again
        return SQLiteStorage.get_max_step_for_run(PROJECT, self.name) or 0

    def close(self, finished: bool) -> None:
        self.run.finish()


SINKS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB, "trackio": Trackio}


class Trackers:
    """The trackers of one stage version (``folder``), in run ``run_dir``; ``name`` labels its tracker runs.

    ``add`` buffers a step's metrics; ``flush`` sends what is buffered (called once the steps are safe on
    disk: at a checkpoint, at the end) and records, per tracker, the last step sent, so a resumed run sends
    only later steps. A kill between sending and recording is repaired on resume where the library can
    say what it holds (TensorBoard purges past the record; MLflow and trackio report their last step; W&B
    offline, its run files are read); for W&B online the record alone decides. With no names it does
    nothing, and nothing is imported."""

    def __init__(self, names: list[str], folder: Path, run_dir: Path, name: str, config: dict | None = None,
                 resume_step: int = 0):
        self.folder, self.pending, self.sinks = folder, [], []
        self.state = self.read_state() if names else {}
        if resume_step == 0:
            self.state.pop("sent", None)
        self.sent: dict[str, int] = self.state.setdefault("sent", {})
        for n in names:
            sink = SINKS[n](folder, run_dir, name, self.state, resume_step, config or {})
            held = sink.floor() if resume_step else None
            if held is not None:  # what the library holds is the truth (trackio writes in the background)
                self.sent[n] = int(held)
            self.sinks.append((n, sink))
        if self.sinks:
            self.write_state()

    def read_state(self) -> dict:
        try:
            return json.loads((self.folder / STATE).read_text())
        except (OSError, ValueError):
            return {}

    def write_state(self) -> None:
        atomic_write_bytes(self.folder / STATE, json.dumps(self.state).encode())

    def add(self, metrics: dict) -> None:
        if self.sinks and metrics.get("step", 0) > min(self.sent.get(n, 0) for n, _ in self.sinks):
            self.pending.append(metrics)

    def flush(self) -> None:
        if not self.pending:
            return
        for n, sink in self.sinks:
            mine = [m for m in self.pending if m["step"] > self.sent.get(n, 0)]
            for m in mine:
                sink.log(numeric(m), int(m["step"]))
            if mine and hasattr(sink, "commit"):
                sink.commit()
            if mine:
                self.sent[n] = int(mine[-1]["step"])
                self.write_state()
        self.pending = []

    def final(self, metrics: dict, images: dict[str, Path], step: int = 0) -> None:
        """A stage's results: scalar metrics and PNG plots, at ``step``; the same results again (a rerun that
        did no work) are not sent twice."""
        key = json.dumps(numeric(metrics), sort_keys=True)
        if not self.sinks or self.state.get("final") == key:
            return
        for _, sink in self.sinks:
            sink.log(numeric(metrics), step)
            for name, path in images.items():
                if path.is_file():
                    sink.image(name, path, step)
        self.state["final"] = key
        self.write_state()

    def close(self, finished: bool = True) -> None:
        if finished:
            self.flush()
        for _, sink in self.sinks:
            sink.close(finished)
        self.sinks = []
