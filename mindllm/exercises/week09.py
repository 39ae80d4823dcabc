"""Week 9 exercises: instruction tuning (notebook 09). The references are the package's own: the Alpaca template
(`mindllm.data.instruct.prompt_text`), the split by question (`split_records`), the labels with the prompt masked
(`encode_record`), the masked loss (`mindllm.models.layers.cross_entropy`), LoRA on the course GPT
(`mindllm.peft.apply_lora`) and SQuAD's word F1 (`mindllm.evaluate.token_f1`). Every check draws fresh random cases
from a seeded generator, of several sizes, with the edge cases that break a first attempt."""
from __future__ import annotations

import numpy as np

from ..data.instruct import IGNORE, encode_record, prompt_text as reference_prompt, split_records
from ..evaluate import token_f1
from .core import Mismatch, exercise, expect_close, expect_equal

WORDS = ("what", "is", "ai", "the", "a", "robot", "you", "are", "I", "am", "here's", "code", "python", "of", "to",
         "computer", "not", "sure", "yes", "no", "why", "how", "do", "it", "my", "printer", "works")


def _sentence(rng, lo: int = 1, hi: int = 9) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def _first_difference(got: str, want: str, what: str) -> None:
    """Strings equal, or where they part: the character index and a few characters of each around it."""
    if not isinstance(got, str):
        raise Mismatch(f"{what}: got {type(got).__name__}, expected a str")
    if got == want:
        return
    i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
    raise Mismatch(f"{what}: differs from character {i} on: got {got[max(0, i - 12):i + 12]!r}, expected "
                   f"{want[max(0, i - 12):i + 12]!r} (lengths {len(got)} and {len(want)})")


@exercise("week09.prompt_text",
          hint="'### Instruction:\\n' + instruction + '\\n\\n', then '### Input:\\n' + input + '\\n\\n' only when the "
               "input is not empty, then '### Response:\\n' (the answer is not part of the prompt)")
def prompt_text(student) -> int:
    rng = np.random.default_rng(91)
    records = [{"instruction": "What is AI?", "input": "", "output": "A branch of science."},
               {"instruction": "Translate into French.", "input": "Good morning.", "output": "Bonjour."},
               {"instruction": "什么是ai", "input": "", "output": "人工智能是工程和科学的分支。"},
               {"instruction": "Sum the numbers.", "output": "6"}]  # no "input" key at all
    for _ in range(4):
        records.append({"instruction": _sentence(rng).capitalize() + "?",
                        "input": _sentence(rng) if rng.random() < 0.5 else "", "output": _sentence(rng)})
    records.append({"instruction": "Two lines:\nfirst, then second.", "input": "x = 1\ny = 2", "output": "3"})
    for r in records:
        _first_difference(student(dict(r)), reference_prompt(r),
                          f"the prompt of {r['instruction'][:30]!r} (input {r.get('input', '(no key)')!r:.20})")
    return len(records)


def _records(rng, n_questions: int) -> list[dict]:
    """Records whose questions repeat with different answers, in a shuffled order (like the corpus)."""
    recs = [{"instruction": f"question {q}: {_sentence(rng, 1, 4)}?", "input": "", "output": f"answer {q}.{k}"}
            for q in range(n_questions) for k in range(int(rng.integers(1, 5)))]
    return [recs[i] for i in rng.permutation(len(recs))]


@exercise("week09.split_by_question",
          hint="group by question first: qs = sorted(set of instructions), hold out the questions at "
               "np.random.default_rng(seed).permutation(len(qs))[:max(1, int(len(qs) * test_fraction))], then send "
               "every record of a held-out question to test, keeping the records' order")
