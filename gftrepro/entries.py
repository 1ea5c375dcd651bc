"""Entries of a run: a method, its on-policy form, a chain of them, each link with its own settings.

    sft                          an offline method
    gft-online                   a group method's on-policy form (gft train --online); grpo is always on-policy
    sft:gft-online:grpo          a chain: each link starts from the previous link's model
    gft-online@tau=0.1           a link with its own train keys after '@' (several: @tau=0.3@lr=1e-5)
    gft@ratio=2:6                Table 5's N_demo:N_sample; an offline group method's groups are rebuilt
    gft@n_self=8@std=none        an offline group method's build-groups keys

Chains split at ':' except before a digit, so a ratio's colon stays inside its link. Settings are
train keys (not the ones ``gft run`` sets itself: method, model, seed, ...) and, for an offline group
method, build-groups keys; values are YAML scalars checked against the key's type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from gftrepro import config as cfg
from gftrepro.build_groups import BuildGroupsConfig
from gftrepro.engine.config import TrainConfig
from gftrepro.errors import GftError
from gftrepro.methods import REGISTRY

RUN_METHODS = {**{n: (n, False) for n, m in REGISTRY.items() if m.can_run_offline},
               **{f"{n}-online": (n, True) for n, m in REGISTRY.items() if m.online == "optional"},
               **{n: (n, True) for n, m in REGISTRY.items() if m.online == "always"}}


GROUP_KEYS = ("n_expert", "n_teacher", "n_self", "std", "eps", "keep_zero_variance", "expert_fill")
RUN_KEYS = ("method", "online", "init", "data", "build_groups_version", "model", "verify_version", "seed",
            "ref_model")  # set by gft run itself, never by an entry


@dataclass(frozen=True)
class Link:
    """One link of an entry: a method with its own settings, ``gft-online@tau=0.1`` or ``gft@ratio=2:6``.

    ``train``: train keys over the run's train section and ``per_method``; ``groups``: build-groups keys of
    an offline group method (its groups are rebuilt with them). ``ratio=D:S`` is the paper's Table 5
    N_demo:N_sample: one expert slot and D - 1 teacher samples (``ratio_group``), S self samples."""

    text: str
    method: str
    online: bool
    train: tuple[tuple[str, Any], ...] = ()
    groups: tuple[tuple[str, Any], ...] = ()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.train) | dict(self.groups)


def ratio_group(demo: int, sample: int) -> tuple[int, int, int]:
    """Table 5's N_demo:N_sample as expert:teacher:self. The paper's demonstrations are the expert solution
    and the teacher distillations ("y_demo"), so its main group 1:3:4 is 4:4: one expert slot, the other
    demonstrations teacher samples, N_sample self samples (0:8 has neither expert nor teacher)."""
    return min(demo, 1), max(demo - 1, 0), sample


def split_entry(entry: str) -> list[str]:
    """``sft:gft-online@ratio=2:6:grpo`` -> its links: split at ':', except before a digit (a ratio's)."""
    parts: list[str] = []
    for piece in entry.split(":"):
        if parts and piece[:1].isdigit():
            parts[-1] += ":" + piece
        else:
            parts.append(piece)
    return parts


def parse_link(text: str, entry: str) -> Link:
    name, *settings = text.split("@")
    if name not in RUN_METHODS:
        raise GftError(f"unknown method '{name}' in '{entry}' (known: {', '.join(RUN_METHODS)}; chains join them "
                       "with ':', settings follow '@': gft-online@tau=0.1)")
    method, online = RUN_METHODS[name]
    grouped = not online and REGISTRY[method].data == "groups"
    train: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - set(RUN_KEYS)
    for setting in settings:
        key, sep, value = setting.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise GftError(f"setting '{setting}' in '{entry}' must be key=value (e.g. gft-online@tau=0.1)")
        if key == "ratio":
            demo, colon, own = value.partition(":")
            if not (colon and demo.isdigit() and own.isdigit()) or not REGISTRY[method].uses_advantage or \
                    method == "grpo":
                raise GftError(f"setting '{setting}' in '{entry}': ratio is N_demo:N_sample of a group method "
                               "(gft@ratio=2:6, gft-online@ratio=2:6)")
            expert, teacher, k = ratio_group(int(demo), int(own))
            if grouped:
                groups.update(n_expert=expert, n_teacher=teacher, n_self=k)
            else:
                train.update(n_expert=expert, n_teacher=teacher, self_k=k)
            continue
        if grouped and key in GROUP_KEYS:
            groups[key] = setting_value(BuildGroupsConfig, key, value, entry)
        elif key in train_keys:
            train[key] = setting_value(TrainConfig, key, value, entry)
        else:
            where = "train keys" + (" or build-groups keys" if grouped else "")
            raise GftError(f"unknown setting '{key}' in '{entry}' (settings are {where}; gft run sets "
                           f"{', '.join(RUN_KEYS)} itself)")
    return Link(text, method, online, tuple(sorted(train.items())), tuple(sorted(groups.items())))


def setting_value(cls: type, key: str, text: str, entry: str) -> Any:
    """A setting's text as the config key's type (YAML scalars; 1e-5 is a float)."""
    tp = cfg.field_types(cls)[key]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if cfg.base_type(tp) is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    try:
        return cfg.coerce(key, value, tp)
    except GftError as e:
        raise GftError(f"'{entry}': {e}") from None


def chain(entry: str) -> list[Link]:
    """``sft:gft-online@tau=0.1:grpo`` -> its links; one clear error for an unknown method or setting."""
    return [parse_link(text, entry) for text in split_entry(entry)]
