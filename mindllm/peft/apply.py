"""The config's `peft:` section applied to a model: what training and reloading a run both call."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .lora import apply_lora
from .prompt import apply_prompt


def add_peft(cfg, model, head=()) -> str:
    """Apply cfg.peft (freezing everything else; parameters whose names start with one of `head` train too).
    Returns what it did, or 'none'."""
    peft = cfg.peft
    if peft.method == "none":
        return "none"
    if peft.method == "lora":
        apply_lora(model, peft.r, peft.alpha, peft.dropout, [t.strip() for t in peft.targets.split(",") if t.strip()],
                   train_also=head, seed=cfg.seed)
        return f"LoRA r={peft.r} alpha={peft.alpha:g} on {peft.targets}"
    positions, needed = model.config.max_position_embeddings, cfg.model.block_size + peft.num_virtual_tokens
    if needed > positions:
        raise UserError(f"model.block_size + peft.num_virtual_tokens = {needed} exceeds the model's {positions} "
                        f"positions")
    # prompt tuning starts from the embeddings of randomly drawn vocabulary tokens (Lester et al. 2021)
    vocab = model.config.vocab_size
    ids = np.random.default_rng(cfg.seed).integers(min(1000, vocab // 2), vocab, peft.num_virtual_tokens)
    apply_prompt(model, peft.method, peft.num_virtual_tokens, peft.encoder_hidden, ids, train_also=head, seed=cfg.seed)
    return f"{'prompt tuning' if peft.method == 'prompt' else 'P-tuning'}, {peft.num_virtual_tokens} virtual tokens"
