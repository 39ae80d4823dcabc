"""Speculative decoding keeps the target's output: token for token at temperature 0, and in distribution when
sampling (a chi-square test against the target's exact joint distribution, which the draft alone fails)."""
import itertools

import numpy as np
import pytest
from mindspore import Tensor
from scipy.stats import chisquare

from mindllm import device
from mindllm.models.gpt import GPT, GPTConfig
from mindllm.sample import generate
from mindllm.speculative import probabilities, propose, speculate, verify


def random_gpt(vocab, block, layers, width, seed, scale=0.0):
    """A random GPT; scale > 0 redraws every weight from N(0, scale²) so its distributions are far from uniform."""
    device.setup(device.context_for("CPU"), seed=seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=2, n_embd=width))
    rng = np.random.default_rng(seed)
    for p in model.get_parameters() if scale else []:
        p.set_data(Tensor(rng.normal(0, scale, p.shape).astype(np.float32)))
    return model


@pytest.fixture(scope="module")
def target():
    return random_gpt(40, 12, 2, 32, seed=1, scale=0.3)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_the_targets_greedy_decoding(target, k):
    """Past the context (12) too: prompt 3 + 25 new tokens."""
    prompt = np.array([[5, 9, 2]], np.int32)
    want = generate(target, prompt, 25, temperature=0.0)[0]
    weak = random_gpt(40, 12, 1, 16, seed=7)  # a draft that is mostly wrong: the rejection path
    got, stats = speculate(target, weak, prompt, 25, k=k, temperature=0.0)
    np.testing.assert_array_equal(got, want)
    assert stats.tokens == 25 and stats.accepted < stats.proposed
    same, stats = speculate(target, target, prompt, 25, k=k, temperature=0.0)  # a perfect draft: all kept
    np.testing.assert_array_equal(same, want)
    assert stats.accepted == stats.proposed > 0 and stats.rounds < 25


@pytest.mark.parametrize("start", [4, 10, 12, 15])
def test_draft_proposals_equal_its_own_greedy_decoding_across_the_window_edge(target, start):
    """propose() past the draft's window (a draft with a shorter context than the target's): its tokens are the
    draft's own greedy ones from sample.generate, which slides the window the same way (block 12, 6 proposals)."""
    ids = np.arange(start, dtype=np.int32) % 40
    got, qs = propose(target, ids, 6, dict(temperature=0.0, top_k=0, top_p=1.0), np.random.default_rng(0))
    want = generate(target, ids[None], 6, temperature=0.0)[0, start:]
    np.testing.assert_array_equal(got, want)
    assert [int(np.argmax(q)) for q in qs] == got


def test_rejection_rule_by_hand():
    """p = (0.6, 0.3, 0.1), q = (0.2, 0.7, 0.1): token 1 is kept with probability 0.3 / 0.7; a rejected token is
    replaced by a draw from max(0, p - q) / sum = (1, 0, 0)."""
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.7, 0.1])
    rng = np.random.default_rng(0)
    outcomes = [verify(p, q, 1, False, rng) for _ in range(20_000)]
    kept = np.mean([o is None for o in outcomes])
    assert abs(kept - 0.3 / 0.7) < 0.01
    assert {o for o in outcomes if o is not None} == {0}
    assert verify(p, q, 0, False, rng) is None  # p >= q: always kept
    assert verify(p, q, 1, True, rng) == 0 and verify(p, q, 0, True, rng) is None  # greedy: the argmax decides


def exact_joint(model, prompt, rules):
    """P(x1, x2) of two sampled tokens, computed from the model's logits (no sampling)."""
    V = model.config.vocab_size

    def dist(ids):
        x = np.pad(ids, (0, model.config.block_size - len(ids)))[None].astype(np.int32)
        return probabilities(model(Tensor(x)).asnumpy()[0, len(ids) - 1], **rules)

    p1 = dist(np.array(prompt))
    return np.array([p1[a] * dist(np.array(prompt + [a]))[b] for a, b in itertools.product(range(V), repeat=2)])


@pytest.mark.slow
def test_sampled_tokens_follow_the_targets_distribution():
    """4 tokens, both models random and peaked, temperature 0.9 with top-k 3: 2,000 speculative draws of (x1, x2),
    both proposed by the draft and checked by the rejection rule, against the target's exact joint distribution."""
    target = random_gpt(4, 8, 1, 8, seed=11, scale=0.9)
    draft = random_gpt(4, 8, 1, 8, seed=12, scale=0.9)
    rules, prompt, n = dict(temperature=0.9, top_k=3, top_p=1.0), [1, 2], 2000
    want, drafts_own = exact_joint(target, prompt, rules), exact_joint(draft, prompt, rules)
    assert np.abs(want - drafts_own).sum() > 0.3  # the two models disagree: acceptance is not trivial
    counts = np.zeros(16)
    for seed in range(n):
        out, _ = speculate(target, draft, np.array(prompt), 2, k=2, seed=seed, **rules)
        counts[out[2] * 4 + out[3]] += 1
    seen = want > 0
    assert counts[~seen].sum() == 0  # top-k: what the target never samples never appears
    fit = chisquare(counts[seen], want[seen] / want[seen].sum() * n).pvalue
    print(f"chi-square p-value against the target: {fit:.3g}")
    assert fit > 1e-3
    # the check can fail: the draft's own distribution is rejected by the same test on the same counts
    assert chisquare(counts[seen], np.maximum(drafts_own[seen], 1e-9) / drafts_own[seen].sum() * n).pvalue < 1e-6


@pytest.mark.slow
def test_sample_cli_with_a_draft(tiny_cfg, capsys):
    """python -m mindllm.sample --draft: greedy text equal to the target's alone, the acceptance reported; a draft
    with another tokenizer, or with --num-samples, is one line and exit 2."""
    from mindllm import sample
    from mindllm.train import train
    from test_cli import assert_clean_error, call

    target = tiny_cfg("train.max_iters=20", out="target")
    draft = tiny_cfg("train.max_iters=20", "model.n_layer=1", "model.n_embd=16", out="draft")
    other = tiny_cfg("train.max_iters=1", "data.tokenizer=bpe", "data.vocab_size=300", out="other")
    for cfg in (target, draft, other):
        train(cfg, log=lambda *a: None)
    common = ["--ckpt", target.out_dir, "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "30"]
    sample.main(common)
    alone = capsys.readouterr().out
    sample.main(common + ["--draft", draft.out_dir, "--speculative-k", "3"])
    out = capsys.readouterr()
    assert out.out == alone and "proposals kept" in out.err
    assert_clean_error(call("mindllm.sample", *common, "--draft", other.out_dir), "another tokenizer")
    assert_clean_error(call("mindllm.sample", *common, "--draft", draft.out_dir, "--num-samples", "2"),
                       "--draft decodes one sample")
    # the benchmark's measurement: every configuration timed, the counts of the greedy rounds consistent
    from mindllm.speculative import markdown, measure

    result = measure(target.out_dir, [draft.out_dir], ks=[1, 4], new_tokens=12, repeats=1, log=lambda *a: None)
    assert [(r["k"], r["draft"]) for r in result["rows"]] == [(1, draft.out_dir), (4, draft.out_dir)]
    for r in result["rows"]:
        assert 0 <= r["acceptance"] <= 1 and 1 <= r["tokens_per_target_pass"] <= r["k"] + 1 and r["tokens_per_s"] > 0
    assert "| k |" in markdown(result) and "tokens/s" in markdown(result)
