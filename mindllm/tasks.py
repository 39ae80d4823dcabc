"""Tasks: what differs between the course's objectives — the model, where batches come from, the loss, the
baselines and the final evaluation. `mindllm.train` runs every one of them through the same loop.

    model.arch=gpt              causal LM on a text corpus (GPT)
    model.arch=transformer      seq2seq date normalisation (encoder-decoder)
    model.arch=bert             BERT pretraining: masked LM + next-sentence prediction on a text corpus
    model.arch=bert_classifier  BERT fine-tuning for text classification (sentiment)
    model.arch=gpt with data.corpus=instructions_en|instructions_zh
                                instruction tuning of a course GPT (model.init = its run) on Q/A records
"""
from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np

from .errors import UserError


class Task:
    """What differs between objectives: the model, where batches come from, and the loss. The loop is shared.

    A batch is a tuple of arrays and `loss_fn(*batch)` its loss; `eval_metrics(model)` (optional) adds metrics
    such as val accuracy to every evaluation, `final_eval(model)` (optional) task metrics such as test accuracy
    to the summary."""

    def __init__(self, model, loss_fn, train_batches, eval_batches, tokenizer, baselines, tokens_per_batch,
                 final_eval=None, eval_metrics=None, describe=""):
        self.model, self.loss_fn = model, loss_fn
        self.train_batches = train_batches  # an object with next(), state(), set_state()
        self.eval_batches = eval_batches  # {"train": [batch, ...], "val": [...]}, fixed across evals
        self.tokenizer, self.baselines = tokenizer, baselines
        self.tokens_per_batch, self.final_eval = tokens_per_batch, final_eval
        self.eval_metrics, self.describe = eval_metrics, describe


def build_task(cfg) -> Task:
    builders = {"gpt": causal_lm_task, "transformer": dates_task, "bert": mlm_task, "bert_classifier": classify_task}
    if cfg.model.arch == "gpt" and cfg.data.corpus in INSTRUCTIONS:
        return instruct_task(cfg)
    return builders[cfg.model.arch](cfg)


def fixed_batches(sampler_cls, args, seed: int, n: int) -> list:
    """n batches from a sampler with its own seed: the same every evaluation, and no draw from the train RNG."""
    sampler = sampler_cls(*args, seed=seed)
    return [sampler.next() for _ in range(n)]


def forward_fn(model, cfg):
    """The model's forward pass, compiled in graph mode (for evaluation metrics)."""
    import mindspore as ms

    return ms.jit(model) if cfg.context.mode == "graph" else model


def unigram_loss(train_ids, val_ids, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the val tokens under the train split's add-one-smoothed token frequencies:
    the loss of a model that ignores context entirely."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val_ids)].mean())


def causal_lm_task(cfg) -> Task:
    """GPT causal language modelling on a corpus: predict token t+1 from tokens <= t."""
    from .data import TokenWindows, load_corpus, load_tokenizer, prepare_tokens, train_tokenizer
    from .data.dataset import split_text
    from .models.gpt import GPT, GPTConfig, cross_entropy

    text = load_corpus(cfg.data.corpus)
    tok_path = os.path.join(cfg.out_dir, "tokenizer.json")
    if cfg.resume and os.path.exists(tok_path):
        tokenizer = load_tokenizer(tok_path)  # the exact vocabulary the checkpoint was trained with
    else:
        # char: the alphabet of the whole corpus; BPE merges learned from the train split only (no val leak)
        fit_on = text if cfg.data.tokenizer == "char" else split_text(text, cfg.data.val_fraction)[0]
        tokenizer = train_tokenizer(cfg.data.tokenizer, fit_on, cfg.data.vocab_size)
        tokenizer.save(tok_path)
    splits = prepare_tokens(text, tokenizer, os.path.join(cfg.out_dir, "data"), cfg.data.val_fraction)
    m, t = cfg.model, cfg.train
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=m.block_size, n_layer=m.n_layer,
                          n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout, bias=m.bias))
    train_batches = TokenWindows(splits["train"], m.block_size, t.batch_size, seed=cfg.seed)
    eval_batches = {name: fixed_batches(TokenWindows, (splits[name], m.block_size, t.batch_size), cfg.seed + 1,
                                        t.eval_iters) for name in ("train", "val")}
    baselines = {"uniform": math.log(tokenizer.vocab_size),
                 "unigram": unigram_loss(splits["train"], splits["val"], tokenizer.vocab_size)}

    def loss_fn(x, y):
        return cross_entropy(model(x), y)

    return Task(model, loss_fn, train_batches, eval_batches, tokenizer, baselines, t.batch_size * m.block_size,
                describe=f"GPT {model.num_params() / 1e6:.2f}M params | vocab {tokenizer.vocab_size} "
                         f"({cfg.data.tokenizer})")


