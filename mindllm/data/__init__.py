"""Text data: corpora from installed packages, tokenizers, and token-window batches."""
from .corpus import load_corpus
from .dataset import TokenWindows, prepare_tokens
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_tokenizer

__all__ = ["load_corpus", "CharTokenizer", "BPETokenizer", "train_tokenizer", "load_tokenizer", "prepare_tokens",
           "TokenWindows"]
