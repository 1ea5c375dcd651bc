"""ASFT, PSFT and GFT (no mix): each against a float64 reference or the method it reduces to."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli, copy_run, gft, weights
from test_logprobs import full_logit_loss, fused_case

from gftrepro.groups import without_source
from gftrepro.logprobs import fused_token_loss
from gftrepro.losses import AGGREGATIONS, Anchor, TokenObjective, token_loss, token_weights


def asft_reference(hidden, weight, targets, mask, ref_hidden, ref_weight, lam, agg):
    """Full float64 logits: DFT's token terms plus lam * KL(softmax(ref) || softmax(theta)) per token, each
    token weighted by the same aggregation weight."""
    dft, _ = full_logit_loss(hidden, weight, targets, mask, None, method="dft", agg=agg)
    log_p = torch.log_softmax(hidden.double() @ weight.double().T, -1)
    log_q = torch.log_softmax(ref_hidden.double() @ ref_weight.double().T, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # [N]
    w = token_weights(mask, agg, dtype=torch.float64)[mask.bool()]
    return dft + lam * (w * kl).sum()


def asft_case(seed=0):
    hidden, weight, targets, mask, _, _, _ = fused_case(seed)
    g = torch.Generator().manual_seed(seed + 100)
    ref_hidden = hidden.detach() + 0.5 * torch.randn(hidden.shape, generator=g, dtype=torch.float64)
    ref_weight = weight.detach() + 0.3 * torch.randn(weight.shape, generator=g, dtype=torch.float64)
    return hidden, weight, targets, mask, ref_hidden, ref_weight


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("lam", [0.05, 0.1, 1.0])
def test_asft_fused_value_and_gradients_equal_the_float64_full_logit_reference(agg, lam):
    hidden, weight, targets, mask, ref_hidden, ref_weight = asft_case()
    expected_loss = asft_reference(hidden, weight, targets, mask, ref_hidden, ref_weight, lam, agg)
    expected_loss.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    objective = TokenObjective.build(mask, None, method="asft", agg=agg, anchor=Anchor(ref_hidden, ref_weight, lam))
    loss, _, _ = fused_token_loss(hidden, weight, targets, objective.select(mask.bool()), chunk=5)  # 5 and 2: odd
    loss.backward()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(weight.grad, expected[1], rtol=1e-10, atol=1e-13)
    assert float(loss.detach()) > float(full_logit_loss(hidden, weight, targets, mask, None, method="dft", agg=agg)[0])


def test_asft_with_lambda_zero_is_dft_and_the_kl_is_zero_at_the_reference():
    hidden, weight, targets, mask, ref_hidden, ref_weight = asft_case(seed=1)
    dft = TokenObjective.build(mask, None, method="dft").select(mask.bool())
    zero = TokenObjective.build(mask, None, method="asft", anchor=Anchor(ref_hidden, ref_weight, 0.0))
    a = fused_token_loss(hidden, weight, targets, dft, chunk=4)[0]
    a.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    b = fused_token_loss(hidden, weight, targets, zero.select(mask.bool()), chunk=4)[0]
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(hidden.grad, grads[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(weight.grad, grads[1], rtol=1e-10, atol=1e-13)
    at_ref = TokenObjective.build(mask, None, method="asft", anchor=Anchor(hidden, weight, 0.1))
    c = fused_token_loss(hidden.detach(), weight.detach(), targets, at_ref.select(mask.bool()), chunk=4)[0]
    torch.testing.assert_close(c, a.detach(), rtol=1e-12, atol=1e-14)  # KL(p || p) = 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_asft_loss_pass_needs_no_memory_beyond_the_references_inputs(dtype):
    """Tensor bytes alive at once (torch's MemTracker counts every tensor the pass touches: exact,
    deterministic), over the fused loss's forward and backward at one shape: ASFT's pass peaks at DFT's plus
    the reference's hidden states and LM head it reads (two half-height [c, V] buffers instead of one).
    A whole step's peak, with the reference model, is recorded in benchmarks/RESULTS.md."""
    from torch.distributed._tools.mem_tracker import MemTracker

    n, chunk, v, h = 300, 64, 4096, 64
    mask = torch.ones(1, n, dtype=torch.long)

    def peak(anchored: bool) -> int:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_(True)
        weight = torch.randn(v, h, generator=g, requires_grad=True)
        ref_hidden, ref_weight = torch.randn(n, h, generator=g).to(dtype), torch.randn(v, h, generator=g)
        targets = torch.randint(0, v, (n,), generator=g)
        anchor = Anchor(ref_hidden, ref_weight, 0.1) if anchored else None
        tracker = MemTracker()
        with tracker:
            objective = TokenObjective.build(mask, None, method="asft" if anchored else "dft", anchor=anchor)
            fused_token_loss(hidden, weight, targets, objective.select(mask.bool()), chunk)[0].backward()
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    asft, dft = peak(True), peak(False)
    inputs = v * h * 4 + n * h * torch.finfo(dtype).bits // 8  # the reference's head (fp32) and hidden states
    assert asft <= dft + inputs, (asft, dft, inputs)
    assert dft >= v * h * 4 and asft > dft


