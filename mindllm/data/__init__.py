"""Text data: corpora from installed packages, cleaning, tokenizers, and token-window batches."""
from .bpe import BPETokenizer
from .corpus import load_corpus
from .dataset import TokenWindows, prepare_tokens
from .tokenizer import (CharTokenizer, HFTokenizer, bert_uncased, gpt2, load_tokenizer, pad_batch,
                        train_tokenizer)

__all__ = ["load_corpus", "CharTokenizer", "BPETokenizer", "HFTokenizer", "gpt2", "bert_uncased", "pad_batch",
           "train_tokenizer", "load_tokenizer", "prepare_tokens", "TokenWindows"]