def dates_task(cfg) -> Task:
    """Encoder–decoder Transformer on date normalisation ('the 3rd of March, 2021' -> '2021-03-03'); the final
    evaluation decodes the held-out test dates greedily: exact match and character BLEU."""
    from collections import Counter

    from .data.dataset import RowBatches
    from .data.dates import CharVocab, all_characters, date_pairs, encode_pairs
    from .models.layers import cross_entropy
    from .models.transformer import Seq2SeqTransformer, TransformerConfig

    if cfg.data.corpus != "dates":
        raise UserError(f"model.arch=transformer trains the seq2seq task data.corpus=dates, not "
                        f"'{cfg.data.corpus}'")
    m, t = cfg.model, cfg.train
    src_vocab, tgt_vocab = CharVocab(all_characters()), CharVocab("0123456789-")
    splits = {"train": date_pairs(cfg.data.train_examples, "train", cfg.seed),
              "val": date_pairs(max(t.eval_iters * t.batch_size, 1000), "val", cfg.seed + 1),
              "test": date_pairs(cfg.data.test_examples or 2000, "test", cfg.seed + 2)}
    arrays = {k: encode_pairs(v, src_vocab, tgt_vocab, m.block_size) for k, v in splits.items()}
    model = Seq2SeqTransformer(TransformerConfig(
        src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab), max_len=m.block_size, n_layer=m.n_layer,
        n_head=m.n_head, n_embd=m.n_embd, ffn_dim=m.ffn_dim, dropout=m.dropout, norm_first=m.norm_first,
        positions=m.positions))
    train_batches = RowBatches(arrays["train"], t.batch_size, cfg.seed)
    eval_batches = {name: fixed_batches(RowBatches, (arrays[name], t.batch_size), cfg.seed + 1, t.eval_iters)
                    for name in ("train", "val")}
    targets = arrays["train"][2]
    baselines = {"uniform": math.log(len(tgt_vocab)),
                 "unigram": unigram_loss(targets[targets >= 0], arrays["val"][2][arrays["val"][2] >= 0],
                                         len(tgt_vocab))}

    def loss_fn(src, tgt_in, tgt_out):
        return cross_entropy(model(src, tgt_in), tgt_out, label_smoothing=t.label_smoothing)

    def final_eval(model) -> dict:
        from .evaluate import corpus_bleu, exact_match
        from .models.transformer import greedy_decode

        pairs = splits["test"]
        preds = []
        for i in range(0, len(pairs), 500):
            preds += [tgt_vocab.decode(p) for p in greedy_decode(model, arrays["test"][0][i:i + 500])]
        refs = [y for _, y in pairs]
        copy = [x for x, _ in pairs]  # trivial baseline 1: output the input unchanged
        frequent = [Counter(y for _, y in splits["train"]).most_common(1)[0][0]] * len(refs)  # 2: one answer
        return {"test_exact_match": exact_match(preds, refs), "test_bleu": corpus_bleu(preds, refs),
                "copy_exact_match": exact_match(copy, refs), "copy_bleu": corpus_bleu(copy, refs),
                "frequent_exact_match": exact_match(frequent, refs), "frequent_bleu": corpus_bleu(frequent, refs),
                "examples": [[x, p] for (x, _), p in zip(pairs[:8], preds)]}

    return Task(model, loss_fn, train_batches, eval_batches, src_vocab, baselines,
                t.batch_size * 2 * m.block_size, final_eval,
                describe=f"Transformer {model.num_params() / 1e6:.2f}M params | {cfg.data.corpus}")


