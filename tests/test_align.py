"""The alignment week's machinery (mindllm/align/): rollouts, the heads, SFT, preference pairs, the reward model.
The loss formulas are in test_align_math.py."""
import json
import os

import numpy as np
import pytest
from mindspore import Tensor

from conftest import train_tiny
from mindllm import device
from mindllm import sample
from mindllm.align import compare, heads, pairs, problems
from mindllm.align.rollout import sample_responses, sequences
from mindllm.config import load_config
from mindllm.data.dataset import IGNORE
from mindllm.decoding import generate
from mindllm.models.gpt import GPT, GPTConfig
from mindllm.train import train

CFG = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_sequences_mark_the_response_targets():
    x, y, mask = sequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad=0, length=5)
    np.testing.assert_array_equal(x, [[1, 2, 3, 5, 0], [4, 7, 8, 0, 0]])
    np.testing.assert_array_equal(y, [[IGNORE, IGNORE, 5, 6, IGNORE], [7, 8, 9, IGNORE, IGNORE]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]])


def test_scored_rows_point_at_the_last_token():
    x, last = heads.scored_rows([[1, 2, 3], [4]], [[5, 6], [7]], pad=0, length=6)
    np.testing.assert_array_equal(x, [[1, 2, 3, 5, 6, 0], [4, 7, 0, 0, 0, 0]])
    np.testing.assert_array_equal(last, [4, 1])


def one_by_one(model, prompt, eos, n):
    """The uncached, unbatched decoder: the oracle of the batched rollouts."""
    out = generate(model, np.array([prompt], np.int32), n, temperature=0.0, kv_cache=False)[0, len(prompt):]
    out = [int(t) for t in out]
    return out[:out.index(eos) + 1] if eos in out else out


def test_batched_greedy_rollouts_equal_one_prompt_at_a_time_without_cache():
    device.seed_everything(0)
    model = GPT(CFG)
    model.set_train(False)
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, 11, size=n)) for n in (3, 5, 3, 3, 5, 4, 3)]
    free = sample_responses(model, prompts, eos=-1, max_new_tokens=6, temperature=0.0, seed=0, batch_size=2)
    # an end-of-answer token that some answers write and others do not: both endings are exercised
    eos = next(t for t in range(11) if 0 < sum(t in r for r in free) < len(free))
    got = sample_responses(model, prompts, eos=eos, max_new_tokens=6, temperature=0.0, seed=0, batch_size=2)
    assert got == [one_by_one(model, p, eos, 6) for p in prompts]
    assert any(r[-1] == eos and len(r) < 6 for r in got) and any(eos not in r for r in got)


def test_sampled_rollouts_are_reproducible_and_seeded():
    device.seed_everything(0)
    model = GPT(CFG)
    model.set_train(False)
    prompts = [[1, 2, 3]] * 6
    kw = dict(eos=10, max_new_tokens=5, temperature=1.0, batch_size=3)
    a, b, c = (sample_responses(model, prompts, seed=s, **kw) for s in (0, 0, 1))
    assert a == b and a != c
    assert len({tuple(r) for r in a}) > 1  # the rows of one batch draw different answers


def test_reward_model_is_hugging_face_gpt2_for_sequence_classification():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        vocab_size=CFG.vocab_size, n_positions=CFG.block_size, n_embd=CFG.n_embd, n_layer=CFG.n_layer,
        n_head=CFG.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=1,
        pad_token_id=CFG.vocab_size - 1)).eval()
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    rm = heads.RewardModel(CFG)
    assert {n for n, _ in rm.parameters_and_names()} == set(state)  # Hugging Face's names
    for name, p in rm.parameters_and_names():
        p.set_data(Tensor(state[name]))
    rm.set_train(False)
    rows = [[1, 2, 3, 4, 5], [6, 7, 8]]
    x, last = heads.scored_rows(rows, [[], []], pad=CFG.vocab_size - 1, length=8)
    got = rm(Tensor(x), Tensor(last)).asnumpy()
    with torch.no_grad():  # one row at a time, unpadded: Hugging Face scores the last token
        expect = [hf(torch.tensor([r])).logits[0, 0].item() for r in rows]
    np.testing.assert_allclose(got, expect, atol=1e-5)


