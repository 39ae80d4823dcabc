"""The alignment week's arithmetic data: Chinese numerals (by hand and against cn2an), splits disjoint by the
unordered pair, determinism, the rewards by hand, the baselines and the refusals."""
import cn2an
import pytest

from mindllm.data.arithmetic import (REWARDS, answer_of, exact_match, make_problems, most_frequent_answer,
                                     most_frequent_answer_accuracy, parse_zh_numeral, partial_credit,
                                     random_answer_accuracy, zh_numeral)
from mindllm.errors import UserError

TABLE = {0: "零", 7: "七", 10: "十", 15: "十五", 20: "二十", 99: "九十九", 101: "一百零一", 110: "一百一十",
         115: "一百一十五", 1000: "一千", 1001: "一千零一", 1010: "一千零一十", 1100: "一千一百",
         1998: "一千九百九十八", 2000: "二千", 2222: "二千二百二十二", 10000: "一万", 10001: "一万零一",
         10010: "一万零一十", 12000: "一万二千", 20000: "二万", 19998: "一万九千九百九十八",
         99999: "九万九千九百九十九"}


def test_numerals_by_hand():
    for n, text in TABLE.items():
        assert zh_numeral(n) == text, n
        assert parse_zh_numeral(text) == n, text


def test_round_trip_every_number():
    assert all(parse_zh_numeral(zh_numeral(n)) == n for n in range(100_000))


@pytest.mark.parametrize("text", ["", "两千", "一十五", "一百一", "〇", "十十", "万", "零五", "一千零零一",
                                  "五百 ", "579", "加", None, 5, "十万"])
def test_not_numerals(text):
    """Strict: only zh_numeral's spellings (两千 and 一十五 are Chinese, but not ours), nothing above 99,999."""
    assert parse_zh_numeral(text) is None


def test_against_cn2an():
    """cn2an 0.5.24 writes every number 0..99,999 exactly as zh_numeral does (二千 not 两千, 十 not 一十 for 10,
    一万零一十 with 一 inside): no convention difference to handle when writing. Reading, it is looser (it accepts
    两千 and 一十 too); parse_zh_numeral refuses those on purpose (one spelling per answer)."""
    assert cn2an.an2cn(2000) == "二千" and cn2an.an2cn(10) == "十" and cn2an.an2cn(10010) == "一万零一十"
    assert cn2an.cn2an("两千", "normal") == 2000 and parse_zh_numeral("两千") is None
    for n in list(range(0, 3000)) + list(range(3000, 100_000, 37)):
        text = zh_numeral(n)
        assert cn2an.an2cn(n) == text, n
        assert cn2an.cn2an(text, "normal") == n, text
        assert parse_zh_numeral(cn2an.an2cn(n)) == n, n


def test_refusals():
    for bad in (-1, 100_000, 1.5, True):
        with pytest.raises(UserError):
            zh_numeral(bad)
    for kwargs in ({"lang": "fr"}, {"digits": 0}, {"digits": 5}, {"n_train": 90, "n_test": 11},
                   {"n_train": -1}):
        args = {"lang": "en", "digits": 1, "n_train": 10, "n_test": 10, "seed": 0, **kwargs}
        with pytest.raises(UserError) as e:
            make_problems(**args)
        assert "\n" not in str(e.value)


def _pairs(problems):
    return {frozenset((p["a"], p["b"])) for p in problems}


@pytest.mark.parametrize("lang,digits,n_train,n_test", [("en", 1, 75, 25), ("zh", 1, 60, 31), ("en", 2, 3000, 500),
                                                        ("zh", 3, 2000, 300), ("en", 4, 3000, 500),
                                                        ("en", 3, 100_000, 30_000)])  # sampled, many collisions