def bert_config(cfg, vocab_size: int, pad_id: int, num_labels: int = 2):
    """A BertConfig from the course config's model section (HF names on the left)."""
    from .models.bert import BertConfig

    m = cfg.model
    return BertConfig(vocab_size=vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                      num_attention_heads=m.n_head, intermediate_size=m.ffn_dim, max_position_embeddings=m.block_size,
                      hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout, pad_token_id=pad_id,
                      num_labels=num_labels)


def _run_tokenizer(cfg, fit_text: str):
    """The run's tokenizer: reloaded on resume (the exact vocabulary of the checkpoint), else trained/loaded."""
    from .data import load_tokenizer, train_tokenizer

    path = os.path.join(cfg.out_dir, "tokenizer.json")
    if cfg.resume and os.path.exists(path):
        return load_tokenizer(path)
    tokenizer = train_tokenizer(cfg.data.tokenizer, fit_text, cfg.data.vocab_size)
    tokenizer.save(path)
    return tokenizer


def mlm_task(cfg) -> Task:
    """BERT pretraining on a corpus: masked-token prediction (15%, 80/10/10) + next-sentence prediction. The loss is
    MLM + NSP; evaluations also report masked-token accuracy and NSP accuracy on fixed held-out batches."""
    from .data import load_corpus
    from .data.dataset import split_text
    from .data.mlm import IGNORE, PairBatches, split_sentences, tokenize_sentences
    from .models.bert import BertForPreTraining
    from .models.layers import cross_entropy

    if cfg.data.tokenizer not in ("hf_wordpiece", "bert_uncased"):
        raise UserError(f"model.arch=bert needs a WordPiece tokenizer with [CLS]/[SEP]/[MASK]: set "
                        f"data.tokenizer=hf_wordpiece (trained on the corpus) or bert_uncased, not "
                        f"'{cfg.data.tokenizer}'")
    m, t = cfg.model, cfg.train
    parts = dict(zip(("train", "val"), split_text(load_corpus(cfg.data.corpus), cfg.data.val_fraction)))
    tokenizer = _run_tokenizer(cfg, parts["train"])
    segments = {k: tokenize_sentences(tokenizer, split_sentences(v)) for k, v in parts.items()}
    model = BertForPreTraining(bert_config(cfg, tokenizer.vocab_size, tokenizer.token_to_id("[PAD]")))

    def sampler(split, seed):
        return PairBatches(segments[split], tokenizer, m.block_size, t.batch_size, seed, cfg.data.mask_prob)

    train_batches = sampler("train", cfg.seed)
    eval_batches = {k: [s.next() for _ in range(t.eval_iters)] for k, s in
                    (("train", sampler("train", cfg.seed + 1)), ("val", sampler("val", cfg.seed + 1)))}
    V = tokenizer.vocab_size
    train_ids = np.concatenate(segments["train"])
    val_labels = np.concatenate([b[4][b[4] != IGNORE] for b in eval_batches["val"]])
    frequent = int(np.bincount(train_ids, minlength=V).argmax())
    baselines = {"uniform": math.log(V) + math.log(2), "unigram": unigram_loss(train_ids, val_labels, V) + math.log(2)}

    def loss_fn(ids, types, attn, positions, labels, nsp):
        mlm_logits, nsp_logits = model(ids, types, attn, positions)
        return cross_entropy(mlm_logits, labels, IGNORE) + cross_entropy(nsp_logits, nsp)

    forward = forward_fn(model, cfg)
    mask_id = tokenizer.token_to_id("[MASK]")

    def eval_metrics(model) -> dict:
        from mindspore import Tensor

        hit = n = mask_hit = mask_n = nsp_hit = nsp_n = 0
        for ids, types, attn, pos, labels, nsp in eval_batches["val"]:
            mlm_logits, nsp_logits = forward(*map(Tensor, (ids, types, attn, pos)))
            keep = labels != IGNORE
            right = (mlm_logits.asnumpy().argmax(-1) == labels) & keep
            # where the input shows [MASK]: at the 10% unchanged positions the answer is visible and an early
            # model scores by copying it, so the all-positions accuracy flatters it
            hidden = keep & (np.take_along_axis(ids, pos, 1) == mask_id)
            hit, n = hit + int(right.sum()), n + int(keep.sum())
            mask_hit, mask_n = mask_hit + int(right[hidden].sum()), mask_n + int(hidden.sum())
            nsp_hit += int((nsp_logits.asnumpy().argmax(-1) == nsp).sum())
            nsp_n += len(nsp)
        return {"mlm_accuracy": hit / n, "mask_accuracy": mask_hit / max(mask_n, 1), "nsp_accuracy": nsp_hit / nsp_n}

    def final_eval(model) -> dict:
        out = eval_metrics(model)
        nsp = np.concatenate([b[5] for b in eval_batches["val"]])
        return {**out, "frequent_token_accuracy": float(np.mean(val_labels == frequent)),
                "frequent_token": tokenizer.decode([frequent]), "nsp_majority": float(max(nsp.mean(), 1 - nsp.mean())),
                "masked_tokens_evaluated": int(len(val_labels))}

    return Task(model, loss_fn, train_batches, eval_batches, tokenizer, baselines, t.batch_size * m.block_size,
                final_eval, eval_metrics,
                describe=f"BERT {model.num_params() / 1e6:.2f}M params | MLM + NSP on {cfg.data.corpus} | vocab {V} "
                         f"({cfg.data.tokenizer})")