def test_policy_with_value_keeps_the_gpt_logits():
    device.seed_everything(0)
    gpt, pv = GPT(CFG), heads.PolicyWithValue(CFG)
    for (name, p), (_, q) in zip(gpt.parameters_and_names(), pv.parameters_and_names()):
        q.set_data(p.data)
    names = {n for n, _ in pv.parameters_and_names()} - {n for n, _ in gpt.parameters_and_names()}
    assert names == {"v_head.summary.weight", "v_head.summary.bias"}  # TRL's value head
    x = Tensor(np.arange(8, dtype=np.int32).reshape(1, 8))
    logits, values = pv.policy_and_value(x)
    np.testing.assert_allclose(logits.asnumpy(), gpt(x).asnumpy(), atol=1e-6)
    np.testing.assert_array_equal(values.asnumpy(), np.zeros((1, 8)))  # a zero head: V = 0 before training


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, small_corpus):
    """A tiny character GPT on Shakespeare, then SFT on 1-digit additions: the start of every alignment run."""
    root = tmp_path_factory.mktemp("align")
    corpus = root / "corpus.txt"  # the head of Shakespeare lacks a digit or two
    corpus.write_text(open(small_corpus, encoding="utf-8").read() + "\n0123456789\n", encoding="utf-8")
    train_tiny(str(corpus), root / "base", "train.max_iters=30", "model.block_size=32")
    summary = train(load_config(None, sft_args(str(root / "sft"), root / "sft")), log=lambda *a: None)
    return str(root / "sft"), summary


def sft_args(sft_dir: str, out) -> list[str]:
    """The fixture's SFT settings (its start model sits beside its run directory)."""
    base = os.path.join(os.path.dirname(sft_dir), "base")
    return ["task=sft", f"sft.init={base}", f"out_dir={out}", "sft.digits=1", "sft.train_problems=40",
            "sft.test_problems=20", "sft.eval_problems=10", "sft.reward=partial_credit", "train.lr=3e-3",
            "train.warmup_iters=5", "train.max_iters=60", "train.batch_size=8", "train.eval_iters=2",
            "train.eval_interval=10", "train.progress=false", "sample.max_new_tokens=0"]


def test_sft_scores_its_answers_against_the_baselines(sft_run):
    path, s = sft_run
    assert s["test_problems"] == 20 and 0.0 <= s["exact_match"] <= 1.0
    for q, a, right in s["answers"]:
        assert q.endswith(" is ") and str(eval(q.replace(" plus ", "+").replace(" is ", ""))) == right  # noqa: S307
    records = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
    assert [r["step"] for r in records if "exact_match" in r] == [0, 10, 20, 30, 40, 50, 60]
    model, tokenizer, cfg = __import__("mindllm.runs", fromlist=["x"]).load_model(path)
    assert cfg.model.block_size == 32  # the config took the start run's model section
    options, seed = problems.settings(path)
    _, test = problems.load(options, seed)
    again = problems.score(model, tokenizer, test, reward="exact_match")
    assert again["exact_match"] == s["exact_match"]


def test_sft_stops_at_its_target_on_training_problems_and_a_resume_stays_stopped(sft_run, tmp_path):
    """sft.stop_at ends the run at the first evaluation whose reward reaches it, on training problems only; the run
    is the same as the full one up to there, its last checkpoint is that step's, and resume=true trains no
    further."""
    path, full = sft_run
    records = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
    evals = [(r["step"], r["train_reward"]) for r in records if "train_reward" in r]
    target = min((v for _, v in evals if v > 0), default=0)
    assert target > 0  # the fixture's SFT earns some partial credit: else this test could not stop anything
    first = next(step for step, v in evals if v >= target)
    args = sft_args(path, tmp_path / "stop") + [f"sft.stop_at={target}"]
    s = train(load_config(None, args), log=lambda *a: None)
    assert s["steps"] == first and "training problems" in s["stopped"]
    assert sorted(os.listdir(os.path.join(tmp_path, "stop", "ckpt")))[-1] == f"step_{first:07d}"
    untimed = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
               for line in open(tmp_path / "stop" / "metrics.jsonl")]
    assert untimed == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records if r["step"] <= first]
    resumed = train(load_config(None, args + ["resume=true"]), log=lambda *a: None)
    assert resumed["steps"] == first and resumed["exact_match"] == s["exact_match"]


