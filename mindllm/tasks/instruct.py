"""Instruction tuning (指令微调) of a GPT trained in the course (instruct.init = its run directory) on the
chatterbot-corpus Q/A records (data/instruct.py): the loss scores the response tokens only; peft.method=lora adapts
the named Linear layers (e.g. c_attn), else every weight trains. Evaluation uses held-out questions (no question in
both splits); the final one also answers them greedily, before and after tuning, scored by word F1 against the
reference answers."""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .. import runs
from ..checkpoint import load_arrays, named_arrays
from ..config import opt
from ..data.dataset import IGNORE, RowBatches
from ..data.instruct import encode_records, load_records, prompt_text, split_records
from ..errors import UserError
from ..evaluate import exact_match, rouge_l, token_f1
from ..models.gpt import GPT
from ..models.layers import cross_entropy
from ..peft import add_peft, save_adapter
from ..sample import complete
from . import INSTRUCTION_CORPORA, Task
from .common import fixed_batches, loss_line, parameter_counts, unigram_loss

ARCHS = ("gpt",)
SAMPLES = True
CLOZE = False  # its held-out text is question/answer records, scored by the answers themselves
HEADLINE = tuple((f"answer {label}", f"answer_{key}", {"before tuning": f"pretrained_answer_{key}",
                                                       "most frequent training answer": f"frequent_answer_{key}"})
                 for label, key in (("word F1", "f1"), ("exact match", "exact_match"), ("ROUGE-L", "rouge_l")))
LANGUAGES = {"instructions_en": "english", "instructions_zh": "chinese"}


@dataclass
class Options:
    init: str = opt("", doc="the out_dir of the causal_lm run to instruction-tune (its sizes and tokenizer are used)")
    test_examples: int = opt(50, lo=1, doc="held-out records answered greedily in the final test")


def check(cfg) -> None:
    if not cfg.options.init:
        raise UserError("instruction tuning starts from a GPT trained with mindllm: set instruct.init to the out_dir "
                        "of a causal_lm run")
    if cfg.data.corpus not in INSTRUCTION_CORPORA:
        raise UserError(f"task instruct reads question/answer records: data.corpus={' or '.join(INSTRUCTION_CORPORA)}"
                        f", not '{cfg.data.corpus}'")


def language_model(cfg, tokenizer) -> GPT:
    """The GPT of the run it started from, with the adapters training added (a checkpoint then fills them)."""
    model = runs.load_model(cfg.options.init)[0]
    add_peft(cfg, model)
    return model


def end_of_answer(tokenizer) -> str:
    """<|endoftext|> where the vocabulary has it; a character model ends an answer at a newline."""
    return "<|endoftext|>" if "<|endoftext|>" in (getattr(tokenizer, "special", {}) or {}) else "\n"


def usable_records(records, tokenizer, eos_text: str) -> list:
    """The records the tokenizer can write (a character vocabulary lacks characters its corpus never had)."""

    def usable(r):
        try:
            tokenizer.encode(prompt_text(r) + r["output"])
            return eos_text != "\n" or "\n" not in r["output"]
        except UserError:
            return False

    return [r for r in records if usable(r)]


