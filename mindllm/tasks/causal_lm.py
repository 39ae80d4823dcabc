"""Causal language modelling (因果语言模型): a decoder-only model (GPT-2's block or the modern Llama block)
predicts token t+1 from tokens <= t of a text corpus."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from mindspore import Tensor

from ..data import TokenWindows, load_corpus, prepare_tokens
from ..data.dataset import split_text
from ..errors import UserError
from ..models.gpt import GPT, GPTConfig
from ..models.llama import Llama, LlamaConfig
from ..models.layers import cross_entropy
from . import INSTRUCTION_CORPORA, Task
from .common import fixed_batches, loss_line, run_tokenizer, unigram_loss

ARCHS = ("gpt", "llama")
SAMPLES = True
CLOZE = True  # the corpus it read is plain text: cloze items come from its held-out part
HEADLINE = ()  # no final test of its own: perplexity and the cloze items say how good it is


@dataclass
class Options:
    """No options of its own: model, data and train say it all."""


def check(cfg) -> None:
    if cfg.model.arch == "gpt":
        llama_only = [f.name for f in dataclasses.fields(cfg.model) if f.metadata["doc"].startswith("llama only")
                      and getattr(cfg.model, f.name) != f.default]
        if llama_only:
            raise UserError(f"config: model.{llama_only[0]} belongs to the Llama block; set model.arch=llama to use "
                            f"it (GPT-2's block has no such option)")
    if cfg.data.corpus in INSTRUCTION_CORPORA:
        raise UserError(f"data.corpus={cfg.data.corpus} holds question/answer records: train them with "
                        f"task=instruct (from a causal_lm run, instruct.init=<its out_dir>)")


def gpt_config(cfg, vocab_size: int) -> GPTConfig:
    model = cfg.model
    return GPTConfig(vocab_size=vocab_size, block_size=model.block_size, n_layer=model.n_layer,
                     n_head=model.n_head, n_embd=model.n_embd, dropout=model.dropout, bias=model.bias)


def llama_config(cfg, vocab_size: int) -> LlamaConfig:
    m = cfg.model
    return LlamaConfig(vocab_size=vocab_size, block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head,
                       n_kv_head=m.n_kv_head or m.n_head, n_embd=m.n_embd, intermediate_size=m.intermediate_size,
                       rope_theta=m.rope_theta, rope_scaling=m.rope_scaling, rms_norm_eps=m.rms_norm_eps,
                       qkv_bias=m.qkv_bias, tie_word_embeddings=m.tie_word_embeddings, dropout=m.dropout,
                       num_experts=m.num_experts, experts_per_token=m.experts_per_token,
                       capacity_factor=m.capacity_factor, router_aux_loss_coef=m.router_aux_loss_coef)


def language_model(cfg, tokenizer) -> GPT | Llama:
    """The run's model, untrained (a checkpoint then fills it)."""
    if cfg.model.arch == "llama":
        return Llama(llama_config(cfg, tokenizer.vocab_size))
    return GPT(gpt_config(cfg, tokenizer.vocab_size))


def build(cfg) -> Task:
    text = load_corpus(cfg.data.corpus)
    # char: the alphabet of the whole corpus; BPE merges learned from the train split only (no val leak)
    tokenizer = run_tokenizer(cfg, text if cfg.data.tokenizer == "char" else split_text(text, cfg.data.val_fraction)[0])
    splits = prepare_tokens(text, tokenizer, os.path.join(cfg.out_dir, "data"), cfg.data.val_fraction)
    block, batch = cfg.model.block_size, cfg.train.batch_size
    model = language_model(cfg, tokenizer)

    def loss_fn(x, y):
        return cross_entropy(model(x), y)

    evals = {name: fixed_batches(TokenWindows, (splits[name], block, batch), cfg.seed + 1, cfg.train.eval_iters)
             for name in ("train", "val")}
    return Task(
        model=model, **objective(model, loss_fn, evals["val"]), tokenizer=tokenizer, tokens_per_batch=batch * block,
        train_batches=TokenWindows(splits["train"], block, batch, seed=cfg.seed), eval_batches=evals,
        baselines={"uniform": math.log(tokenizer.vocab_size),
                   "unigram": unigram_loss(splits["train"], splits["val"], tokenizer.vocab_size)},
        describe=f"{type(model).__name__} {model.num_params() / 1e6:.2f}M params | vocab {tokenizer.vocab_size} ({cfg.data.tokenizer})")


def objective(model, loss_fn, val_batches) -> dict:
    """The Task fields of the training objective: next-token cross-entropy; a mixture of experts trains on it plus
    the load-balancing loss, reports it alone, and logs its router's balance at every evaluation."""
    if not getattr(model.config, "num_experts", 0):
        return {"loss_fn": loss_fn}
    coef = model.config.router_aux_loss_coef

    def moe_loss_fn(x, y):
        logits, aux, _ = model.forward_with_router(x)
        return cross_entropy(logits, y) + coef * aux

    def router_metrics(m) -> dict:
        """On the first val batch: the load-balancing loss (k when even) and the busiest expert's share of
        routing choices times E (1.0 = even)."""
        _, aux, load = m.forward_with_router(Tensor(val_batches[0][0]))
        return {"moe_aux_loss": float(aux.asnumpy()),
                "moe_max_load": float(load.asnumpy().max()) * m.config.num_experts}

    return {"loss_fn": moe_loss_fn, "eval_loss_fn": loss_fn, "eval_metrics": router_metrics}


def report(summary: dict) -> str:
    return loss_line(summary)