def split_by_question(student) -> int:
    rng = np.random.default_rng(92)
    n = 0
    for n_q, fraction in ((3, 0.1), (10, 0.2), (40, 0.1), (75, 0.25), (120, 0.5)):
        records = _records(rng, n_q)
        seed = int(rng.integers(1 << 20))
        got = student([dict(r) for r in records], fraction, seed)
        want_train, want_test = split_records(records, fraction, seed)
        what = f"{len(records)} records of {n_q} questions, test_fraction {fraction}"
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mismatch(f"{what}: return (train, test), two lists; got {type(got).__name__}")
        train, test = list(got[0]), list(got[1])
        both = {r["instruction"] for r in train} & {r["instruction"] for r in test}
        if both:
            raise Mismatch(f"{what}: the question {sorted(both)[0]!r} is in train and in test")
        if len(train) + len(test) != len(records):
            raise Mismatch(f"{what}: train has {len(train)} and test {len(test)} records, {len(train) + len(test)} "
                           f"in all, expected every one of the {len(records)} exactly once")
        held = len({r["instruction"] for r in test})
        want_held = len({r["instruction"] for r in want_test})
        if held != want_held:
            raise Mismatch(f"{what}: {held} questions held out, expected max(1, int({n_q} * {fraction})) = "
                           f"{want_held}")
        if {r["instruction"] for r in test} != {r["instruction"] for r in want_test}:
            raise Mismatch(f"{what}, seed {seed}: a split by question, but not the package's: held out "
                           f"{sorted(r['instruction'] for r in test)[0]!r}..., expected "
                           f"{sorted(r['instruction'] for r in want_test)[0]!r}... (draw them as the task says)")
        expect_equal([r["output"] for r in test], [r["output"] for r in want_test],
                      f"{what}, seed {seed}: the test records (their answers, in order)")
        expect_equal([r["output"] for r in train], [r["output"] for r in want_train],
                     f"{what}, seed {seed}: the train records (their answers, in order)")
        n += 1
    return n


class _Lookup:
    """A tokenizer for the check: the token ids of each text are given (the package's encode_record asks for them)."""

    def __init__(self, table: dict):
        self.table = table

    def encode(self, text: str) -> list:
        return list(self.table[text])


@exercise("week09.labels",
          hint="ids = (prompt + answer + [eos])[:block_size + 1]; x[:len(ids)-1] = ids[:-1], y[:len(ids)-1] = ids[1:]; "
               "pad x with pad_id and y with -100; then y[:len(prompt)-1] = -100 (the targets inside the prompt); "
               "return None when len(prompt) >= block_size")
def labels(student) -> int:
    rng = np.random.default_rng(93)
    # (prompt tokens, answer tokens, block): fits with padding, fills the block exactly, loses its EOS, a one-token
    # answer, a prompt one short of the block, a prompt that fills it (dropped), a long one (dropped)
    shapes = [(7, 5, 16), (9, 6, 16), (10, 20, 16), (4, 1, 8), (15, 3, 16), (16, 2, 16), (30, 4, 24), (27, 12, 64),
              (22, 60, 64)]
    for k, (n_p, n_a, block) in enumerate(shapes):
        vocab = int(rng.integers(50, 1000))
        eos, pad = vocab - 1, int(rng.integers(0, vocab - 1))  # a pad id unlike EOS: padding must use pad_id
        p_ids = rng.integers(0, vocab - 1, n_p).tolist()
        a_ids = rng.integers(0, vocab - 1, n_a).tolist()
        record = {"instruction": f"q{k}", "input": "", "output": f"a{k}"}
        tok = _Lookup({reference_prompt(record): p_ids, record["output"]: a_ids})
        want = encode_record(record, tok, block, eos, pad)
        got = student(list(p_ids), list(a_ids), block, eos, pad)
        what = f"a {n_p}-token prompt and a {n_a}-token answer in a block of {block}"
        if want is None:
            if got is not None:
                raise Mismatch(f"{what}: the prompt does not fit, expected None, got {type(got).__name__}")
            continue
        if got is None or not (isinstance(got, tuple) and len(got) == 2):
            raise Mismatch(f"{what}: expected (x, y), got {got if got is None else type(got).__name__}")
        expect_equal(np.asarray(got[0]), want[0], f"{what}: x")
        expect_equal(np.asarray(got[1]), want[1], f"{what}: y (-100 = not scored)")
    return len(shapes)