def _init_classifier(cfg, n_classes: int, train_texts):
    """(model, tokenizer, where) for fine-tuning: from model.init = '' (random weights, a WordPiece vocabulary
    trained on the training texts), 'minilm' or a Hugging Face directory (real pretrained weights), or the out_dir
    of a mindllm BERT pretraining run."""
    from .models.bert import BertForSequenceClassification

    init = cfg.model.init
    if not init:
        tokenizer = _run_tokenizer(cfg, "\n".join(train_texts))
        return BertForSequenceClassification(bert_config(cfg, tokenizer.vocab_size, tokenizer.token_to_id("[PAD]"),
                                                         n_classes)), tokenizer, "random weights"
    if init == "minilm":
        from .data.tokenizer import minilm_dir

        init = minilm_dir()
    if os.path.isfile(os.path.join(init, "config.json")):  # a Hugging Face checkpoint
        from .convert import from_hf
        from .data.tokenizer import tokenizer_from_dir

        model = from_hf(init, arch="BertForSequenceClassification", num_labels=n_classes)
        tokenizer = tokenizer_from_dir(init)
        tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))
        return model, tokenizer, f"the pretrained {cfg.model.init}"
    if os.path.isfile(os.path.join(init, "config.yaml")):  # a mindllm pretraining run
        from .checkpoint import load_arrays
        from .train import load_trained

        pre, _ = load_trained(init)
        if type(pre.model).__name__ != "BertForPreTraining":
            raise UserError(f"model.init='{init}' is a {type(pre.model).__name__} run; fine-tuning starts from a "
                            f"BERT pretraining run (model.arch=bert)")
        src = pre.model.config
        model = BertForSequenceClassification(type(src)(**{**src.__dict__, "num_labels": n_classes,
                                                           "hidden_dropout_prob": cfg.model.dropout,
                                                           "attention_probs_dropout_prob": cfg.model.dropout}))
        bert = {n: p.asnumpy() for n, p in pre.model.parameters_and_names() if n.startswith("bert.")}
        load_arrays(model, bert, init, skip={n for n, _ in model.parameters_and_names() if n not in bert})
        pre.tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))
        return model, pre.tokenizer, f"the BERT pretrained in {cfg.model.init}"
    raise UserError(f"model.init='{cfg.model.init}' is neither 'minilm', a Hugging Face directory (config.json) nor "
                    f"a mindllm run directory (config.yaml)")