def test_psft_with_one_update_per_batch_has_sfts_gradient():
    """r = 1 on the batch the old policy was taken from: -min(r, clip(r)) has gradient -grad log p."""
    g = torch.Generator().manual_seed(5)
    lp0 = -torch.rand(4, 7, generator=g, dtype=torch.float64) * 3
    mask = (torch.rand(4, 7, generator=g) > 0.2).long()
    for agg in AGGREGATIONS:
        a, b = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
        token_loss(a, mask, None, method="psft", agg=agg).backward()
        token_loss(b, mask, None, method="sft", agg=agg).backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-15)


def test_psft_clips_asymmetrically():
    """Above 1 + eps_high (and below 1 - eps) the clipped side holds the ratio: no gradient there."""
    lp = torch.log(torch.tensor([[1.25, 1.35, 0.75, 0.85]], dtype=torch.float64)).requires_grad_(True)
    old = torch.zeros_like(lp)
    mask = torch.ones_like(lp, dtype=torch.long)
    loss = token_loss(lp, mask, None, method="psft", agg="token-mean", old_logprobs=old, clip_eps=0.2, clip_high=0.28)
    loss.backward()
    # l = -min(r, clip(r)) with A = 1: r = 1.25 inside (grad -r/4), 1.35 clipped (0), 0.75: min(0.75, 0.8) = r
    # (grad -r/4: the pessimistic side keeps it), 0.85 inside
    expected = torch.tensor([[-1.25, 0.0, -0.75, -0.85]], dtype=torch.float64) / 4
    torch.testing.assert_close(lp.grad, expected)
    torch.testing.assert_close(loss, torch.tensor(-(1.25 + 1.28 + 0.75 + 0.85) / 4, dtype=torch.float64))


# --- through gft train on the embedded default -------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, grouped_template) -> Path:
    return copy_run(grouped_template, tmp_path_factory.mktemp("baselines") / "run")


def trained(run: Path, *args: str) -> Path:
    """Train with these flags (2 steps of 8 sequences, no warmup); the version folder."""
    gft("train", "--run", str(run), "--max-steps", "2", "--batch-size", "8", "--warmup-ratio", "0", "--lr", "1e-3",
        *args, check=True)
    return max((run / "train").glob("*/manifest.json"), key=lambda m: m.stat().st_mtime).parent


def close(a: dict, b: dict, atol: float) -> bool:
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


@pytest.mark.slow
def test_psft_with_one_update_per_batch_trains_as_sft(baseline_run):
    sft = weights(trained(baseline_run, "--method", "sft") / "model")
    psft = trained(baseline_run, "--method", "psft", "--mini-batches", "1")
    assert close(weights(psft / "model"), sft, atol=1e-6)
    several = trained(baseline_run, "--method", "psft")  # the authors' 8 updates a batch: 1 sequence each here
    metrics = [json.loads(line) for line in (several / "metrics.jsonl").read_text().splitlines()]
    assert [m["updates"] for m in metrics] == [8, 8] and all("clipped_share" in m for m in metrics)
    assert not close(weights(several / "model"), sft, atol=1e-6)