def test_splits(lang, digits, n_train, n_test):
    train, test = make_problems(lang, digits, n_train, n_test, seed=1)
    assert (len(train), len(test)) == (n_train, n_test)
    assert not _pairs(train) & _pairs(test)  # a+b in test: neither a+b nor b+a in train
    for split in (train, test):
        assert len({(p["a"], p["b"]) for p in split}) == len(split)
    low, high = (0, 9) if digits == 1 else (10 ** (digits - 1), 10 ** digits - 1)
    numbers = [p[k] for p in train + test for k in "ab"]
    assert low <= min(numbers) and max(numbers) <= high
    if digits > 1:  # drawn over the whole range, not a corner of it
        assert min(numbers) < low + (high - low) * 0.05 and max(numbers) > high - (high - low) * 0.05
    for p in train + test:
        if lang == "en":
            assert p["prompt"] == f"{p['a']} plus {p['b']} is " and p["answer"] == str(p["a"] + p["b"])
        else:
            assert p["prompt"] == f"{zh_numeral(p['a'])}加{zh_numeral(p['b'])}等于"
            assert parse_zh_numeral(p["answer"]) == p["a"] + p["b"]


def test_every_problem_can_be_asked_for():
    train, test = make_problems("en", 1, 75, 25, seed=3)  # 25 is odd: the test takes one a+a pair
    assert len({(p["a"], p["b"]) for p in train + test}) == 100 and not _pairs(train) & _pairs(test)


def test_deterministic():
    first = make_problems("en", 2, 200, 50, seed=7)
    assert make_problems("en", 2, 200, 50, seed=7) == first
    assert make_problems("en", 2, 200, 50, seed=8) != first
    assert make_problems("en", 4, 200, 50, seed=7) == make_problems("en", 4, 200, 50, seed=7)
    assert make_problems("en", 4, 200, 50, seed=7) != make_problems("en", 4, 200, 50, seed=8)
    zh = make_problems("zh", 2, 200, 50, seed=7)  # the same (a, b) in both languages
    assert [(p["a"], p["b"]) for p in zh[0]] == [(p["a"], p["b"]) for p in first[0]]


def test_only_the_tokenizers_characters():
    en_chars, zh_chars = set(), set()
    for digits in (1, 2, 3, 4):
        for lang, chars in (("en", en_chars), ("zh", zh_chars)):
            n_train, n_test = (80, 20) if digits == 1 else (400, 100)
            train, test = make_problems(lang, digits, n_train, n_test, seed=digits)
            chars.update(c for p in train + test for c in p["prompt"] + p["answer"])
    assert en_chars <= set("0123456789 plusi")
    assert zh_chars == set("零一二三四五六七八九十百千万加等于")


def test_rewards_by_hand():
    assert answer_of(" 579 \nxyz") == "579" and answer_of("579</s>1", eos="</s>") == "579"
    assert exact_match("579\nxyz", "579") == 1.0 and exact_match("5790", "579") == 0.0
    assert partial_credit("589\n", "579") == pytest.approx(0.5 * 2 / 3)
    assert partial_credit("579\nxyz", "579") == 1.0 and partial_credit(" 579 \n", "579") == 1.0
    assert partial_credit("", "579") == 0.0 and partial_credit("975", "579") == pytest.approx(0.5 / 3)
    assert partial_credit("79", "579") == pytest.approx(0.5 * 2 / 3)  # units and tens right
    assert partial_credit("1579", "579") == pytest.approx(0.5)  # every digit right, but wrong: still < 1
    assert partial_credit("五百八十九", "五百七十九") == pytest.approx(0.5 * 2 / 3)
    assert partial_credit("五百七十九\n", "五百七十九") == 1.0 and exact_match("五百七十九", "五百七十九") == 1.0
    assert partial_credit("五百七十", "五百七十九") == pytest.approx(0.5 * 2 / 3)  # 570 vs 579: by position
    assert partial_credit("两百七十九", "五百七十九") == 0.0  # not a numeral of ours
    assert partial_credit("九", "五百七十九") == pytest.approx(0.5 / 3)
    assert set(REWARDS) == {"exact_match", "partial_credit"} and REWARDS["partial_credit"] is partial_credit


def test_baselines():
    train = [{"answer": a} for a in ["5", "7", "7", "5", "9"]]
    assert most_frequent_answer(train) == "5"  # a tie between 5 and 7: the first seen
    test = [{"answer": a} for a in ["5", "5", "6", "7"]]
    assert most_frequent_answer_accuracy(train, test) == 0.5
    train, test = make_problems("en", 1, 75, 25, seed=0)
    acc = random_answer_accuracy(train, test, seed=0)
    assert 0.0 <= acc <= 0.4 and acc == random_answer_accuracy(train, test, seed=0)
    with pytest.raises(UserError):
        most_frequent_answer([])