def test_pairs_rank_the_models_own_answers(sft_run, tmp_path):
    path, _ = sft_run
    out = tmp_path / "pairs.jsonl"
    pairs.main([path, "--out", str(out), "--train-problems", "30", "--test-problems", "20", "--samples", "4"])
    got = pairs.read(str(out))
    assert got and {p["split"] for p in got} <= {"train", "test"}
    for p in got:
        assert p["chosen_reward"] > p["rejected_reward"] and p["chosen"] != p["rejected"]
    with pytest.raises(SystemExit) as e:
        pairs.main([path, "--out", str(out)])  # exists
    assert e.value.code == 2


def rl_config(kind, sft, out, *extra):
    return load_config(None, [f"task={kind}", f"{kind}.init={sft}", f"out_dir={out}", f"{kind}.rollout_batch=16",
                              "train.batch_size=16", "train.max_iters=2", "train.ckpt_interval=2",
                              "train.eval_iters=1", "train.progress=false", "sample.max_new_tokens=0", *extra])


def one_gradient_step(task, batch, lr=1e-2):
    """Plain gradient descent on the task's loss, one step, in place; returns the batch as Tensors."""
    import mindspore as ms
    params = task.model.trainable_params()
    grads = ms.grad(task.loss_fn, grad_position=None, weights=params)(*map(Tensor, batch))
    for p, g in zip(params, grads):
        ms.ops.assign(p, p - lr * g)


def sequence_logps(task, x, y):
    from mindllm.align.policy import logprobs_of
    task.model.set_train(False)
    return logprobs_of(task.model, x, y).sum(-1)


def answer_rewards(task, x, y, mask):
    """The partial-credit reward of every answer in a batch, recomputed from its tokens and its prompt's numbers."""
    from mindllm.data.arithmetic import partial_credit
    out = []
    for r in range(len(x)):
        first = int(np.argmax(mask[r]))  # the position whose target is the answer's first token
        a, b = task.tokenizer.decode(x[r, :first + 1].tolist()).replace(" is ", "").split(" plus ")
        out.append(partial_credit(task.tokenizer.decode(y[r][mask[r] > 0].tolist()), str(int(a) + int(b))))
    return np.array(out)


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_one_policy_gradient_step_favours_the_better_answers(sft_run, tmp_path, kind):
    """To first order a policy-gradient step raises log pi of the answers that scored above the batch's mean and
    lowers the rest: sum_i (r_i - mean r) * delta log pi(answer_i) > 0, with r recomputed here from the answers
    (a flipped advantage fails it)."""
    from mindllm import tasks
    extra = ["grpo.group_size=4", "grpo.epochs=1", "grpo.reward=partial_credit", "grpo.beta=0"] if kind == "grpo" \
        else ["ppo.reward=partial_credit", "ppo.epochs=1", "ppo.kl_coef=0", "ppo.vf_coef=0", "ppo.reward_model="]
    os.makedirs(tmp_path / kind)
    task = tasks.build(rl_config(kind, sft_run[0], tmp_path / kind, *extra))
    batch = task.train_batches.next()
    x, y, mask = batch[:3]
    rewards = answer_rewards(task, x, y, mask)
    centred = rewards - rewards.mean()
    assert np.abs(centred).sum() > 0  # answers of different reward: there is something to learn
    before = sequence_logps(task, x, y)
    task.model.set_train(True)
    one_gradient_step(task, batch)
    assert float((centred * (sequence_logps(task, x, y) - before)).sum()) > 0


