"""The alignment week's task: a small character-level GPT learns to add, then RL (reward model, PPO, DPO, GRPO)
makes it better, and "better" is measurable: the exact match of the sum.

Problems come in two languages, the same (a, b) for the same seed:
- English: "{a} plus {b} is " -> "{a+b}" (digits, letters and spaces only: the English course GPT's vocabulary
  has no '+' or '=');
- Chinese: "{zh(a)}加{zh(b)}等于" -> zh(a+b) in Chinese numerals as one reads them (十五, 一百零一, 一千零一十).

Train and test are disjoint by the unordered pair {a, b}: a+b and b+a always fall in the same split, so a test
problem cannot be answered by remembering its mirror image from training. Rewards of a completion (the text the
model generates after the prompt): exact_match and a denser partial_credit (see there). Pure Python and numpy.
"""
from __future__ import annotations

import collections

import numpy as np

from ..errors import UserError

LANGS = ("en", "zh")
MAX_ZH = 99_999  # sums of two 4-digit numbers reach 19,998; 万 covers them
ZH_DIGITS = "零一二三四五六七八九"
ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
ZH_CHARS = set(ZH_DIGITS) | set(ZH_UNITS) | {"万"}
_ENUMERATE_UP_TO = 1_000_000  # ordered problems; larger spaces (4 digits: 81 million) are always sampled


def zh_numeral(n: int) -> str:
    """0 <= n <= 99,999 in Chinese numerals as one reads them aloud: 0 零, 10 十, 15 十五, 101 一百零一,
    110 一百一十, 1010 一千零一十, 2000 二千, 10001 一万零一, 12000 一万二千.

    Conventions (one spelling per number, so a right answer has exactly one text): 二 throughout, never 两
    (二千, 二万); 十 alone for 10-19 at the start (十五, not 一十五) but 一十 inside (一百一十, 一万零一十);
    one 零 for any run of zeros between nonzero digits, none at the end (一千零一, 一千一百).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_ZH:
        raise UserError(f"zh_numeral: {n!r} is not an integer in 0..{MAX_ZH}")
    if n == 0:
        return ZH_DIGITS[0]
    out, pending_zero = [], False
    for value, unit in ((10000, "万"), (1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = int(n) // value % 10
        if digit == 0:
            pending_zero = bool(out)  # a zero after a nonzero digit: said once, if a nonzero digit follows
            continue
        if pending_zero:
            out.append(ZH_DIGITS[0])
            pending_zero = False
        out.append(ZH_DIGITS[digit] + unit)
    text = "".join(out)
    return text[1:] if text.startswith("一十") else text


def parse_zh_numeral(text) -> int | None:
    """The inverse of zh_numeral: the number a Chinese numeral says, or None if `text` is not one.

    Strict: only the spellings zh_numeral writes are accepted (两千, 一十五, 〇 or 一百一 give None). Why: the
    model is trained on one spelling, and a reward that parsed two texts to the same number would call the same
    sum both right (by value) and wrong (by exact match).
    """
    if not isinstance(text, str) or not text or not set(text) <= ZH_CHARS:
        return None
    total, section, digit = 0, 0, None
    for c in text:
        if c in ZH_DIGITS:
            digit = ZH_DIGITS.index(c)
        elif c == "万":
            total, section, digit = (section + (digit or 0)) * 10000, 0, None
        else:
            section, digit = section + (1 if digit is None else digit) * ZH_UNITS[c], None
    value = total + section + (digit or 0)
    # the loose reading above is right for every canonical text; writing the value back rejects the others
    return value if value <= MAX_ZH and zh_numeral(value) == text else None


def operand_range(digits: int) -> range:
    """The d-digit numbers [10^(d-1), 10^d); for d=1, 0..9 (zero is a 1-digit number)."""
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or not 1 <= digits <= 4:
        raise UserError(f"digits must be 1, 2, 3 or 4, not {digits!r}")
    return range(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits)


def problem(a: int, b: int, *, lang: str) -> dict:
    """One problem {"prompt", "answer", "a", "b"} in `lang` ('en' or 'zh')."""
    if lang == "en":
        return {"prompt": f"{a} plus {b} is ", "answer": str(a + b), "a": a, "b": b}
    if lang == "zh":
        return {"prompt": f"{zh_numeral(a)}加{zh_numeral(b)}等于", "answer": zh_numeral(a + b), "a": a, "b": b}
    raise UserError(f"unknown lang {lang!r}: use one of {', '.join(LANGS)}")


def _orderings(pair, flip) -> list[tuple[int, int]]:
    a, b = pair
    return [(a, b)] if a == b else [(b, a), (a, b)] if flip else [(a, b), (b, a)]


def _enumerated_split(numbers: range, n_train: int, n_test: int, rng) -> tuple[list, list]:
    """Small spaces: every unordered pair, shuffled; the test takes whole pairs (both orders), the train draws
    from the remaining pairs. When the test needs one last problem it takes a pair a+a (one order only), so no
    mirror image is wasted and even n_train + n_test == all problems works."""
    pairs = [(a, b) for a in numbers for b in numbers if a <= b]
    order = [pairs[i] for i in rng.permutation(len(pairs))]
    flips = dict(zip(order, rng.integers(0, 2, size=len(order)).tolist()))  # which order comes first
    test, used = [], set()
    for pair in order:
        if len(test) + (1 if pair[0] == pair[1] else 2) <= n_test:
            test += _orderings(pair, flips[pair])
            used.add(pair)
        if len(test) == n_test:
            break
    if len(test) < n_test:  # one short: take one order of the next pair; its mirror image is dropped
        pair = next(p for p in order if p not in used)
        test.append(_orderings(pair, flips[pair])[0])
        used.add(pair)
    rest = [ab for pair in order if pair not in used for ab in _orderings(pair, flips[pair])]
    if n_train > len(rest):
        raise UserError(f"asked for {n_train} train + {n_test} test problems but only {len(rest)} train problems "
                        f"are left after the test's pairs: ask for fewer")
    train = [rest[i] for i in rng.permutation(len(rest))[:n_train]]
    return train, [test[i] for i in rng.permutation(len(test))]


def _sampled_split(numbers: range, n_train: int, n_test: int, rng) -> tuple[list, list]:
    """Large spaces (4 digits: 81 million problems): draw (a, b) at random, skip repeats; the test is drawn
    first and the train skips every pair the test has, in either order."""
    seen, test_pairs, splits = set(), set(), ([], [])
    for split, n in ((1, n_test), (0, n_train)):
        while len(splits[split]) < n:
            for a, b in rng.integers(numbers.start, numbers.stop, size=(max(n - len(splits[split]), 16), 2)):
                a, b = int(a), int(b)
                key = (min(a, b), max(a, b))
                if (a, b) in seen or (split == 0 and key in test_pairs) or len(splits[split]) == n:
                    continue
                seen.add((a, b))
                if split == 1:
                    test_pairs.add(key)
                splits[split].append((a, b))
    return splits


def make_problems(lang: str, digits: int, n_train: int, n_test: int, seed: int = 0) -> tuple[list, list]:
    """(train, test): lists of problems {"prompt", "answer", "a", "b"} of `digits`-digit addition in `lang`.

    Deterministic: the same seed gives the same problems (and the same (a, b) in both languages). Disjoint by
    the unordered pair {a, b}, no problem twice in a split. Refuses more problems than exist (d digits: m^2
    ordered problems for the m d-digit numbers, e.g. 100 for d=1).
    """
    if lang not in LANGS:
        raise UserError(f"unknown lang {lang!r}: use one of {', '.join(LANGS)}")
    numbers = operand_range(digits)
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"{name} must be a non-negative integer, not {n!r}")
    total = len(numbers) ** 2
    if n_train + n_test > total:
        raise UserError(f"asked for {n_train} train + {n_test} test problems but {digits}-digit addition has only "
                        f"{total} (a, b) problems: ask for fewer or use more digits")
    rng = np.random.default_rng(seed)
    dense = n_train + n_test > total // 4  # sampling with rejection would repeat itself a lot
    small = total <= 10_000 or (total <= _ENUMERATE_UP_TO and dense)
    split = _enumerated_split if small else _sampled_split
    train, test = split(numbers, int(n_train), int(n_test), rng)
    return [problem(a, b, lang=lang) for a, b in train], [problem(a, b, lang=lang) for a, b in test]


def answer_of(completion: str, eos: str = "\n") -> str:
    """The model's answer: the completion before the first `eos`, without surrounding spaces."""
    return completion.split(eos, 1)[0].strip()