@pytest.mark.slow
def test_asft_trains_and_with_lambda_zero_is_dft(baseline_run):
    dft = weights(trained(baseline_run, "--method", "dft") / "model")
    zero = trained(baseline_run, "--method", "asft", "--anchor-coef", "0")
    assert close(weights(zero / "model"), dft, atol=1e-6)
    anchored = trained(baseline_run, "--method", "asft")
    assert json.loads((anchored / "config.json").read_text())["config"]["method"] == "asft"
    assert not close(weights(anchored / "model"), dft, atol=1e-6)


@pytest.mark.slow
def test_gft_no_mix_trains_on_groups_without_teacher_members(baseline_run):
    v = trained(baseline_run, "--method", "gft-no-mix")
    metrics = [json.loads(line) for line in (v / "metrics.jsonl").read_text().splitlines()]
    assert all("advantage/teacher" not in m and "advantage/expert" in m for m in metrics)
    assert json.loads((v / "manifest.json").read_text())["summary"]["method"] == "gft-no-mix"


def test_without_source_renormalises_each_group():
    rows = [{"group_id": 0, "source": s, "reward": r, "advantage": 9.0} for s, r in
            [("expert", 1.0), ("teacher", 1.0), ("teacher", 1.0), ("self", 0.0), ("self", 1.0)]]
    rows += [{"group_id": 1, "source": "teacher", "reward": 1.0, "advantage": 9.0},
             {"group_id": 1, "source": "self", "reward": 0.0, "advantage": 9.0}]
    out = without_source(rows, "teacher", "unbiased", 0.0)
    assert [r["source"] for r in out] == ["expert", "self", "self", "self"]
    first = [r["advantage"] for r in out if r["group_id"] == 0]  # rewards 1, 0, 1: mean 2/3, unbiased std 0.577
    assert first == pytest.approx([0.57735, -1.1547, 0.57735], abs=1e-4)
    assert [r["advantage"] for r in out if r["group_id"] == 1] == [0.0]  # one member left: no signal


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "psft", "--mini-batches", "3"], "mini_batches 3 must divide batch_size 16"),
    (["--method", "sft", "--mini-batches", "2"], "mini_batches > 1 is psft's"),
    (["--method", "asft", "--no-fused-loss"], "asft's KL anchor is made in the fused LM-head pass"),
    (["--method", "asft", "--online"], "method 'asft' trains on fixed data and has no on-policy form"),
    (["--method", "psft", "--online"], "method 'psft' trains on fixed data and has no on-policy form"),
    (["--method", "asft", "--anchor-coef", "-1"], "anchor_coef must be a finite number >= 0"),
    (["--method", "psft", "--clip-eps-high", "0"], "clip_eps_high must be in (0, 10)"),
])
def test_bad_baseline_input(baseline_run, args, message):
    before = sorted((baseline_run / "train").glob("*/manifest.json")) if (baseline_run / "train").exists() else []
    proc = cli("train", "--run", str(baseline_run), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    after = sorted((baseline_run / "train").glob("*/manifest.json")) if (baseline_run / "train").exists() else []
    assert after == before  # nothing is marked complete


# --- PEAR ----------------------------------------------------------------------------------------------------


def pear_reference(lp, bp, mask, known, level, gamma, block):
    """PEAR's weights by loops over each sequence's response tokens, in Python floats."""
    import math

    from gftrepro.losses import PEAR_DELTA_CLIP, PEAR_LOG_WEIGHT_CLIP

    out = torch.ones(lp.shape, dtype=torch.float64)
    for b in range(lp.shape[0]):
        pos = [i for i in range(lp.shape[1]) if mask[b, i]]
        n = len(pos)
        d = [min(max(float(lp[b, i] - bp[b, i]), PEAR_DELTA_CLIP[0]), PEAR_DELTA_CLIP[1]) if known[b, i] else 0.0
             for i in pos]
        for t, i in enumerate(pos, 1):
            if level == "sequence":
                log_w = sum(d)
            else:
                end = t if level == "token" else min(math.ceil(t / block) * block, n)
                log_w = (n - end) * math.log(gamma) + sum(d[end:])
            out[b, i] = math.exp(min(max(log_w, PEAR_LOG_WEIGHT_CLIP[0]), PEAR_LOG_WEIGHT_CLIP[1]))
    return out


def pear_case(seed=0, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(3, 11, generator=g, dtype=torch.float64) * 2
    bp = lp + spread * torch.randn(3, 11, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 11, dtype=torch.long)
    mask[0, 2:11], mask[1, 4:8], mask[2, 1:10] = 1, 1, 1
    known = mask.bool().clone()
    known[0, 10] = False  # the appended EOS: no behaviour log-prob
    return lp, bp, mask, known


@pytest.mark.parametrize("level", ["sequence", "token", "block"])
@pytest.mark.parametrize(("gamma", "block", "spread"), [(0.999, 4, 0.1), (0.9, 3, 0.1), (1.0, 2, 3.0)])
def test_pear_weights_equal_the_loop_reference(level, gamma, block, spread):
    from gftrepro.losses import pear_weights

    lp, bp, mask, known = pear_case(spread=spread)  # spread 3: every log-ratio clipped
    got = pear_weights(lp, bp, mask, known, level, gamma, block)
    torch.testing.assert_close(got, pear_reference(lp, bp, mask, known, level, gamma, block), rtol=1e-12, atol=0)


@pytest.mark.parametrize("level", ["sequence", "token", "block"])
def test_pear_at_the_behaviour_policy_with_no_discount_is_sft(level):
    from gftrepro.losses import Pear

    lp0, _, mask, known = pear_case()
    pear = Pear(lp0.clone(), known, level, gamma=1.0, block=3)
    a, b = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    loss = token_loss(a, mask, None, method="pear", pear=pear)
    sft = token_loss(b, mask, None, method="sft")
    torch.testing.assert_close(loss, sft)
    loss.backward()
    sft.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("level", ["sequence", "token", "block"])
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_pear_fused_pass_equals_the_float64_full_logit_loss(level, agg):
    """The fused pass makes the weights from a first no-grad pass of its own; the plain path from sg(log p)."""
    from gftrepro.losses import Pear

    hidden, weight, targets, mask, _, _, _ = fused_case(seed=2)
    with torch.no_grad():
        full = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
        lp = torch.zeros(mask.shape, dtype=torch.float64).masked_scatter(mask.bool(), full)
    g = torch.Generator().manual_seed(9)
    behaviour = lp + 0.1 * torch.randn(lp.shape, generator=g, dtype=torch.float64)
    pear = Pear(behaviour, mask.bool(), level, gamma=0.95, block=2)
    expected, _ = full_logit_loss(hidden, weight, targets, mask, None, method="pear", agg=agg, pear=pear)
    expected.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    objective = TokenObjective.build(mask, None, method="pear", agg=agg, pear=pear).select(mask.bool())
    loss = fused_token_loss(hidden, weight, targets, objective, chunk=4)[0]
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hidden.grad, grads[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(weight.grad, grads[1], rtol=1e-10, atol=1e-13)


def test_pear_without_behaviour_log_probs_says_how_to_get_them(baseline_run):
    """The grouped run's teacher was sampled without --logprobs."""
    proc = cli("train", "--run", str(baseline_run), "--method", "pear", "--max-steps", "1")
    assert proc.returncode == 2 and "gft sample-teacher --logprobs" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_gft_run_samples_the_teacher_with_log_probs_for_pear_and_chains_it(tmp_path):
    from test_run import SMALL

    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=1).replace("methods: [sft, gft]", "methods: [pear, 'pear:grpo']"))
    run = tmp_path / "run"
    gft("run", "--config", str(config), "--run", str(run), check=True)
    teacher = json.loads(next(run.glob("sample-teacher/*/config.json")).read_text())["config"]
    assert teacher["logprobs"] is True
    trained = [json.loads(m.read_text())["summary"] for m in run.glob("train/*/manifest.json")]
    assert sorted(t["method"] for t in trained) == ["grpo", "pear"]  # pear once: the chain reuses it
    pear = next(t for t in trained if t["method"] == "pear")
    assert pear["data"] == "teacher" and pear["sequences"] > 0
    rows = {r["model"] for r in json.loads((run / "summary" / "summary.json").read_text())}
    assert rows == {"base", "pear", "pear:grpo"}
