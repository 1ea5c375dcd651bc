"""One registry of training methods: what each trains on, its token coefficient, and how it runs.

Every other module asks this table instead of comparing method names:

| method      | offline data | coefficient on -log p (``losses``) | online         | group (expert:teacher:self) |
|-------------|--------------|------------------------------------|----------------|-----------------------------|
| sft         | sft          | 1                                  | never          | -                           |
| sft-mix     | sft-mix      | 1                                  | never          | -                           |
| dft         | sft          | sg(p)                              | never          | -                           |
| gft         | groups       | A * C(p)                           | optional       | 1:3:4 (paper)               |
| gft-no-dcr  | groups       | A                                  | optional       | 1:3:4                       |
| gft-no-gal  | sft          | C(p) (online: R * C(p), see below) | optional       | 1:3:4                       |
| grpo        | -            | A * clipped ratio (+ beta * KL)    | always         | 0:0:8 (paper's GRPO)        |

GFT w/o GAL keeps DCR and drops the group advantage. Offline it trains the expert solutions with
C(p) (docs/DESIGN.md's table). Online its group is drawn like GFT's, and each response is weighted by
its raw reward R in {0, 1} instead of a group-normalised advantage: correct responses are
imitated with C(p), wrong ones are ignored (no advantage, so no negative signal).
"""

from __future__ import annotations

from dataclasses import dataclass

from gftrepro.errors import GftError


@dataclass(frozen=True)
class Method:
    name: str
    data: str  # offline training set: groups, sft or sft-mix ("" = online only)
    coefficient: str  # one, p, adv-dcr, adv, dcr, ratio  (see losses.coefficient)
    online: str  # never, optional, always
    group: tuple[int, int, int] = (0, 0, 0)  # default online group: expert, teacher, self
    uses_advantage: bool = False  # reads each response's advantage
    reward_weighted: bool = False  # online: the raw reward replaces the advantage
    rounds: bool = False  # gft run --rounds re-samples and retrains it offline

    @property
    def can_run_offline(self) -> bool:
        return self.online != "always"

    @property
    def can_run_online(self) -> bool:
        return self.online != "never"


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("sft", "sft", "one", "never"),
    Method("sft-mix", "sft-mix", "one", "never"),
    Method("dft", "sft", "p", "never"),
    Method("gft", "groups", "adv-dcr", "optional", (1, 3, 4), uses_advantage=True, rounds=True),
    Method("gft-no-dcr", "groups", "adv", "optional", (1, 3, 4), uses_advantage=True, rounds=True),
    Method("gft-no-gal", "sft", "dcr", "optional", (1, 3, 4), reward_weighted=True),
    Method("grpo", "", "ratio", "always", (0, 0, 8), uses_advantage=True),
)}
METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise GftError(f"unknown method '{name}' (known: {', '.join(METHODS)})") from None


def runs_online(method: str, online: bool) -> bool:
    """Whether ``method`` trains on-policy with ``--online`` given as ``online``; refuses what cannot run."""
    m = get(method)
    if online and not m.can_run_online:
        raise GftError(f"method '{method}' trains on fixed data and has no on-policy form: drop --online "
                       f"(on-policy methods: {', '.join(n for n, x in REGISTRY.items() if x.can_run_online)})")
    return online or m.online == "always"