def exact_match(completion: str, answer: str, eos: str = "\n") -> float:
    """1.0 if the completion's answer is exactly `answer`, else 0.0: the score the report quotes."""
    return 1.0 if answer_of(completion, eos=eos) == answer else 0.0


def partial_credit(completion: str, answer: str, eos: str = "\n") -> float:
    """1.0 if exact, else 0.5 * (answer characters equal to the completion's at the same position counted from
    the right, units digit first) / len(answer): a wrong answer gets < 0.5, the right one 1.0.

    Why: carries run from the right, so a right units digit is real progress; and a denser reward than 0/1
    gives RL on a small model a gradient before it gets whole sums right. Chinese numerals are compared as the
    digits of the numbers they say (五百七十九 vs 五百八十九: 2 of 3 digits); an unparsable one scores 0.
    """
    if exact_match(completion, answer, eos=eos):
        return 1.0
    got = answer_of(completion, eos=eos)
    if not answer.isascii():
        want_n, got_n = parse_zh_numeral(answer), parse_zh_numeral(got)
        if want_n is None or got_n is None:
            return 0.0
        answer, got = str(want_n), str(got_n)
    if not answer:
        return 0.0
    right = sum(1 for i in range(1, min(len(answer), len(got)) + 1) if answer[-i] == got[-i])
    return 0.5 * right / len(answer)


REWARDS = {"exact_match": exact_match, "partial_credit": partial_credit}


def most_frequent_answer(train: list[dict]) -> str:
    """The answer most common in `train` (ties: the first seen): the best constant guess, a floor any trained
    model must beat."""
    if not train:
        raise UserError("most_frequent_answer needs at least one train problem")
    return collections.Counter(p["answer"] for p in train).most_common(1)[0][0]  # ties keep first-seen order


def most_frequent_answer_accuracy(train: list[dict], test: list[dict]) -> float:
    """Exact-match accuracy on `test` of always answering most_frequent_answer(train)."""
    guess = most_frequent_answer(train)
    return float(np.mean([exact_match(guess, p["answer"]) for p in test])) if test else 0.0


def random_answer_accuracy(train: list[dict], test: list[dict], *, seed: int = 0) -> float:
    """Exact-match accuracy on `test` of answering each problem with a random train answer (a model that learned
    the shape of answers, not the sum)."""
    if not train:
        raise UserError("random_answer_accuracy needs at least one train problem")
    if not test:
        return 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(train), size=len(test))
    return float(np.mean([exact_match(train[i]["answer"], p["answer"]) for i, p in zip(picks, test)]))
