"""The config's `peft:` section applied to a model: what training and reloading a run both call."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .lora import apply_lora
from .prompt import apply_prompt


def add_peft(cfg, model, head=()) -> str:
    """Apply cfg.peft (freezing everything else; parameters whose names start with one of `head` train too).
    Returns what it did, or 'none'."""
    p = cfg.peft
    if p.method == "none":
        return "none"
    if p.method == "lora":
        apply_lora(model, p.r, p.alpha, p.dropout, [t.strip() for t in p.targets.split(",") if t.strip()],
                   train_also=head, seed=cfg.seed)
        return f"LoRA r={p.r} alpha={p.alpha:g} on {p.targets}"
    positions = model.config.max_position_embeddings
    if cfg.model.block_size + p.num_virtual_tokens > positions:
        raise UserError(f"model.block_size + peft.num_virtual_tokens = {cfg.model.block_size + p.num_virtual_tokens} "
                        f"exceeds the model's {positions} positions")
    # prompt tuning starts from the embeddings of randomly drawn vocabulary tokens (Lester et al. 2021)
    vocab = model.config.vocab_size
    ids = np.random.default_rng(cfg.seed).integers(min(1000, vocab // 2), vocab, p.num_virtual_tokens)
    apply_prompt(model, p.method, p.num_virtual_tokens, p.encoder_hidden, ids, train_also=head, seed=cfg.seed)
    return f"{'prompt tuning' if p.method == 'prompt' else 'P-tuning'}, {p.num_virtual_tokens} virtual tokens"
