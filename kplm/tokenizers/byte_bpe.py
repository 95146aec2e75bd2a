"""Byte-level BPE tokenizers (RoBERTa, GPT-2 style) loaded from a checkpoint, run in-graph."""
import json
import os
from typing import Optional

from kplm.components import Tokenizer
from kplm.errors import ConfigError, describe
from kplm.hookspecs import hookimpl

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
CONFIG_FILE = "tokenizer.json"


class ByteBPE(Tokenizer):
    """A byte-level BPE tokenizer (``keras_hub.models.RobertaTokenizer``, tf ops) with RoBERTa's
    special tokens ``<s> </s> <pad> <unk> <mask>``; sentence pairs are joined with ``</s></s>``.
    Byte symbols missing from the vocabulary are dropped, as Hugging Face's tokenizer does.
    Its vocabulary comes from a checkpoint (``vocab.json`` + ``merges.txt``); learning one is not
    supported.

    Args:
        vocabulary: str. A directory holding ``vocab.json`` and ``merges.txt`` (or the path of
            ``vocab.json``, with ``merges.txt`` beside it).

    Example:
        tokenizer = ByteBPE(vocabulary="models/roberta-base")
    """

    name = "byte_bpe"
    special = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>", "mask": "<mask>"}
    pair_separator = ("sep", "sep")
    layer_class = "RobertaTokenizer"  # the keras_hub tokenizer build() returns
    continuation_prefix = None  # word boundaries are marked by a leading "Ġ" instead

    def __init__(self, vocabulary: Optional[str] = None):
        self.vocabulary = vocabulary
        self.tokens, self.merges, self._layer = None, None, None
        if vocabulary is not None:
            directory = vocabulary if os.path.isdir(vocabulary) else os.path.dirname(vocabulary)
            vocab_path = (os.path.join(vocabulary, VOCAB_FILE) if os.path.isdir(vocabulary)
                          else vocabulary)
            self.set_vocabulary(*_read(vocab_path, os.path.join(directory, MERGES_FILE)))

    def set_vocabulary(self, vocab, merges):
        """Use ``vocab`` (token -> id) and ``merges`` (``"a b"`` rules, in order)."""
        missing = [t for t in self.special.values() if t not in vocab]
        if missing:
            raise ConfigError(f"tokenizer.vocabulary lacks the special tokens {missing}")
        for number, merge in enumerate(merges, 1):  # a merge's token missing: id -1 in graph
            parts = merge.split(" ")
            if len(parts) != 2 or "".join(parts) not in vocab:
                raise ConfigError(f"tokenizer.vocabulary: merge {number} {merge!r} "
                                  + ("is not two symbols" if len(parts) != 2 else
                                     f"makes {''.join(parts)!r}, which the vocabulary lacks")
                                  + "; the vocabulary and merges are not of one tokenizer")
        size = max(vocab.values()) + 1
        tokens = [""] * size
        for token, index in vocab.items():
            tokens[index] = token
        self.tokens, self.merges, self._layer = tokens, list(merges), None
        return self

    def train(self, texts, progress=True, total_bytes=None):
        raise ConfigError("byte_bpe vocabularies come from a checkpoint (vocab.json + merges.txt);"
                          " learning one is not supported: use wordpiece")

    def build(self):
        """The in-graph tokenizer layer, built once."""
        if self.tokens is None:
            raise ConfigError("tokenizer has no vocabulary: set tokenizer.vocabulary")
        if self._layer is None:
            import keras_hub
            vocab = {t: i for i, t in enumerate(self.tokens) if t}
            layer_class = getattr(keras_hub.models, self.layer_class)
            self._layer = layer_class(vocabulary=vocab, merges=self.merges)
        return self._layer

    def continuation_mask(self):
        """True for tokens that continue a word (no leading ``Ġ``; specials excluded)."""
        specials = set(self.special.values())
        return [not (t.startswith("\u0120") or t in specials) for t in self.tokens]

    def save(self, directory):
        """Write ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        vocab = {t: i for i, t in enumerate(self.tokens) if t}
        _atomic_write(os.path.join(directory, VOCAB_FILE), json.dumps(vocab, ensure_ascii=False))
        _atomic_write(os.path.join(directory, MERGES_FILE), "#version: 0.2\n"
                      + "".join(m + "\n" for m in self.merges))
        _atomic_write(os.path.join(directory, CONFIG_FILE),
                      json.dumps({"name": self.name, "vocabulary_size": len(self.tokens)}) + "\n")

    @classmethod
    def load(cls, directory):
        return cls(vocabulary=directory)


class GPT2ByteBPE(ByteBPE):
    """GPT-2's byte-level BPE (``keras_hub.models.GPT2Tokenizer``): the same byte-level merges
    as ``byte_bpe``, with one special token, ``<|endoftext|>``, which plays every role (start,
    separator and padding; GPT-2 has no mask). Its vocabulary comes from a checkpoint.

    Args:
        vocabulary: str. A directory holding ``vocab.json`` and ``merges.txt``.

    Example:
        tokenizer = GPT2ByteBPE(vocabulary="models/gpt2")
    """

    name = "gpt2_bpe"
    special = {role: "<|endoftext|>" for role in ("cls", "sep", "pad", "unk", "mask")}
    pair_separator = ("sep",)
    layer_class = "GPT2Tokenizer"


def _read(vocab_path, merges_path):
    try:
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [line.rstrip("\n") for line in f
                      if line.strip() and not line.startswith("#version")]
    except FileNotFoundError as e:
        raise ConfigError(f"tokenizer.vocabulary: {e.filename} not found") from None
    except ValueError as e:
        raise ConfigError(f"tokenizer.vocabulary: {vocab_path} is not valid JSON: {describe(e)}") from None
    if not isinstance(vocab, dict):
        raise ConfigError(f"tokenizer.vocabulary: {vocab_path} must map tokens to ids")
    return vocab, merges


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@hookimpl
def register_tokenizers(register):
    register("byte_bpe", ByteBPE)
    register("gpt2_bpe", GPT2ByteBPE)
