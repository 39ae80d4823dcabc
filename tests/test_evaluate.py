"""Word F1 of free-text answers (instruction tuning's report): SQuAD's definition for English, one word per CJK
ideograph for Chinese."""
from hypothesis import given, strategies as st

from mindllm.evaluate import f1_words, token_f1


def test_english_f1_by_hand():
    # 2 shared words ("the", "cat"): precision 2/3, recall 2/2 -> F1 0.8; case is ignored, duplicates count once each
    assert abs(token_f1("The cat sat", "the cat") - 0.8) < 1e-12
    assert token_f1("a a b", "a b b") == 2 * (2 / 3) * (2 / 3) / (4 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("x", "y") == 0.0


def test_chinese_is_scored_by_character():
    # 人工智能是 shared (5 of 7 characters on each side): F1 5/7, where whitespace words would give 0
    assert abs(token_f1("人工智能是科学", "人工智能是工程") - 5 / 7) < 1e-12
    assert f1_words("AI是科学 Really") == ["ai", "是", "科", "学", "really"]


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFF)))
def test_text_without_ideographs_splits_on_whitespace(text):
    assert f1_words(text) == text.lower().split()