def build(cfg) -> Task:
    init = cfg.options.init
    if not os.path.isfile(os.path.join(init, runs.CONFIG)):
        raise UserError(f"instruct.init='{init}' is not a mindllm run directory (no {runs.CONFIG}); train the GPT "
                        f"first")
    runs.require_float(init, "instruction-tune")
    model, tokenizer, _ = runs.load_model(init)
    tokenizer.save(os.path.join(cfg.out_dir, runs.TOKENIZER))
    # the starting point, for the before/after answers: copies, since asnumpy() shares memory with the Parameters
    base_weights = {k: v.copy() for k, v in named_arrays(model).items()}
    eos_text = end_of_answer(tokenizer)
    eos, block, batch = tokenizer.encode(eos_text)[0], model.config.block_size, cfg.train.batch_size
    records = load_records(LANGUAGES[cfg.data.corpus])
    kept = usable_records(records, tokenizer, eos_text)
    if len(kept) < 20:
        raise UserError(f"only {len(kept)} of {len(records)} records can be written with the tokenizer of '{init}'; "
                        f"start from a run with a byte-level tokenizer (data.tokenizer=bpe or gpt2)")
    train_r, test_r = split_records(kept, cfg.data.val_fraction, cfg.seed)
    arrays = {k: encode_records(v, tokenizer, block, eos, eos) for k, v in (("train", train_r), ("test", test_r))}
    method = add_peft(cfg, model)
    train_y, test_y = (arrays[k][1][arrays[k][1] != IGNORE] for k in ("train", "test"))

    def loss_fn(x, y):
        return cross_entropy(model(x), y)

    def answers(net, n):
        return [complete(net, tokenizer, prompt_text(r), block, temperature=0.0, notice=lambda *a: None)[0]
                .split(eos_text)[0].strip() for r in test_r[:n]]

    def final_eval(model) -> dict:
        n = cfg.options.test_examples
        base = GPT(model.config)
        load_arrays(base, base_weights, init)
        base.set_train(False)
        after, before = answers(model, n), answers(base, n)
        refs = [r["output"] for r in test_r[:n]]
        # ties go to the answer seen first (a max over a set would depend on the per-process string hash)
        frequent = Counter(r["output"] for r in train_r).most_common(1)[0][0]

        def scores(name, preds):
            return {f"{name}_f1": float(np.mean([token_f1(p, g) for p, g in zip(preds, refs)])),
                    f"{name}_exact_match": exact_match([p.strip() for p in preds], [g.strip() for g in refs]),
                    f"{name}_rouge_l": float(np.mean([rouge_l(p, g) for p, g in zip(preds, refs)]))}

        extra = {}
        if method != "none":
            extra["adapter_bytes"] = save_adapter(model, os.path.join(cfg.out_dir, "adapter.safetensors"))
        return {**extra, **scores("answer", after), **scores("pretrained_answer", before),
                **scores("frequent_answer", [frequent] * len(refs)), "frequent_answer": frequent,
                "questions_answered": len(refs),
                "answers": [[r["instruction"], b, a] for r, b, a in zip(test_r[:8], before, after)]}

    V = tokenizer.vocab_size
    return Task(
        model=model, loss_fn=loss_fn, tokenizer=tokenizer, tokens_per_batch=batch * block, final_eval=final_eval,
        train_batches=RowBatches(arrays["train"][:2], batch, cfg.seed),
        eval_batches={name: fixed_batches(RowBatches, (arrays[split][:2], batch), cfg.seed + 1, cfg.train.eval_iters)
                      for name, split in (("train", "train"), ("val", "test"))},
        baselines={"uniform": math.log(V), "unigram": unigram_loss(train_y, test_y, V)},
        describe=f"instruction tuning of the GPT in {init} ({parameter_counts(model)}; "
                 f"{method if method != 'none' else 'all weights'}) | "
                 f"{len(train_r)} train / {len(test_r)} held-out Q/A ({cfg.data.corpus}; "
                 f"{len(records) - len(kept)} records the tokenizer cannot write, "
                 f"{arrays['train'][2] + arrays['test'][2]} too long)")


def report(s: dict) -> str:
    return (loss_line(s) +
            f"\nheld-out records ({s['questions_answered']}), greedy answers, word F1 against the reference: "
            f"{s['answer_f1']:.3f} after tuning | baselines: before tuning {s['pretrained_answer_f1']:.3f}, "
            f"always the most frequent training answer {s['frequent_answer_f1']:.3f}" +
            "".join(f"\n  Q: {q!r}\n     before: {b!r}\n     after:  {a!r}" for q, b, a in s["answers"][:4]))