def test_the_reference_stays_bit_identical_while_the_policy_trains(sft_run, tmp_path):
    from mindllm import tasks
    from mindllm.checkpoint import named_arrays
    from mindllm.runs import load_model
    os.makedirs(tmp_path / "g")
    task = tasks.build(rl_config("grpo", sft_run[0], tmp_path / "g", "grpo.group_size=4", "grpo.reward=partial_credit"))
    sft = named_arrays(load_model(sft_run[0])[0])
    for _ in range(2):
        one_gradient_step(task, task.train_batches.next())
    policy, ref = named_arrays(task.model), named_arrays(task.reference)
    assert any(not np.array_equal(policy[k], sft[k]) for k in sft)  # the policy moved
    assert all(np.array_equal(ref[k], sft[k]) for k in sft)  # the reference did not, by a single bit


def ppo_args(sft, out, *extra):
    return ["task=ppo", f"ppo.init={sft}", f"out_dir={out}", "ppo.reward=partial_credit", "ppo.reward_model=",
            "ppo.rollout_batch=16", "ppo.epochs=1", "train.batch_size=16", "train.lr_decay_iters=8",
            "train.eval_interval=100", "train.eval_iters=1", "train.progress=false", "sample.max_new_tokens=0",
            *extra]


@pytest.mark.slow
def test_a_ppo_run_resumed_after_kill_9_equals_the_uninterrupted_run(sft_run, tmp_path, capsys):
    """Rollouts are drawn from the data RNG saved with each checkpoint (checkpoints fall between rollouts), so the
    resumed run samples the same answers from the same weights: bit-identical to the run never killed."""
    import signal
    import subprocess
    import sys
    import time

    from mindllm.config import save_config
    from mindllm.train import weights_digest
    from mindllm.runs import load_model
    full = tmp_path / "full"
    train(load_config(None, ppo_args(sft_run[0], full, "train.max_iters=8", "train.ckpt_interval=2")),
          log=lambda *a: None)
    victim = load_config(None, ppo_args(sft_run[0], tmp_path / "killed", "train.max_iters=100000",
                                        "train.ckpt_interval=2"))
    save_config(victim, tmp_path / "victim.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "mindllm.train", str(tmp_path / "victim.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "ckpt" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step_0000004"):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().strip().split("_")[1])
    assert 4 <= killed_at < 8, killed_at
    train(load_config(None, ppo_args(sft_run[0], tmp_path / "killed", "train.max_iters=8", "train.ckpt_interval=2",
                                     "resume=true")), log=lambda *a: None)
    assert weights_digest(load_model(str(full))[0]) == weights_digest(load_model(str(tmp_path / "killed"))[0])
    png = tmp_path / "curves.png"  # two runs of one method: one row, two runs; their curves drawn
    compare.main([sft_run[0], str(full), str(tmp_path / "killed"), "--plot", str(png)])
    table = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(SystemExit) as e:
        compare.main([sft_run[0], str(full), "--plot", str(tmp_path / "no" / "such" / "dir.png")])
    assert e.value.code == 2 and "cannot write the plot" in capsys.readouterr().err
    assert "| PPO (partial_credit reward, KL 0.05) | 2 |" in table and "| SFT | 1 |" in table
    start = json.load(open(os.path.join(sft_run[0], "summary.json")))["start_exact_match"]
    assert f"| pretrained GPT (before SFT) | 1 | {start:.1%} |" in table  # the SFT run scored its start model
    sample.main(["--ckpt", str(full), "--prompt", "1 plus 2 is ", "--max-new-tokens", "3"])  # a PPO run samples
    assert capsys.readouterr().out.startswith("1 plus 2 is ")


@pytest.mark.slow
def test_sft_in_chinese_from_a_peoples_daily_gpt(tmp_path):
    """The Chinese problems (三加四等于七) through the same SFT task, from a character GPT of People's Daily."""
    from mindllm.data import load_corpus
    corpus = tmp_path / "pd.txt"
    corpus.write_text(load_corpus("peoples_daily")[:200_000] + "\n零一二三四五六七八九十百千万加等于\n", encoding="utf-8")
    base = train_tiny(str(corpus), tmp_path / "base", "train.max_iters=10", "model.block_size=32")
    s = train(load_config(None, ["task=sft", f"sft.init={base}", f"out_dir={tmp_path / 'sft'}", "sft.lang=zh",
                                 "sft.digits=1", "sft.train_problems=40", "sft.test_problems=20", "train.max_iters=4",
                                 "train.batch_size=8", "train.eval_iters=1", "train.progress=false",
                                 "sample.max_new_tokens=0"]), log=lambda *a: None)
    q, _, right = s["answers"][0]
    assert q.endswith("等于") and "加" in q and right and all(c in "零一二三四五六七八九十百千万" for c in right)


@pytest.mark.parametrize("args, says", [
    (["task=dpo", "dpo.init={sft}"], "without pairs"),
    (["task=ppo", "ppo.init={sft}", "ppo.kl_coef=-0.1"], "kl_coef"),
    (["task=ppo", "ppo.init={sft}", "ppo.reward_model={sft}"], "not a reward model"),
    (["task=ppo", "ppo.init={sft}", "ppo.reward=exact_match", "ppo.rollout_batch=24", "train.batch_size=16"],
     "multiple of train.batch_size"),
    (["task=grpo", "grpo.init={sft}", "grpo.rollout_batch=12", "grpo.group_size=8", "train.batch_size=4"],
     "multiple of grpo.group_size"),
    (["task=grpo", "grpo.init={sft}", "train.max_iters=3", "grpo.rollout_batch=16", "train.batch_size=16"],
     "between rollouts"),
    (["task=grpo", "grpo.init={base}"], "not one of the alignment runs"),
])
def test_bad_alignment_configs_get_one_line_and_exit_2(sft_run, tmp_path, capsys, args, says):
    from mindllm.train import main
    sft = sft_run[0]
    base = os.path.join(os.path.dirname(sft), "base")
    with pytest.raises(SystemExit) as e:
        main(["train.batch_size=16", "train.max_iters=8", "train.ckpt_interval=8"] +
             [a.format(sft=sft, base=base) for a in args] + [f"out_dir={tmp_path / 'x'}", "train.progress=false"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_reward_model_scores_ppo_and_is_not_a_policy(sft_run, tmp_path, capsys):
    from mindllm import sample
    out = tmp_path / "pairs.jsonl"
    pairs.main([sft_run[0], "--out", str(out), "--train-problems", "30", "--test-problems", "20"])
    rm = tmp_path / "rm"
    train(load_config(None, ["task=reward_model", f"reward_model.init={sft_run[0]}", f"reward_model.pairs={out}",
                             f"out_dir={rm}", "train.max_iters=4", "train.batch_size=4", "train.eval_iters=1",
                             "train.progress=false"]), log=lambda *a: None)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(rm), "--prompt", "1 plus 2 is "])
    assert e.value.code == 2 and "language model" in capsys.readouterr().err
    os.remove(out)  # PPO opens the reward model from its own run alone
    s = train(load_config(None, ppo_args(sft_run[0], tmp_path / "ppo", "ppo.reward=model", f"ppo.reward_model={rm}",
                                         "train.max_iters=2", "train.ckpt_interval=2", "train.log_interval=1")),
              log=lambda *a: None)
    records = [json.loads(line) for line in open(tmp_path / "ppo" / "metrics.jsonl")]
    assert [r["step"] for r in records if "reward" in r] == [1, 2] and "kl_from_sft" in s  # the learned scores
    assert np.isfinite([s["reward_model_score"], s["sft_reward_model_score"]]).all()  # beside the task's own reward
    compare.main([sft_run[0], str(tmp_path / "ppo")])  # the SFT row shows the reward model's score of SFT's answers
    sft_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| SFT |"))
    assert sft_row.split(" | ")[4] == f"{s['sft_reward_model_score']:.3f}", sft_row
