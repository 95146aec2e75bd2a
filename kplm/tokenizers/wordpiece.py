"""WordPiece tokenizers: learned from a data source, saved in a run directory, run in-graph."""
import json
import os
from typing import Optional

from kplm.checks import check_limits
from kplm.components import Tokenizer
from kplm.errors import ConfigError, DataError, describe
from kplm.hookspecs import hookimpl

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer.json"


class WordPiece(Tokenizer):
    """A BERT WordPiece tokenizer (``keras_hub.tokenizers.WordPieceTokenizer``, tf-text ops).

    Either loads ``vocabulary`` (a ``vocab.txt`` file, or a directory holding one such as a run's
    ``tokenizer/``) or learns one of about ``vocabulary_size`` tokens with ``train()``. The special
    tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` come first.

    Args:
        vocabulary: str or None. Path of a vocabulary to load; None to train one. Defaults to None.
        vocabulary_size: int. Target size when training (a small corpus may give fewer).
            Defaults to 8000.
        lowercase: bool. Lowercase before splitting. Defaults to True.
        strip_accents: bool. Remove accents before splitting. Defaults to True.
        max_training_lines: int or None. Learn from at most this many examples. Defaults to None.

    Example:
    >>> import tensorflow as tf
    >>> tok = WordPiece(vocabulary_size=60)
    >>> vocab = tok.train(tf.data.Dataset.from_tensor_slices(["the cat sat", "the hat"] * 5),
    ...                   progress=False)
    >>> tok.build().detokenize(tok.build()(["the cat"]))[0]
    'the cat'
    """

    name = "wordpiece"
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"vocabulary_size": ">= 6 (the 5 special tokens and at least one learned)",
              "max_training_lines": ">= 1"}

    def __init__(
        self,
        vocabulary: Optional[str] = None,
        vocabulary_size: int = 8000,
        lowercase: bool = True,
        strip_accents: bool = True,
        max_training_lines: Optional[int] = None,
    ):
        check_limits(self.limits, locals(), "tokenizer")
        self.vocabulary = vocabulary
        self.vocabulary_size = vocabulary_size
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.max_training_lines = max_training_lines
        self.tokens = None
        self._layer = None
        if vocabulary is not None:
            self.tokens = _read_vocabulary(vocabulary)

    # --- learning -------------------------------------------------------------------------
    def train(self, texts, progress=True, total_bytes=None):
        """Learn the vocabulary from a ``tf.data.Dataset`` of scalar strings; returns it."""
        import keras_hub
        import tensorflow as tf

        from kplm.progress import ByteProgress
        if self.max_training_lines:
            texts = texts.take(self.max_training_lines)
        texts = texts.batch(1024)
        meter = ByteProgress(total_bytes, enabled=progress)
        if progress:
            def tick(batch):
                n = tf.reduce_sum(tf.strings.length(batch))
                done = tf.py_function(meter.add, [n], Tout=tf.int64)
                with tf.control_dependencies([done]):
                    return tf.identity(batch)
            texts = texts.map(tick)
        tokens = keras_hub.tokenizers.compute_word_piece_vocabulary(
            texts, vocabulary_size=self.vocabulary_size, lowercase=self.lowercase,
            strip_accents=self.strip_accents, reserved_tokens=SPECIAL_TOKENS)
        meter.finish(f"learned {len(tokens)} tokens")
        if len(tokens) <= len(SPECIAL_TOKENS):
            raise DataError("the tokenizer's training data holds no text")
        self.tokens = list(tokens)
        self._layer = None
        return self.tokens

    # --- use --------------------------------------------------------------------------------
    def build(self):
        """The in-graph tokenizer, built once: a ``keras_hub.tokenizers.WordPieceTokenizer``
        bound to no backbone class, the same layer whatever the family trained with it
        (encoder, decoder or encoder-decoder). ``as_layer`` builds one of a given class."""
        if self._layer is None:
            self._layer = self.as_layer()
        return self._layer

    def as_layer(self, layer_class=None):
        """A new in-graph tokenizer over this vocabulary, of ``layer_class``: a
        ``keras_hub.tokenizers.WordPieceTokenizer`` subclass taking ``vocabulary``,
        ``lowercase`` and ``strip_accents`` (e.g. ``kplm.models.encoder.EncoderTokenizer``,
        whose ``backbone_cls`` lets ``keras_hub.tokenizers.Tokenizer.from_preset`` find it in a
        preset of that backbone); ``WordPieceTokenizer`` itself by default. The token ids are
        the same whatever the class: ``[UNK]`` for unknown words, ``##`` continuations.

        Example:
        >>> import keras_hub
        >>> tok = WordPiece(vocabulary_size=60)
        >>> tok.tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s"]
        >>> tok.as_layer()(["the cats dog"])
        [[5, 6, 7, 1]]
        >>> tok.as_layer(keras_hub.models.BertTokenizer)(["the cats dog"])
        [[5, 6, 7, 1]]
        """
        if self.tokens is None:
            raise ConfigError("tokenizer has no vocabulary: set tokenizer.vocabulary or train it")
        present = set(self.tokens)
        missing = [t for t in SPECIAL_TOKENS if t not in present]
        if missing:
            raise ConfigError(f"tokenizer.vocabulary lacks the special tokens {missing}")
        import keras_hub
        if layer_class is None:
            layer_class = keras_hub.tokenizers.WordPieceTokenizer
        return layer_class(vocabulary=self.tokens, lowercase=self.lowercase,
                           strip_accents=self.strip_accents, oov_token="[UNK]")

    @property
    def vocabulary_size_actual(self):
        return len(self.tokens)

    def continuation_mask(self):
        """Booleans over the vocabulary: True for word-piece continuations (``##...``)."""
        return [t.startswith("##") for t in self.tokens]

    # --- persistence ------------------------------------------------------------------------
    def save(self, directory):
        """Write ``vocab.txt`` and ``tokenizer.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        _atomic_write(os.path.join(directory, VOCAB_FILE), "\n".join(self.tokens) + "\n")
        config = {"name": "wordpiece", "lowercase": self.lowercase,
                  "strip_accents": self.strip_accents, "vocabulary_size": len(self.tokens)}
        _atomic_write(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory):
        """Load a tokenizer saved with ``save()`` (e.g. a run's ``tokenizer/``)."""
        path = os.path.join(directory, CONFIG_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError:
            config = {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read the tokenizer's settings: {describe(e)}") \
                from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: expected a JSON object of the tokenizer's settings")
        for key in ("lowercase", "strip_accents"):  # bool("no") would be True
            if not isinstance(config.get(key, True), bool):
                raise ConfigError(f"{path}: {key}: expected true or false, got "
                                  f"{config[key]!r}")
        return cls(vocabulary=directory, lowercase=config.get("lowercase", True),
                   strip_accents=config.get("strip_accents", True),
                   vocabulary_size=config.get("vocabulary_size", 8000))


def _read_vocabulary(path):
    if os.path.isdir(path):
        path = os.path.join(path, VOCAB_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        raise ConfigError(f"tokenizer.vocabulary: {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"tokenizer.vocabulary: cannot read {path}: {describe(e)}") from None
    tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]  # a CRLF file
    while tokens and not tokens[-1]:
        tokens.pop()
    check_tokens(tokens, path)
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ConfigError(f"tokenizer.vocabulary: {path} lacks the special tokens {missing}")
    return tokens


def check_tokens(tokens, path):
    """Refuse (``ConfigError``) a vocabulary whose ids (line numbers) would not be one token
    each: a token listed twice, empty lines included (``tensorflow_text`` refuses it with a
    traceback; a lookup would give one of the two ids)."""
    first = {}
    for number, token in enumerate(tokens, 1):
        if token in first:
            what = "an empty line, as" if not token else f"the token {token!r} is on"
            raise ConfigError(f"tokenizer.vocabulary: {path}:{number}: {what} line "
                              f"{first[token]} too; a vocabulary lists each token once, on a "
                              "line of its own (its id the line number)")
        first[token] = number


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@hookimpl
def register_tokenizers(register):
    register("wordpiece", WordPiece)
