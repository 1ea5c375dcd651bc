"""--report-to: every tracker's own reader gives back exactly metrics.jsonl, after a SIGKILL and resume too
(TensorBoard's event reader, MlflowClient on the file store, the W&B offline run files, trackio's local
store); eval and the bad-input lines."""

import json
import os
import shutil

import pytest
from conftest import copy_run, gft, kill_midway

from gftrepro.engine.state import metric_lines
from gftrepro.errors import GftError
from gftrepro.trackers import names_of, wandb_history

ALL = "tensorboard,mlflow,wandb,trackio"


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory, grouped_template):
    return copy_run(grouped_template, tmp_path_factory.mktemp("trackers") / "run")


def expected(version):
    return {(m["step"], k): float(v) for m in metric_lines(version / "metrics.jsonl") for k, v in m.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


def tensorboard_points(version):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(version / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [((e.step, tag), e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def mlflow_points(run, run_id):
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    keys = client.get_run(run_id).data.metrics
    return [((m.step, k), m.value) for k in keys for m in client.get_metric_history(run_id, k)]


def wandb_points(run, run_id):
    return [((step, k), float(v)) for path in sorted(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
            for step, items in wandb_history(path) for k, v in items.items()]


def trackio_points(run, name, monkeypatch):
    import trackio.sqlite_storage as storage
    from trackio.sqlite_storage import SQLiteStorage

    assert (run / "trackio").is_dir()  # gft put trackio's local store in the run folder
    monkeypatch.setattr(storage, "TRACKIO_DIR", run / "trackio")  # read there (the module read its env on import)

    return [((row["step"], k), float(v)) for row in SQLiteStorage.get_logs("gft", name)
            for k, v in row.items() if k not in ("step", "timestamp") and isinstance(v, int | float)]


def check_every_tracker(run, version, monkeypatch):
    want = expected(version)
    state = json.loads((version / "trackers.json").read_text())
    readers = [("tensorboard", tensorboard_points(version)), ("mlflow", mlflow_points(run, state["mlflow"])),
               ("wandb", wandb_points(run, state["wandb"])),
               ("trackio", trackio_points(run, state["trackio"], monkeypatch))]
    for name, points in readers:
        keys = [k for k, _ in points]
        assert len(keys) == len(set(keys)), f"{name}: a step sent twice"
        got = dict(points)
        assert set(got) == set(want), (name, sorted(set(want) ^ set(got))[:5])
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-7), (name, k)


@pytest.mark.slow
def test_every_tracker_holds_metrics_jsonl_after_a_kill_and_resume(grouped_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    monkeypatch.delenv("TRACKIO_DIR", raising=False)  # gft puts trackio's store in the run folder itself
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["train", "--run", str(run), "--method", "gft", "--max-steps", "6", "--batch-size", "2", "--save-every",
            "2", "--kl-every", "1", "--report-to", ALL]
    kill_midway(args, run, "train/*/checkpoint/trainer_state.json")
    gft(*args, check=True)
    (version,) = (run / "train").iterdir()
    assert [m["step"] for m in metric_lines(version / "metrics.jsonl")] == list(range(1, 7))
    assert {"loss", "entropy", "kl_ref", "rectified_share", "lr", "grad_norm", "tokens_per_s"} <= \
        {k for _, k in expected(version)}
    check_every_tracker(run, version, monkeypatch)
    manifest = json.loads((version / "manifest.json").read_text())
    assert "report_to" not in json.dumps(manifest["config"].get("versioned", {}))


def test_bad_tracker_names_and_missing_packages_are_one_line(monkeypatch):
    with pytest.raises(GftError, match="unknown tracker 'neptune'"):
        names_of(["tensorboard", "neptune"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(GftError, match=r"install with pip install 'gft\[wandb\]'"):
        names_of(["wandb"])
    assert names_of(["none"]) == [] and names_of([]) == []


def test_trackers_never_change_a_version(tmp_path):
    from gftrepro import config as cfg
    from gftrepro.engine.config import TrainConfig

    plain, tracked = TrainConfig(), TrainConfig(report_to=["tensorboard"])
    assert cfg.versioned_dict(plain) == cfg.versioned_dict(tracked)


def test_eval_sends_its_final_metrics_and_plot_once(tmp_path):
    args = ["eval", "--run", str(tmp_path), "--limit", "4", "--pass-k", "2", "--max-new-tokens", "24",
            "--report-to", "tensorboard,mlflow"]
    gft(*args, check=True)
    gft(*args, check=True)  # nothing to sample: nothing sent again
    (version,) = (tmp_path / "eval").iterdir()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(version / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    metrics = json.loads((version / "metrics-n2.json").read_text())["benchmarks"]["testbed"]
    (point,) = acc.Scalars("testbed/pass@1")
    assert point.value == pytest.approx(metrics["pass@1"]) and acc.Tags()["images"] == ["passk"]
    state = json.loads((version / "trackers.json").read_text())
    points = mlflow_points(tmp_path, state["mlflow"])
    assert ((0, "testbed/pass_at_2"), pytest.approx(metrics["pass@2"])) in points  # MLflow has no '@' in names
    assert len([p for p in points if p[0][1] == "testbed/pass_at_1"]) == 1


def test_a_wandb_step_counted_as_sent_but_never_written_is_sent_on_resume(tmp_path, monkeypatch):
    """W&B writes its offline files from its own service process: a SIGKILL just after a flush can lose steps
    that trackers.json already counts as sent. On resume the files, not the count, say what is held."""
    from gftrepro.trackers import STATE, Trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    run, folder = tmp_path / "run", tmp_path / "run" / "train" / "v"
    folder.mkdir(parents=True)
    first = Trackers(["wandb"], folder, run, "t")
    for step in (1, 2):
        first.add({"step": step, "loss": float(step)})
    first.flush()
    first.close()
    state = json.loads((folder / STATE).read_text())
    assert state["sent"] == {"wandb": 2}
    (folder / STATE).write_text(json.dumps({**state, "sent": {"wandb": 3}}))  # step 3 counted, lost on the way
    resumed = Trackers(["wandb"], folder, run, "t", resume_step=3)
    assert resumed.sent == {"wandb": 2}
    for step in (1, 2, 3):
        resumed.add({"step": step, "loss": float(step)})
    resumed.close()
    assert sorted(wandb_points(run, state["wandb"])) == [((s, "loss"), float(s)) for s in (1, 2, 3)]
