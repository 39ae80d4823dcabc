"""Sparse mixture of experts, MoE (混合专家): a router sends each token to its top-k of E SwiGLU experts.

    probs = softmax(x @ gateᵀ)                       (N, E)   N tokens, E experts
    w, i  = topk(probs, k); w /= w.sum()             (N, k)   the chosen experts and their renormalised weights
    y     = Σ_j w_j · expert_{i_j}(x)                (N, C)

Two ways to run the experts, both with static shapes (one compiled graph):
- dropless (`capacity_factor=0`): every expert runs on every token and the weights of the unchosen are 0. Exact
  (Mixtral's result), E times the compute of one expert: for teaching and small E;
- capacity (GShard/Switch): each expert takes at most cap = ceil(capacity_factor · N·k / E) tokens, in token order
  (first choices before second choices); a token past an expert's capacity is dropped by it (its MLP output from
  that expert is 0; the residual stream carries it on). Compute is E·cap tokens instead of E·N.

The load-balancing auxiliary loss of Switch Transformer / Mixtral, E · Σ_e f_e · P_e (f_e: the share of routing
choices that went to expert e, times k; P_e: the mean router probability of e), is k for an even load and grows
as a few experts take most tokens; training adds `router_aux_loss_coef` times it.

Parameter names and layouts equal Hugging Face Mixtral's (transformers 5): `mlp.gate.weight` (E, C),
`mlp.experts.gate_up_proj` (E, 2H, C), `mlp.experts.down_proj` (E, C, H).
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Tensor, nn, ops

from .layers import Linear, _normal


class Experts(nn.Cell):
    """E SwiGLU MLPs stored as 3-D tensors, run as batched matmuls: x (E, n, C) -> (E, n, C)."""

    def __init__(self, num_experts, n_embd, hidden, proj_std=0.02):
        super().__init__()
        self.hidden = hidden
        self.gate_up_proj = _normal((num_experts, 2 * hidden, n_embd), 0.02)  # gate and up side by side
        self.down_proj = _normal((num_experts, n_embd, hidden), proj_std)
        self.bmm = ops.BatchMatMul(transpose_b=True)

    def construct(self, x):
        gu = self.bmm(x, self.gate_up_proj)                         # (E, n, 2H)
        g, u = gu[..., :self.hidden], gu[..., self.hidden:]
        return self.bmm(g * ops.sigmoid(g) * u, self.down_proj)     # silu(g)·u -> (E, n, C)


class SparseMoE(nn.Cell):
    """The MoE MLP. construct(x (B, T, C)) -> (y (B, T, C), aux loss (scalar), load (E,): the share of routing
    choices each expert received, before any capacity drop)."""

    def __init__(self, n_embd, hidden, num_experts, top_k=2, capacity_factor=0.0, proj_std=0.02):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.gate = Linear(n_embd, num_experts, False, out_in=True)  # the router
        self.experts = Experts(num_experts, n_embd, hidden, proj_std)

    def route(self, h):
        """h (N, C) -> router probs (N, E), chosen experts (N, k) int32 and their weights (N, k), summing to 1."""
        probs = ops.softmax(self.gate(h), -1)
        w, idx = ops.topk(probs, self.top_k)
        return probs, idx, w / w.sum(-1, keepdims=True)

    def construct(self, x):
        B, T, C = x.shape
        h = x.reshape(B * T, C)
        probs, idx, w = self.route(h)
        chosen = ops.one_hot(idx, self.num_experts, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))  # (N, k, E)
        if self.capacity_factor > 0:
            y = self._with_capacity(h, chosen, w)
        else:
            weight = (chosen * w.reshape(B * T, self.top_k, 1)).sum(1)  # (N, E): 0 for unchosen experts
            out = self.experts(ops.tile(h.reshape(1, B * T, C), (self.num_experts, 1, 1)))  # (E, N, C)
            y = (out * weight.transpose(1, 0).reshape(self.num_experts, B * T, 1)).sum(0)
        load = chosen.sum(1).mean(0) / self.top_k                      # f_e / k: shares summing to 1
        aux = self.num_experts * (load * self.top_k * probs.mean(0)).sum()  # Switch: E · Σ f_e · P_e
        return y.reshape(B, T, C), aux, load

    def capacity(self, n_tokens: int) -> int:
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.num_experts))

    def _with_capacity(self, h, chosen, w):
        """GShard dispatch: a token's slot in an expert's queue is the number of earlier choices of that expert
        (all first choices queue before second choices); slots >= cap are dropped."""
        N, k, E = chosen.shape
        cap = self.capacity(N)
        order = chosen.transpose(1, 0, 2).reshape(k * N, E)            # choice-major: first choices first
        slot = (ops.cumsum(order, 0) - 1.0) * order                    # queue position (0 where not chosen)
        keep = order * (slot < cap).astype(order.dtype)
        dispatch = ops.one_hot(slot.astype(ms.int32), cap, Tensor(1.0, ms.float32),
                               Tensor(0.0, ms.float32)) * keep.reshape(k * N, E, 1)   # (k*N, E, cap)
        dispatch = dispatch.reshape(k, N, E, cap)
        combine = (dispatch * w.transpose(1, 0).reshape(k, N, 1, 1)).sum(0)           # (N, E, cap)
        dispatch = dispatch.sum(0)                                                     # (N, E, cap) 0/1
        expert_in = ops.matmul(dispatch.reshape(N, E * cap).transpose(1, 0), h)         # (E*cap, C)
        out = self.experts(expert_in.reshape(E, cap, -1))                              # (E, cap, C)
        return ops.matmul(combine.reshape(N, E * cap), out.reshape(E * cap, -1))       # (N, C)
