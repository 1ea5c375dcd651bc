from pathlib import Path

import pytest

from gftrepro import config as cfg
from gftrepro.build_groups import BuildGroupsConfig
from gftrepro.engine.config import TrainConfig
from gftrepro.errors import GftError
from gftrepro.sample import SELF_DEFAULTS, SampleConfig
from gftrepro.verify import VerifyConfig

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(GftError, match=r"unknown config key 'temprature'.*did you mean 'temperature'"):
        cfg.load(SampleConfig, write(tmp_path, "temprature: 0.5\n"), {})


def test_flags_override_file_and_file_overrides_defaults(tmp_path):
    path = write(tmp_path, "n: 7\ntemperature: 0.5\n")
    c = cfg.load(SampleConfig, path, {"n": 2}, SELF_DEFAULTS)
    assert (c.n, c.temperature, c.model) == (2, 0.5, "testbed:student")


def test_types_are_checked_and_ints_become_floats(tmp_path):
    assert cfg.load(SampleConfig, write(tmp_path, "top_p: 1\n"), {}).top_p == 1.0
    with pytest.raises(GftError, match="'n' must be of type int"):
        cfg.load(SampleConfig, write(tmp_path, "n: three\n"), {})
    with pytest.raises(GftError, match="'logprobs' must be true or false"):
        cfg.load(SampleConfig, write(tmp_path, "logprobs: 1\n"), {})


def test_list_fields_accept_comma_separated_flags():
    c = cfg.load(SampleConfig, None, {"stop_tokens": "<|eot_id|>, <|end_of_text|>"})
    assert c.stop_tokens == ["<|eot_id|>", "<|end_of_text|>"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"n": 0}, "n must be at least 1"),
    ({"backend": "tgi"}, "unknown backend 'tgi'"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"shard_index": 2, "num_shards": 2}, "shard_index must be in"),
])
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(GftError, match=message):
        cfg.load(SampleConfig, None, overrides)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(GftError, match="not valid YAML"):
        cfg.load(SampleConfig, write(tmp_path, "n: [1\n"), {})
    with pytest.raises(GftError, match="config file not found"):
        cfg.load(SampleConfig, tmp_path / "nope.yaml", {})


STAGE_CONFIGS = {"sample-teacher": (SampleConfig, {}), "sample-self": (SampleConfig, SELF_DEFAULTS),
                 "verify": (VerifyConfig, {}), "build-groups": (BuildGroupsConfig, {}), "train": (TrainConfig, {})}


@pytest.mark.parametrize("name", STAGE_CONFIGS)
def test_tiny_stage_files_equal_the_embedded_default(name):
    """stages/tiny/ spells out the zero-argument defaults; they must not drift apart."""
    cls, defaults = STAGE_CONFIGS[name]
    from_file = cfg.load(cls, REPO / "stages" / "tiny" / f"{name}.yaml", {})
    assert from_file == cfg.load(cls, None, {}, defaults)


@pytest.mark.parametrize("name", ["train", "train-sft"])
def test_paper_train_files_resolve(name):
    c = cfg.load(TrainConfig, REPO / "stages" / f"{name}.yaml", {})
    assert c.dtype == "auto" and c.agg == "token-mean"


@pytest.mark.parametrize("name", ["sample-teacher", "sample-self"])
def test_paper_stage_files_resolve(name):
    c = cfg.load(SampleConfig, REPO / "stages" / f"{name}.yaml", {})
    assert c.backend == "vllm" and c.dataset == "AI-MO/NuminaMath-CoT"


def test_version_hash_ignores_unversioned_fields():
    a = cfg.load(SampleConfig, None, {})
    b = cfg.load(SampleConfig, None, {"shard_index": 1, "num_shards": 2, "gpu_memory_utilization": 0.5})
    c = cfg.load(SampleConfig, None, {"temperature": 0.7})
    assert cfg.content_hash(cfg.versioned_dict(a)) == cfg.content_hash(cfg.versioned_dict(b))
    assert cfg.content_hash(cfg.versioned_dict(a)) != cfg.content_hash(cfg.versioned_dict(c))


def test_a_setting_added_later_keeps_version_ids_while_at_its_default():
    """TrainConfig.optimizer came after runs existed: at its default it is not in the hash, set away it is."""
    base = cfg.versioned_dict(cfg.load(TrainConfig, None, {}))
    default = cfg.versioned_dict(cfg.load(TrainConfig, None, {"optimizer": "adamw"}))
    other = cfg.versioned_dict(cfg.load(TrainConfig, None, {"optimizer": "adamw8bit"}))
    assert "optimizer" not in base and base == default
    assert other == {**base, "optimizer": "adamw8bit"}


def test_adamw8bit_without_torchao_is_one_clear_line(monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else find(name, *a))
    with pytest.raises(GftError, match=r"optimizer adamw8bit needs torchao: pip install -e '\.\[lowmem\]'"):
        cfg.load(TrainConfig, None, {"optimizer": "adamw8bit"})
    cfg.load(TrainConfig, None, {"optimizer": "adamw"})  # the default needs nothing more
