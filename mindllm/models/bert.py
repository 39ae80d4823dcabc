"""BERT: a bidirectional Transformer encoder pretrained by masked-language modelling (掩码语言模型), in reading order.

Parameter names and layouts equal Hugging Face BERT's state-dict keys (`embeddings.word_embeddings.weight`,
`encoder.layer.0.attention.self.query.weight` stored (out, in) like nn.Linear, ...), and the config fields are
HF's `config.json` keys, so `mindllm.convert.from_hf` is a loop over names. BERT is post-LN: x = LN(x + f(x)).

    Bert                             the encoder (HF BertModel): ids -> hidden states (B, T, H)
    BertForPreTraining               + MLM head (tied to the word embeddings) + NSP head: pretraining
    BertForMaskedLM                  + MLM head: logits (B, T, V)
    BertForSequenceClassification    + pooler + classifier: logits (B, num_labels)
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .layers import Attention, Embedding, LayerNorm, Linear, NEG_INF, gelu_exact, merge_heads, per_head, split_heads


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """From a HF config.json dict (unknown keys ignored; `id2label` gives num_labels)."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        if "num_labels" not in d and "id2label" in d:
            kw["num_labels"] = len(d["id2label"])
        if kw.get("hidden_act", "gelu") not in ("gelu", "relu"):
            raise ValueError(f"hidden_act '{kw['hidden_act']}' is not supported (gelu, relu)")
        return cls(**kw)


def Dense(n_in, n_out):
    """nn.Linear's layout, (out, in), so HF weights copy without transposing."""
    return Linear(n_in, n_out, out_in=True)


