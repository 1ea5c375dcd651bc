import pyarrow as pa
import pytest

from gftrepro import store
from gftrepro.errors import GftError


def test_version_folder_depends_on_config_and_inputs(tmp_path):
    a = store.open_version(tmp_path, "sample-self", {"n": 1}, {"model": "x"}, {"n": 1})
    b = store.open_version(tmp_path, "sample-self", {"n": 1}, {"model": "x"}, {"n": 1})
    c = store.open_version(tmp_path, "sample-self", {"n": 2}, {"model": "x"}, {"n": 2})
    d = store.open_version(tmp_path, "sample-self", {"n": 1}, {"model": "y"}, {"n": 1})
    assert a == b and len({a.version, c.version, d.version}) == 3


def test_manifest_only_when_every_shard_is_present(tmp_path):
    v = store.open_version(tmp_path, "sample-self", {}, {}, {})
    t = pa.table({"x": [1, 2]})
    store.write_table(v.shard_path(0, 2), t, {"generation_seconds": 1.5})
    assert store.finalize(v, 2, {}) is None and not v.is_complete()
    assert [r["state"] for r in store.status_rows(tmp_path) if r["stage"] == "sample-self"] == ["partial"]
    store.write_table(v.shard_path(1, 2), t)
    m = store.finalize(v, 2, {"summary": {}})
    assert v.is_complete() and m["rows"] == 4 and m["shards"][0]["generation_seconds"] == 1.5
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    assert not list(v.path.glob(".*tmp*"))
    row = [r for r in store.status_rows(tmp_path) if r["stage"] == "sample-self"][0]
    assert (row["state"], row["shards"], row["rows"]) == ("complete", "2/2", "4")


def test_unwritable_output_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(GftError, match="is not writable"):
        store.ensure_writable(blocker / "run")


def test_latest_complete_needs_a_complete_version(tmp_path):
    with pytest.raises(GftError, match="run `gft sample-teacher` first"):
        store.latest_complete(tmp_path, "sample-teacher")
