"""Instruction tuning data (指令微调): Alpaca-style records from an offline Q/A source, one chat template, and
labels that score only the response.

The source is PyPI `chatterbot-corpus` (YAML conversations by topic: 2,026 English question/answer pairs, 467
Chinese). A record is Alpaca's {"instruction", "input", "output"}; the template turns it into

    ### Instruction:
    What is AI?

    ### Response:
    Artificial Intelligence is ...<|endoftext|>

and `encode_record` returns (x, y) for causal-LM training where y is -100 (ignored by the loss) on every prompt
token and on padding: the model learns to answer, not to write questions.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import yaml

from ..errors import UserError
from .corpus import INSTALL_LINE, package_dir
from .dataset import IGNORE

PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


def load_records(lang: str = "english") -> list[dict]:
    """The first question/answer of every chatterbot-corpus conversation in `lang`, as Alpaca records with the
    topic (its file name) under "category", in file order."""
    root = os.path.join(package_dir("chatterbot_corpus", "chatterbot-corpus"), "data", lang)
    files = sorted(glob.glob(os.path.join(root, "*.yml")))
    if not files:
        raise UserError(f"chatterbot-corpus has no '{lang}' conversations; reinstall it: {INSTALL_LINE}")
    records = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        for conv in data.get("conversations") or []:
            if len(conv) >= 2 and all(isinstance(t, str) and t.strip() for t in conv[:2]):
                records.append({"instruction": conv[0].strip(), "input": "", "output": conv[1].strip(),
                                "category": os.path.splitext(os.path.basename(path))[0]})
    return records


def split_records(records: list[dict], test_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, test) with no question in both: records are grouped by their instruction text first, because the
    corpus repeats questions with different answers ('What is AI?' has several)."""
    questions = sorted({r["instruction"] for r in records})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(len(questions))[:max(1, int(len(questions) * test_fraction))].tolist())
    test_q = {q for i, q in enumerate(questions) if i in held}
    return ([r for r in records if r["instruction"] not in test_q], [r for r in records if r["instruction"] in test_q])


def prompt_text(record: dict) -> str:
    """The template up to and including '### Response:\\n': what the model is given at inference."""
    extra = f"### Input:\n{record['input']}\n\n" if record.get("input") else ""
    return PROMPT.format(instruction=record["instruction"], input_block=extra)


def encode_record(record: dict, tokenizer, block_size: int, eos_id: int, pad_id: int):
    """(x, y) int32 arrays of length block_size for one record: x = prompt + response + EOS (truncated, then padded
    with pad_id), y = x shifted left by one with IGNORE wherever the next token is part of the prompt or padding.
    Returns None when the prompt alone does not fit."""
    prompt = tokenizer.encode(prompt_text(record))
    answer = tokenizer.encode(record["output"]) + [eos_id]
    if len(prompt) >= block_size:
        return None
    ids = (prompt + answer)[:block_size + 1]
    x = np.full(block_size, pad_id, np.int32)
    y = np.full(block_size, IGNORE, np.int32)
    x[:len(ids) - 1] = ids[:-1]
    y[:len(ids) - 1] = ids[1:]
    y[:len(prompt) - 1] = IGNORE  # targets inside the prompt: not scored
    return x, y


def encode_records(records, tokenizer, block_size: int, eos_id: int, pad_id: int):
    """Stacked (x, y) of every record whose prompt fits, and how many were dropped."""
    pairs = [encode_record(r, tokenizer, block_size, eos_id, pad_id) for r in records]
    kept = [p for p in pairs if p is not None]
    if not kept:
        raise UserError(f"no instruction fits in model.block_size={block_size} tokens; raise block_size")
    return np.stack([x for x, _ in kept]), np.stack([y for _, y in kept]), len(pairs) - len(kept)