class BertEmbeddings(nn.Cell):
    """token + position + segment (token type, 句子A/B) embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(p=cfg.hidden_dropout_prob)

    def construct(self, input_ids, token_type_ids):
        return self.from_vectors(self.word_embeddings(input_ids), token_type_ids)

    def from_vectors(self, x, token_type_ids):
        """The same from token vectors x (B, T, H) instead of ids: soft prompts enter here (peft's inputs_embeds)."""
        T = x.shape[1]
        x = x + self.position_embeddings(ops.arange(T, dtype=ms.int32)) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Cell):
    """Multi-head self-attention over all positions (both directions): the shared `Attention` core."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        H, self.n_head = cfg.hidden_size, cfg.num_attention_heads
        self.query, self.key, self.value = Dense(H, H), Dense(H, H), Dense(H, H)
        self.attention = Attention(H // self.n_head, cfg.attention_probs_dropout_prob)

    def construct(self, x, mask):
        q, k, v = (split_heads(t, self.n_head) for t in (self.query(x), self.key(x), self.value(x)))
        return merge_heads(self.attention(q, k, v, mask), x.shape[0])  # (B, T, H)


class BertResidual(nn.Cell):
    """LN(x + dropout(dense(h))): HF's BertSelfOutput and BertOutput (post-LN Add & Norm)."""

    def __init__(self, n_in, cfg: BertConfig):
        super().__init__()
        self.dense = Dense(n_in, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(p=cfg.hidden_dropout_prob)

    def construct(self, h, x):
        return self.LayerNorm(x + self.dropout(self.dense(h)))


class BertAttention(nn.Cell):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertResidual(cfg.hidden_size, cfg)

    def construct(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Cell):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = Dense(cfg.hidden_size, cfg.intermediate_size)
        self.relu = cfg.hidden_act == "relu"

    def construct(self, x):
        h = self.dense(x)
        return ops.relu(h) if self.relu else gelu_exact(h)


class BertLayer(nn.Cell):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidual(cfg.intermediate_size, cfg)

    def construct(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Cell):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.CellList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def construct(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Cell):
    """tanh(dense(h[CLS])): the sentence vector NSP and classification read."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = Dense(cfg.hidden_size, cfg.hidden_size)

    def construct(self, h):
        return ops.tanh(self.dense(h[:, 0]))


class Bert(nn.Cell):
    """The encoder. construct(input_ids, token_type_ids=None, attention_mask=None) -> last hidden state (B, T, H);
    attention_mask is 1 for real tokens and 0 for padding, which no position attends to."""

    def __init__(self, cfg: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if add_pooling_layer else None
        self.n_head = cfg.num_attention_heads

    def construct(self, input_ids, token_type_ids=None, attention_mask=None, prompts=None):
        """`prompts` (k, H): soft prompt vectors put before every row's tokens (prompt tuning, P-tuning), as Hugging
        Face peft does: they take positions 0..k-1 and segment 0, and every position attends to them."""
        if token_type_ids is None:
            token_type_ids = ops.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        if prompts is None:
            x = self.embeddings(input_ids, token_type_ids)
        else:
            B, k = input_ids.shape[0], prompts.shape[0]
            vectors = ops.concat((ops.tile(prompts.reshape((1,) + prompts.shape), (B, 1, 1)),
                                  self.embeddings.word_embeddings(input_ids)), 1)
            lead = ops.zeros((B, k), token_type_ids.dtype)
            x = self.embeddings.from_vectors(vectors, ops.concat((lead, token_type_ids), 1))
            attention_mask = ops.concat((ops.ones((B, k), attention_mask.dtype), attention_mask), 1)
        B, T = attention_mask.shape  # (B, T) 1/0 -> additive (B*nh, 1, T)
        mask = per_head(((1.0 - attention_mask.astype(ms.float32)) * NEG_INF).reshape(B, 1, T), self.n_head)
        return self.encoder(x, mask)


def num_params(cell) -> int:
    return sum(int(np.prod(p.shape)) for p in cell.get_parameters())


class BertLMHead(nn.Cell):
    """MLM head (HF BertLMPredictionHead): dense + GELU + LayerNorm, then scores against the word embeddings (tied
    weights, as in BERT) plus a per-token bias."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = BertTransform(cfg)
        self.bias = ms.Parameter(ms.Tensor(np.zeros(cfg.vocab_size, np.float32)))
        self.scores = ops.MatMul(transpose_b=True)

    def construct(self, h, word_embeddings):
        shape = h.shape
        h = self.transform(h).reshape(-1, shape[-1])
        return (self.scores(h, word_embeddings) + self.bias).reshape(shape[:-1] + (-1,))


class BertTransform(nn.Cell):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = Dense(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.relu = cfg.hidden_act == "relu"

    def construct(self, h):
        h = self.dense(h)
        return self.LayerNorm(ops.relu(h) if self.relu else gelu_exact(h))


class BertPreTrainingHeads(nn.Cell):
    def __init__(self, cfg: BertConfig, nsp: bool = True):
        super().__init__()
        self.predictions = BertLMHead(cfg)
        self.seq_relationship = Dense(cfg.hidden_size, 2) if nsp else None


class BertForPreTraining(nn.Cell):
    """Masked LM + next-sentence prediction (下一句预测). construct(ids, segments, mask, positions) ->
    (mlm logits at `positions` (B, P, V), NSP logits (B, 2)); scoring only the masked positions (as the original
    BERT does) saves computing V logits at the 85% of positions the MLM loss ignores."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = Bert(cfg)
        self.cls = BertPreTrainingHeads(cfg)

    def construct(self, input_ids, token_type_ids, attention_mask, positions):
        h = self.bert(input_ids, token_type_ids, attention_mask)
        picked = ops.gather_d(h, 1, ops.tile(positions.reshape(positions.shape + (1,)), (1, 1, h.shape[-1])))
        mlm = self.cls.predictions(picked, self.bert.embeddings.word_embeddings.weight)
        nsp = self.cls.seq_relationship(self.bert.pooler(h))
        return mlm, nsp

    def num_params(self) -> int:
        return num_params(self)


class BertForMaskedLM(nn.Cell):
    """construct(ids, segments=None, mask=None) -> logits (B, T, V) at every position."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = Bert(cfg, add_pooling_layer=False)
        self.cls = BertPreTrainingHeads(cfg, nsp=False)

    def construct(self, input_ids, token_type_ids=None, attention_mask=None):
        h = self.bert(input_ids, token_type_ids, attention_mask)
        return self.cls.predictions(h, self.bert.embeddings.word_embeddings.weight)

    def num_params(self) -> int:
        return num_params(self)


class BertForSequenceClassification(nn.Cell):
    """construct(ids, segments=None, mask=None) -> class logits (B, num_labels) from the pooled [CLS] vector."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = Bert(cfg)
        self.dropout = nn.Dropout(p=cfg.hidden_dropout_prob)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels)
        self.prompt = None  # a soft-prompt Cell (mindllm.peft.prompt) for prompt tuning / P-tuning

    def construct(self, input_ids, token_type_ids=None, attention_mask=None):
        h = self.bert(input_ids, token_type_ids, attention_mask, None if self.prompt is None else self.prompt())
        return self.classifier(self.dropout(self.bert.pooler(h)))

    def num_params(self) -> int:
        return num_params(self)


def mean_pool(hidden, attention_mask):
    """Sentence embedding (B, H): the mean of the hidden states of real (unpadded) tokens, as sentence-transformers
    does for all-MiniLM-L6-v2."""
    m = attention_mask.astype(hidden.dtype).reshape(attention_mask.shape + (1,))
    return (hidden * m).sum(1) / ops.maximum(m.sum(1), 1e-9)