def _reference_loss(logits, targets, ignore_index) -> float:
    from mindspore import Tensor

    from ..models.layers import cross_entropy

    return float(cross_entropy(Tensor(logits), Tensor(targets), ignore_index).asnumpy())


@exercise("week09.masked_cross_entropy",
          hint="log p = z - max(z) - log(sum(exp(z - max(z)))) along the last axis; take log p at each target, and "
               "average -log p over the positions whose label is not ignore_index only (one mean over the whole "
               "batch, not per example)")
def masked_cross_entropy(student) -> int:
    rng = np.random.default_rng(94)
    n = 0
    # (batch, T, V, logit scale, share of positions ignored); the scale-60 case overflows exp() without the max
    for B, T, V, scale, ignored in ((1, 4, 5, 1.0, 0.5), (2, 8, 11, 3.0, 0.3), (4, 16, 50, 1.0, 0.7),
                                    (3, 10, 7, 60.0, 0.4), (2, 6, 9, 2.0, 0.0), (5, 12, 30, 1.0, 0.95)):
        logits = (rng.normal(size=(B, T, V)) * scale).astype(np.float32)
        labels = rng.integers(0, V, (B, T)).astype(np.int32)
        labels[rng.random((B, T)) < ignored] = IGNORE
        labels.flat[int(rng.integers(labels.size))] = int(rng.integers(V))  # at least one scored position
        got = student(logits.copy(), labels.copy(), IGNORE)
        expect_close(got, _reference_loss(logits, labels, IGNORE),
                     f"the loss of logits {logits.shape} (scale {scale}) with {int((labels != IGNORE).sum())} of "
                     f"{labels.size} positions scored", rtol=1e-4, atol=1e-5)
        n += 1
    return n


@exercise("week09.lora_param_count",
          hint="LoRA adds r * (d_in + d_out) per adapted matrix (A is r x d_in, B is d_out x r); each block adapts "
               "c_attn d->3d, attn.c_proj d->d, mlp.c_fc d->4d and mlp.c_proj 4d->d")
def lora_param_count(student) -> int:
    from ..models.gpt import GPT, GPTConfig
    from ..peft import apply_lora

    cases = [(1, 16, 1), (2, 32, 4), (4, 128, 8), (3, 48, 16), (6, 64, 2)]
    for n_layer, n_embd, r in cases:
        model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=n_layer, n_head=2, n_embd=n_embd))
        apply_lora(model, r=r, alpha=2 * r, targets=["c_attn", "c_proj", "c_fc"])
        want = sum(int(np.prod(p.shape)) for p in model.trainable_params())
        got = student(n_layer, n_embd, r)
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            raise Mismatch(f"return an int, got {type(got).__name__} {got!r:.40}")
        if int(got) != want:
            raise Mismatch(f"trainable numbers for {n_layer} blocks, d = {n_embd}, r = {r}: got {int(got):,}, "
                           f"expected {want:,}")
    return len(cases)


@exercise("week09.word_f1",
          hint="lower-case, split on whitespace; shared = sum((Counter(pred) & Counter(ref)).values()); "
               "precision = shared / len(pred), recall = shared / len(ref), F1 = 2PR / (P + R); 0 when nothing is "
               "shared; with an empty text, 1.0 if both are empty, else 0.0")
def word_f1(student) -> int:
    rng = np.random.default_rng(95)
    cases = [("I am a body.", "Not quite, but I can be perpetuated indefinitely."),
             ("the the the", "the cat"), ("Yes", "yes"), ("Here's a ```", "Here's a simple program:\n```python"),
             ("", "something"), ("", ""), ("  ", ""), ("robot", "computer"), ("think.", "think")]
    for _ in range(8):
        cases.append((_sentence(rng, 1, 12), _sentence(rng, 1, 12)))
    for pred, ref in cases:
        expect_close(student(pred, ref), token_f1(pred, ref), f"F1 of {pred!r:.40} against {ref!r:.40}", rtol=1e-9)
    return len(cases)
