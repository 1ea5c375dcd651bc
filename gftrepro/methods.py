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
| gft-no-mix  | groups       | A * C(p), teacher members dropped  | optional       | 1:0:4                       |
| asft        | sft          | sg(p), + lambda * KL(ref || theta) | never          | -                           |
| psft        | sft          | clipped ratio, advantage 1         | never          | -                           |
| pear        | teacher      | sg(G_t): PEAR's importance weight  | never          | -                           |
| grpo        | -            | A * clipped ratio (+ beta * KL)    | always         | 0:0:8 (paper's GRPO)        |

GFT w/o GAL keeps DCR and drops the group advantage. Offline it trains the expert solutions with
C(p) (docs/DESIGN.md's table). Online its group is drawn like GFT's, and each response is weighted by
its raw reward R in {0, 1} instead of a group-normalised advantage: correct responses are
imitated with C(p), wrong ones are ignored (no advantage, so no negative signal).

GFT (no mix), the paper's Table 1 row, is GFT on groups of expert and self responses only: offline
it reads GFT's own groups, drops their teacher members and normalises the advantages again over
the rest (expert 1 + self 4: the difference from GFT is the teacher mix alone); online its groups
are drawn 1:0:4. ASFT (Zhu et al. 2025a) is DFT's term plus lambda times the full-vocabulary
KL(pi_ref || pi_theta) to the frozen starting model at every response position (``anchor``). PSFT
(Zhu et al. 2025b) is PPO's clipped surrogate with advantage 1 on the expert solutions, several
updates per batch against the policy at the batch's start (``mini_batches``, asymmetric clip).
PEAR (arXiv 2602.01058) is SFT on the teacher's own correct samples, each token's loss times a
stop-gradient importance weight from pi_theta / pi_teacher (``losses.pear_weights``), which needs the
teacher's per-token log-probs (``sample-teacher --logprobs``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gftrepro.errors import GftError


@dataclass(frozen=True)
class Method:
    name: str
    data: str  # offline training set: groups, sft, sft-mix or teacher ("" = online only)
    coefficient: str  # one, p, adv-dcr, adv, dcr, ratio, proximal, pear  (see losses.coefficient)
    online: str  # never, optional, always
    group: tuple[int, int, int] = (0, 0, 0)  # default online group: expert, teacher, self
    uses_advantage: bool = False  # reads each response's advantage
    reward_weighted: bool = False  # online: the raw reward replaces the advantage
    rounds: bool = False  # gft run --rounds re-samples and retrains it offline
    anchor: bool = False  # adds lambda * KL(pi_ref || pi_theta) over the vocabulary (asft)
    no_teacher: bool = False  # offline: the groups' teacher members are dropped, advantages renormalised
    mini_batches: int = 1  # default optimizer updates per batch (psft: the authors' 8)
    clip_high: float = 0.0  # default upper clip range of the ratio (0 = clip_eps; psft: the authors' 0.28)
    behaviour: bool = False  # trains on rows with the sampling policy's per-token log-probs (pear)

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
    Method("gft-no-mix", "groups", "adv-dcr", "optional", (1, 0, 4), uses_advantage=True, rounds=True,
           no_teacher=True),
    Method("asft", "sft", "p", "never", anchor=True),
    Method("psft", "sft", "proximal", "never", mini_batches=8, clip_high=0.28),
    Method("pear", "teacher", "pear", "never", behaviour=True),
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