def freeze(model, what: str, layers: int) -> None:
    """Stop gradients to the embeddings, the first `layers` encoder layers, or the whole encoder (then only the
    pooler and classifier learn)."""
    prefixes = {"none": (), "embeddings": ("bert.embeddings.",), "encoder": ("bert.embeddings.", "bert.encoder.")}
    frozen = prefixes[what] + tuple(f"bert.encoder.layer.{i}." for i in range(layers))
    if layers:
        frozen += ("bert.embeddings.",)
    for name, p in model.parameters_and_names():
        if name.startswith(frozen):
            p.requires_grad = False


def add_peft(cfg, model, head=("classifier.",)) -> str:
    """Apply the config's peft method (freezing the rest; parameters under `head` train too). Returns what it did,
    or 'none'."""
    p, m = cfg.peft, cfg.model
    if p.method == "none":
        return "none"
    if m.freeze != "none" or m.freeze_layers:
        raise UserError(f"peft.method={p.method} freezes the pretrained model itself; leave model.freeze=none and "
                        f"model.freeze_layers=0")
    if p.method == "lora":
        from .peft.lora import apply_lora

        apply_lora(model, p.r, p.alpha, p.dropout, [t.strip() for t in p.targets.split(",") if t.strip()],
                   train_also=head, seed=cfg.seed)
        return f"LoRA r={p.r} alpha={p.alpha:g} on {p.targets}"
    from .peft.prompt import apply_prompt

    if m.block_size + p.num_virtual_tokens > model.config.max_position_embeddings:
        raise UserError(f"model.block_size + peft.num_virtual_tokens = {m.block_size + p.num_virtual_tokens} exceeds "
                        f"the model's {model.config.max_position_embeddings} positions")
    # prompt tuning starts from the embeddings of randomly drawn vocabulary tokens (Lester et al. 2021)
    ids = np.random.default_rng(cfg.seed).integers(min(1000, model.config.vocab_size // 2), model.config.vocab_size,
                                                p.num_virtual_tokens)
    apply_prompt(model, p.method, p.num_virtual_tokens, p.encoder_hidden, ids, train_also=head, seed=cfg.seed)
    return f"{'prompt tuning' if p.method == 'prompt' else 'P-tuning'}, {p.num_virtual_tokens} virtual tokens"


def classify_task(cfg) -> Task:
    """Fine-tune BERT for sentence classification (reviews_zh, tweets_en): cross-entropy on the pooled [CLS]
    vector; the final evaluation scores the whole test split beside the majority-class baseline."""
    from .data.dataset import RowBatches
    from .data.sentiment import load_labelled, split
    from .evaluate import classification_metrics
    from .models.layers import cross_entropy

    m, t = cfg.model, cfg.train
    data = load_labelled(cfg.data.corpus)
    parts = {p: split(data, p) for p in ("train", "val", "test")}
    if cfg.data.test_examples:  # the test split is already a random permutation: its head is a random subset
        test = parts["test"]
        parts["test"] = type(test)(test.texts[:cfg.data.test_examples], test.labels[:cfg.data.test_examples],
                                   test.classes)
    n_classes = len(data.classes)
    if m.freeze_layers and m.freeze == "encoder":
        raise UserError("model.freeze=encoder already freezes every layer; leave model.freeze_layers=0")
    model, tokenizer, origin = _init_classifier(cfg, n_classes, parts["train"].texts)
    if m.block_size > model.config.max_position_embeddings:
        raise UserError(f"model.block_size={m.block_size} exceeds the model's {model.config.max_position_embeddings} "
                        f"positions")
    if m.freeze_layers > model.config.num_hidden_layers:
        raise UserError(f"model.freeze_layers={m.freeze_layers} but the model has {model.config.num_hidden_layers} "
                        f"layers")
    freeze(model, m.freeze, m.freeze_layers)
    method = add_peft(cfg, model)

    def encode(part):
        b = tokenizer.batch(part.texts, max_length=m.block_size, padding="max_length")
        return b["input_ids"], b["token_type_ids"], b["attention_mask"], part.labels.astype(np.int32)

    arrays = {k: encode(v) for k, v in parts.items()}
    train_batches = RowBatches(arrays["train"], t.batch_size, cfg.seed)
    eval_batches = {name: fixed_batches(RowBatches, (arrays[name], t.batch_size), cfg.seed + 1, t.eval_iters)
                    for name in ("train", "val")}
    majority = parts["train"].majority()
    counts = np.bincount(parts["train"].labels, minlength=n_classes) + 1.0
    baselines = {"uniform": math.log(n_classes),  # "unigram" here is the class prior: the train label frequencies
                 "unigram": float(-np.log(counts / counts.sum())[parts["val"].labels].mean())}

    def loss_fn(ids, types, attn, y):
        return cross_entropy(model(ids, types, attn), y)

    forward = forward_fn(model, cfg)

    def predict(ids, types, attn):
        from mindspore import Tensor

        preds, B = [], t.batch_size
        for i in range(0, len(ids), B):  # the last chunk padded to a full batch: one compiled shape
            chunk = [np.resize(a[i:i + B], (B,) + a.shape[1:]) for a in (ids, types, attn)]
            preds.append(forward(*map(Tensor, chunk)).asnumpy().argmax(-1)[:min(B, len(ids) - i)])
        return np.concatenate(preds)

    def eval_metrics(model) -> dict:
        ids, types, attn, y = (np.concatenate(a) for a in zip(*eval_batches["val"]))
        return {"val_accuracy": float(np.mean(predict(ids, types, attn) == y))}

    def final_eval(model) -> dict:
        ids, types, attn, y = arrays["test"]
        ours = classification_metrics(predict(ids, types, attn), y, n_classes)
        base = classification_metrics(np.full_like(y, majority), y, n_classes)
        extra = {}
        if method != "none":  # what one would ship: the trained tensors only
            from .peft.lora import save_adapter

            extra["adapter_bytes"] = save_adapter(model, os.path.join(cfg.out_dir, "adapter.safetensors"))
        return {**extra, **{f"test_{k}": v for k, v in ours.items()},
                **{f"majority_{k}": v for k, v in base.items() if k != "confusion"},
                "classes": data.classes, "majority_class": data.classes[majority], "test_examples": int(len(y))}

    trainable = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    total = model.num_params()
    return Task(model, loss_fn, train_batches, eval_batches, tokenizer, baselines, t.batch_size * m.block_size,
                final_eval, eval_metrics,
                describe=f"BERT classifier {total / 1e6:.2f}M params, {trainable / 1e6:.4f}M trainable "
                         f"({trainable / total:.2%}; "
                         f"{method if method != 'none' else f'freeze={m.freeze}, freeze_layers={m.freeze_layers}'}) | "
                         f"{cfg.data.corpus} ({n_classes} classes, {len(parts['train'].texts)} train) | from {origin}")


INSTRUCTIONS = {"instructions_en": "english", "instructions_zh": "chinese"}


def instruct_task(cfg) -> Task:
    """Instruction tuning (指令微调) of a GPT trained in the course (model.init = its run directory) on the
    chatterbot-corpus Q/A records (data/instruct.py): the loss scores the response tokens only; peft.method=lora
    adapts the named Linear layers (e.g. c_attn), else every weight trains. Evaluation uses held-out questions (no
    question in both splits); the final one also answers them greedily, before and after tuning, scored by word
    F1 against the reference answers."""
    from .checkpoint import load_arrays, named_arrays
    from .data.dataset import RowBatches
    from .data.instruct import IGNORE, encode_records, load_records, prompt_text, split_records
    from .evaluate import token_f1
    from .models.gpt import GPT
    from .models.layers import cross_entropy

    m, t = cfg.model, cfg.train
    if not m.init or not os.path.isfile(os.path.join(m.init, "config.yaml")):
        raise UserError("instruction tuning starts from a GPT trained with mindllm: set model.init to the out_dir of a "
                        f"model.arch=gpt run (got '{m.init}')")
    from .train import load_trained

    pre, _ = load_trained(m.init)
    if not isinstance(pre.model, GPT):
        raise UserError(f"model.init='{m.init}' is a {type(pre.model).__name__} run, not a GPT")
    model, tokenizer = pre.model, pre.tokenizer
    tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))
    # the starting point, for the before/after answers: copies, since asnumpy() shares memory with the Parameters
    base_weights = {k: v.copy() for k, v in named_arrays(model).items()}
    special = getattr(tokenizer, "special", {}) or {}
    eos_text = "<|endoftext|>" if "<|endoftext|>" in special else "\n"  # a character model ends an answer at \n
    eos = tokenizer.encode(eos_text)[0]
    block = model.config.block_size

    def usable(r):  # a character vocabulary cannot encode characters the pretraining text never had
        try:
            tokenizer.encode(prompt_text(r) + r["output"])
            return eos_text != "\n" or "\n" not in r["output"]
        except UserError:
            return False

    records = load_records(INSTRUCTIONS[cfg.data.corpus])
    kept = [r for r in records if usable(r)]
    if len(kept) < 20:
        raise UserError(f"only {len(kept)} of {len(records)} records can be written with the tokenizer of "
                        f"'{m.init}'; start from a run with a byte-level tokenizer (data.tokenizer=bpe or gpt2)")
    train_r, test_r = split_records(kept, cfg.data.val_fraction, cfg.seed)
    arrays = {k: encode_records(v, tokenizer, block, eos, eos) for k, v in (("train", train_r), ("test", test_r))}
    head = add_peft(cfg, model, head=())
    train_batches = RowBatches(arrays["train"][:2], t.batch_size, cfg.seed)
    eval_batches = {"train": fixed_batches(RowBatches, (arrays["train"][:2], t.batch_size), cfg.seed + 1,
                                           t.eval_iters),
                    "val": fixed_batches(RowBatches, (arrays["test"][:2], t.batch_size), cfg.seed + 1, t.eval_iters)}
    V = tokenizer.vocab_size
    train_y, test_y = (arrays[k][1][arrays[k][1] != IGNORE] for k in ("train", "test"))
    baselines = {"uniform": math.log(V), "unigram": unigram_loss(train_y, test_y, V)}

    def loss_fn(x, y):
        return cross_entropy(model(x), y, IGNORE)

    def answers(net, n):
        from .sample import complete

        out = []
        for r in test_r[:n]:
            text = complete(net, tokenizer, prompt_text(r), block, temperature=0.0, notice=lambda *a: None)[0]
            out.append(text.split(eos_text)[0].strip())
        return out

    def final_eval(model) -> dict:
        n = cfg.data.test_examples or 50
        base = GPT(model.config)
        load_arrays(base, base_weights, m.init)
        base.set_train(False)
        after, before = answers(model, n), answers(base, n)
        refs = [r["output"] for r in test_r[:n]]
        # ties go to the answer seen first (a max over a set would depend on the per-process string hash)
        frequent = Counter(r["output"] for r in train_r).most_common(1)[0][0]

        def f1(preds):
            return float(np.mean([token_f1(p, g) for p, g in zip(preds, refs)]))

        extra = {}
        if head != "none":
            from .peft.lora import save_adapter

            extra["adapter_bytes"] = save_adapter(model, os.path.join(cfg.out_dir, "adapter.safetensors"))
        return {**extra, "answer_f1": f1(after), "pretrained_answer_f1": f1(before),
                "frequent_answer_f1": f1([frequent] * len(refs)), "frequent_answer": frequent,
                "questions_answered": len(refs),
                "answers": [[r["instruction"], b, a] for r, b, a in zip(test_r[:8], before, after)]}

    trainable = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    return Task(model, loss_fn, train_batches, eval_batches, tokenizer, baselines, t.batch_size * block, final_eval,
                describe=f"instruction tuning of the GPT in {m.init} ({model.num_params() / 1e6:.2f}M params, "
                         f"{trainable / 1e6:.3f}M trainable; {head if head != 'none' else 'all weights'}) | "
                         f"{len(train_r)} train / {len(test_r)} held-out Q/A ({cfg.data.corpus}; "
                         f"{len(records) - len(kept)} records the tokenizer cannot write, "
                         f"{arrays['train'][2] + arrays['test'][2]} too long)")
