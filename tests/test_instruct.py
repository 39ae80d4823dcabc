"""Instruction data: records from the real chatterbot-corpus, a question never in both splits, and loss masking
that scores exactly the response tokens (+ EOS)."""
import re

import numpy as np
import pytest

from mindllm.data import gpt2
from mindllm.data.instruct import IGNORE, encode_record, encode_records, load_records, prompt_text, split_records


def test_records_from_the_real_corpus():
    en, zh = load_records("english"), load_records("chinese")
    assert len(en) == 2026 and len(zh) == 467
    ai = [r for r in en if r["category"] == "ai"]
    assert ai[0] == {"instruction": "What is AI?", "input": "", "category": "ai",
                     "output": "Artificial Intelligence is the branch of engineering and science devoted to "
                               "constructing machines that think."}


def test_no_question_in_both_splits():
    records = load_records("english")
    train, test = split_records(records, 0.1, seed=0)
    assert len(train) + len(test) == len(records) and 0.05 < len(test) / len(records) < 0.2
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}


def test_only_the_response_is_scored():
    tok = gpt2()
    eos = tok.encode("<|endoftext|>")[0]
    record = {"instruction": "What is AI?", "input": "", "output": "A branch of science."}
    x, y = encode_record(record, tok, 48, eos, eos)
    prompt, answer = tok.encode(prompt_text(record)), tok.encode(record["output"]) + [eos]
    n = len(prompt) + len(answer)
    np.testing.assert_array_equal(x[:n - 1], (prompt + answer)[:-1])
    np.testing.assert_array_equal(y[len(prompt) - 1:n - 1], answer)  # the first answer token is predicted from
    assert (y[:len(prompt) - 1] == IGNORE).all() and (y[n - 1:] == IGNORE).all()  # the prompt's last token
    assert tok.decode([t for t in y if t != IGNORE]) == "A branch of science.<|endoftext|>"
    # truncated answers keep their first tokens; prompts that do not fit are dropped
    x2, y2 = encode_record({**record, "output": "word " * 100}, tok, 24, eos, eos)
    assert (y2 != IGNORE).sum() == 24 - (len(prompt) - 1)
    assert encode_record(record, tok, 5, eos, eos) is None
    xs, ys, dropped = encode_records([record, record], tok, 48, eos, eos)
    assert xs.shape == ys.shape == (2, 48) and dropped == 0


def test_the_run_line_counts_parameters_and_trainable_ones_alike():
    """The instruct run's first line: 'N params' counts what 'trainable' counts (the position embedding and the
    adapters included), so full fine-tuning shows two equal numbers and LoRA the peft report's total."""
    from mindllm.models.gpt import GPT, GPTConfig
    from mindllm.peft import apply_lora, trainable_report
    from mindllm.tasks.common import parameter_counts

    model = GPT(GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=2, n_embd=32))
    every = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    assert every > model.num_params()  # num_params() leaves the position embedding out (nanoGPT's convention)
    assert parameter_counts(model) == f"{every / 1e6:.3f}M params, {every / 1e6:.3f}M trainable"
    apply_lora(model, r=4, alpha=8, targets=["c_attn", "c_proj", "c_fc"])
    lora = 2 * 4 * 16 * 32  # n_layer * r * 16 d: c_attn d->3d, attn.c_proj d->d, c_fc d->4d, mlp.c_proj 4d->d
    assert trainable_report(model).startswith(f"trainable params: {lora:,} || all params: {every + lora:,} ||")
    assert parameter_counts(model) == f"{(every + lora) / 1e6:.3f}M params, {lora / 1e6:.3f}M trainable"


