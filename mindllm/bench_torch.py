"""The PyTorch reference of `python -m mindllm.bench` (its train step and decoding) and of `--e2e` (the whole
run): nanoGPT's model.py. PyTorch is a dev dependency, imported only inside these functions, which run in the
bench's own worker processes."""
from __future__ import annotations


def torch_gpt(s: dict, *, vocab: int, block_size: int | None = None):
    """nanoGPT's GPT, trimmed to what the bench runs: pre-LN blocks, fused c_attn, GELU(tanh) MLP, tied head,
    biases, PyTorch's fused scaled_dot_product_attention. Parameter names equal mindllm's (HF GPT-2's); the
    Linear weights are (out, in) where mindllm stores GPT-2's (in, out)."""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    C, H, T = s["n_embd"], s["n_head"], block_size or s["block_size"]

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

        def forward(self, x, past=None):
            B, Tq, _ = x.shape
            q, k, v = (t.view(B, Tq, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
            if past is not None:  # the KV cache: append this step's keys/values
                k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None)
            return self.c_proj(y.transpose(1, 2).reshape(B, Tq, C)), (k, v)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(C), Attn(), nn.LayerNorm(C)
            self.mlp = nn.Sequential()
            self.mlp.c_fc, self.mlp.gelu, self.mlp.c_proj = nn.Linear(C, 4 * C), nn.GELU("tanh"), nn.Linear(4 * C, C)

        def forward(self, x, past=None):
            a, present = self.attn(self.ln_1(x), past)
            x = x + a
            return x + self.mlp(self.ln_2(x)), present

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.wte, self.transformer.wpe = nn.Embedding(vocab, C), nn.Embedding(T, C)
            self.transformer.h = nn.ModuleList(Block() for _ in range(s["n_layer"]))
            self.transformer.ln_f = nn.LayerNorm(C)
            for name, p in self.named_parameters():  # GPT-2's init, as mindllm's
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * s["n_layer"]) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, 0.01 if "wpe" in name else std)

        def forward(self, idx, past=None, pos=0):
            x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(pos, pos + idx.shape[1]))
            presents = []
            for i, block in enumerate(self.transformer.h):
                x, present = block(x, None if past is None else past[i])
                presents.append(present)
            return self.transformer.ln_f(x) @ self.transformer.wte.weight.T, presents

    return GPT()


def torch_adamw(model, *, lr: float, betas: tuple, weight_decay: float, eps: float = 1e-8):
    """nanoGPT's configure_optimizers: AdamW, weight decay on the matrices (dim >= 2) only."""
    import torch

    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