@pytest.mark.slow
def test_lora_instruction_tuning_of_a_course_gpt(tmp_path, tiny_cfg):
    """configs/instruct_lora_gpt_bpe.yaml on a tiny BPE GPT: only the LoRA matrices change, the adapter file holds
    them alone, and the report answers held-out questions before and after."""
    from safetensors.numpy import load_file

    from mindllm.config import load_config
    from mindllm.runs import load_trained
    from mindllm.train import train

    pre = tiny_cfg("data.tokenizer=bpe", "data.vocab_size=300", "model.block_size=48", "train.max_iters=2",
                   out="pre")
    train(pre, log=lambda *a: None)
    cfg = load_config("configs/instruct_lora_gpt_bpe.yaml", [
        f"model.init={pre.out_dir}", f"out_dir={tmp_path / 'ift'}", "train.max_iters=3", "train.batch_size=4",
        "train.eval_iters=1", "train.eval_interval=3", "data.test_examples=2", "train.progress=false"])
    lines = []
    summary = train(cfg, log=lines.append)
    assert {"answer_f1", "pretrained_answer_f1", "frequent_answer_f1", "adapter_bytes"} <= summary.keys()
    assert len(summary["answers"]) == 2 and "before tuning" in lines[-1]
    before = load_trained(pre.out_dir)[0].model
    after = load_trained(str(tmp_path / "ift"))[0].model
    base = {n: p.asnumpy() for n, p in before.parameters_and_names()}
    changed = {n for n, p in after.parameters_and_names() if n not in base or not np.array_equal(p.asnumpy(), base[n])}
    assert changed and all(".lora_" in n for n in changed)
    assert set(load_file(str(tmp_path / "ift" / "adapter.safetensors"))) == \
        {n for n, _ in after.parameters_and_names() if ".lora_" in n}
    # python -m mindllm.sample --ckpt on the tuned run: the base GPT with the run's adapters
    from mindllm.runs import load_model
    from mindspore import Tensor

    sampler = load_model(str(tmp_path / "ift"))[0]
    x = Tensor(np.arange(24, dtype=np.int32).reshape(2, 12) % 300)
    np.testing.assert_allclose(sampler(x).asnumpy(), after(x).asnumpy(), atol=1e-6)


@pytest.mark.slow
def test_full_tuning_reports_the_pretrained_answers_as_before(tmp_path, tiny_cfg):
    """peft.method=none trains every weight: the 'before' answers must still come from the starting weights."""
    from mindllm.config import load_config
    from mindllm.sample import complete
    from mindllm.runs import load_trained
    from mindllm.train import train

    pre = tiny_cfg("data.tokenizer=bpe", "data.vocab_size=300", "model.block_size=48", "train.max_iters=2",
                   out="pre")
    train(pre, log=lambda *a: None)
    cfg = load_config("configs/instruct_lora_gpt_bpe.yaml", [
        f"model.init={pre.out_dir}", f"out_dir={tmp_path / 'ift'}", "peft.method=none", "train.lr=0.05",
        "train.warmup_iters=0", "train.max_iters=5", "train.batch_size=4", "train.eval_iters=1",
        "train.eval_interval=5", "data.test_examples=3", "train.progress=false"])
    lines = []
    summary = train(cfg, log=lines.append)
    counts = re.search(r"\(([\d.]+)M params, ([\d.]+)M trainable; all weights\)", lines[0])
    assert counts and counts[1] == counts[2], lines[0]  # every weight trains: the two counts agree
    base = load_trained(pre.out_dir)[0]
    eos = "<|endoftext|>" if "<|endoftext|>" in (getattr(base.tokenizer, "special", {}) or {}) else "\n"
    for question, before, after in summary["answers"]:
        text = complete(base.model, base.tokenizer, prompt_text({"instruction": question, "input": ""}), 48,
                        temperature=0.0, notice=lambda *a: None)[0]
        assert before == text.split(eos)[0].strip()
    assert any(b != a for _, b, a in summary["answers"])  # training changed the answers: the check can fail


def test_instruction_tuning_needs_a_gpt_run(tmp_path):
    from test_cli import assert_clean_error, call

    assert_clean_error(call("mindllm.train", "configs/instruct_lora_gpt_bpe.yaml", f"instruct.init={tmp_path}",
                           f"out_dir={tmp_path / 'r'}"), "is not a mindllm run directory")
    assert_clean_error(call("mindllm.train", "configs/instruct_lora_gpt_bpe.yaml", "instruct.init=",
                           f"out_dir={tmp_path / 'r'}"), "set instruct.init to the out_dir of a causal_lm run")
