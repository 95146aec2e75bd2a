"""SentencePiece tokenizers (T5, XLM-R, BART style): learned from a data source or read from a
``.model`` file, saved in a run directory, run in-graph."""
import json
import os
from typing import Literal, Optional

from kplm.checks import check_limits
from kplm.components import Tokenizer
from kplm.errors import ConfigError, DataError, describe
from kplm.hookspecs import hookimpl

MODEL_FILE = "sentencepiece.model"
CONFIG_FILE = "tokenizer.json"
#: Model files looked for, in order, in a ``vocabulary`` directory (kplm's, T5's, XLM-R's).
MODEL_FILES = (MODEL_FILE, "spiece.model", "sentencepiece.bpe.model")
#: Pieces and ids of a learned model: SentencePiece's own pad/unk/bos/eos, then ``<mask>``.
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
#: Sentences longer than this many bytes are split by SentencePiece's trainer, not skipped.
MAX_SENTENCE_BYTES = 1 << 16
#: The trainer keeps at most this many sentences in memory (a uniform sample of the stream).
MAX_SENTENCES_IN_MEMORY = 1_000_000


def sentinel(i):
    """The ``i``-th T5 sentinel piece, ``<extra_id_i>``."""
    return f"<extra_id_{i}>"


class SentencePiece(Tokenizer):
    """A SentencePiece tokenizer (``keras_hub.tokenizers.SentencePieceTokenizer``, tf-text ops).

    Learned with ``train()`` the ids are fixed: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3,
    ``<mask>`` 4, then the sentinels ``<extra_id_0>``, ``<extra_id_1>``, ... that span
    corruption replaces noise spans with (``<mask>`` and the sentinels are user-defined pieces:
    the same text in the input maps to them). Roles: ``cls`` is ``<s>`` (also the decoder start
    token), ``sep`` is ``</s>``. Pieces do not mark word continuations with ``##``, so the
    word-aligned heads refuse this tokenizer.

    ``vocabulary`` may also be the ``spiece.model`` / ``sentencepiece.bpe.model`` of a local
    T5 or XLM-R checkpoint (or its directory): its pieces keep their ids, and the special pieces
    it lacks are appended after them (missing sentinels first, ``<extra_id_0>`` last, which
    gives Hugging Face T5's sentinel ids).

    Args:
        vocabulary: str or None. A ``.model`` file, or a directory holding one (a run's
            ``tokenizer/``, a Hugging Face T5/XLM-R directory); None to train one.
            Defaults to None.
        vocabulary_size: int. Size when training, special pieces included (a small corpus may
            give fewer). Defaults to 8000.
        model_type: ``"unigram"`` or ``"bpe"``. Defaults to ``"unigram"``.
        lowercase: bool. Lowercase (NFKC case folding) when training; a loaded model keeps its
            own normalization. Defaults to False.
        num_sentinels: int. Sentinel pieces ``<extra_id_0>``... (T5 uses 100). Defaults to 100.
        max_training_lines: int or None. Learn from at most this many examples. Defaults to None.
        id_layout: ``"sentencepiece"``, ``"xlm_roberta"`` or ``"camembert"``. How a loaded
            ``vocabulary``'s piece ids become model ids. ``"sentencepiece"``: unchanged. The
            other two are fairseq's dictionaries, as the checkpoints of XLM-R and CamemBERT
            (and Hugging Face's tokenizers for them) number tokens: ``<s> <pad> </s> <unk>``
            first (CamemBERT: ``<s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED``), the
            SentencePiece pieces after them shifted (by 1; CamemBERT by 4), SentencePiece's
            ``<unk>`` as the ``<unk>`` above, and ``<mask>`` last. Roles: ``cls`` ``<s>``, ``sep``
            ``</s>``; pairs are joined with ``</s></s>``. Defaults to ``"sentencepiece"``.

    Example:
    >>> import tensorflow as tf
    >>> tok = SentencePiece(vocabulary_size=40, num_sentinels=2)
    >>> _ = tok.train(tf.data.Dataset.from_tensor_slices(["the cat sat", "the hat"] * 5),
    ...               progress=False)
    >>> tok.tokens[:7], tok.sentinel_ids
    (['<pad>', '<unk>', '<s>', '</s>', '<mask>', '<extra_id_0>', '<extra_id_1>'], [5, 6])
    >>> tok.build().detokenize(tok.build()(["the cat"]))[0]
    'the cat'
    """

    name = "sentencepiece"
    continuation_prefix = None  # word starts are marked by a leading "▁" instead
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"vocabulary_size": ">= 1", "num_sentinels": ">= 0", "max_training_lines": ">= 1"}

    def __init__(
        self,
        vocabulary: Optional[str] = None,
        vocabulary_size: int = 8000,
        model_type: Literal["unigram", "bpe"] = "unigram",
        lowercase: bool = False,
        num_sentinels: int = 100,
        max_training_lines: Optional[int] = None,
        id_layout: Literal["sentencepiece", "xlm_roberta", "camembert"] = "sentencepiece",
    ):
        check_limits(self.limits, locals(), "tokenizer")
        if id_layout != "sentencepiece" and vocabulary is None:
            raise ConfigError(f"config key 'tokenizer.id_layout': {id_layout} numbers the pieces "
                              "of an existing model; set tokenizer.vocabulary to its "
                              "sentencepiece.bpe.model")
        self.id_layout = id_layout
        if id_layout != "sentencepiece":
            num_sentinels = 0  # fairseq dictionaries have none
        if vocabulary is None and vocabulary_size < len(SPECIAL_TOKENS) + num_sentinels + 20:
            raise ConfigError(f"tokenizer.vocabulary_size must leave room for learned pieces "
                              f"beyond the {len(SPECIAL_TOKENS) + num_sentinels} special ones, "
                              f"got {vocabulary_size}")
        self.vocabulary = vocabulary
        self.vocabulary_size = vocabulary_size
        self.model_type = model_type
        self.lowercase = lowercase
        self.num_sentinels = num_sentinels
        self.max_training_lines = max_training_lines
        self.special = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>",
                        "mask": "<mask>"}
        self.tokens, self.proto, self._ids, self._layer = None, None, None, None
        if vocabulary is not None:
            if id_layout == "sentencepiece":
                self._set_proto(_read_model(vocabulary), complete=True)
            else:
                self._set_fairseq(_read_model(vocabulary))

    # --- learning -------------------------------------------------------------------------
    def train(self, texts, progress=True, total_bytes=None):
        """Learn the model from a ``tf.data.Dataset`` of scalar strings (streamed to the
        SentencePiece trainer, which keeps a uniform sample of at most a million sentences);
        returns the pieces."""
        import io

        import sentencepiece as spm

        from kplm.progress import ByteProgress

        if self.max_training_lines:
            texts = texts.take(self.max_training_lines)
        meter = ByteProgress(total_bytes, enabled=progress)

        def sentences():
            for batch in texts.batch(1024).as_numpy_iterator():
                meter.add(sum(len(s) for s in batch))
                yield from batch

        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=writer,
                vocab_size=self.vocabulary_size, model_type=self.model_type,
                normalization_rule_name="nmt_nfkc_cf" if self.lowercase else "nmt_nfkc",
                pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>",
                bos_piece="<s>", eos_piece="</s>",
                user_defined_symbols=["<mask>"] + [sentinel(i) for i in range(self.num_sentinels)],
                hard_vocab_limit=False, max_sentence_length=MAX_SENTENCE_BYTES,
                input_sentence_size=MAX_SENTENCES_IN_MEMORY, shuffle_input_sentence=True,
                minloglevel=2)
        except RuntimeError as e:  # e.g. "Internal: ... sentences is empty"
            raise DataError(f"the tokenizer's training data gave no model: {describe(e)}") from None
        self._set_proto(writer.getvalue(), complete=False)
        meter.finish(f"learned {len(self.tokens)} pieces")
        return self.tokens

    # --- use --------------------------------------------------------------------------------
    def build(self):
        """The in-graph tokenizer (a ``keras_hub.tokenizers.SentencePieceTokenizer``), built
        once."""
        if self.tokens is None:
            raise ConfigError("tokenizer has no vocabulary: set tokenizer.vocabulary or train it")
        if self._layer is None:
            if self.id_layout == "sentencepiece":
                import keras_hub
                self._layer = keras_hub.tokenizers.SentencePieceTokenizer(proto=self.proto)
            else:
                from kplm.tokenizers.fairseq_layer import FairseqSentencePiece
                self._layer = FairseqSentencePiece(proto=self.proto, **self._fairseq)
        return self._layer

    @property
    def pair_separator(self):
        """``[CLS] a [SEP] b [SEP]``; a fairseq model (XLM-R, CamemBERT) was trained with
        ``<s> a </s></s> b </s>``."""
        return ("sep",) if self.id_layout == "sentencepiece" else ("sep", "sep")

    def token_to_id(self, token):
        return self._ids[token]

    @property
    def sentinel_ids(self):
        """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in that order."""
        return [self._ids[sentinel(i)] for i in range(self.num_sentinels)]

    @property
    def special_token_ids(self):
        return sorted({self._ids[t] for t in self.special.values()} | set(self.sentinel_ids))

    def continuation_mask(self):
        """True for pieces that continue a word (no leading ``▁``; special pieces excluded)."""
        specials = set(self.special.values()) | {sentinel(i) for i in range(self.num_sentinels)}
        return [not (t.startswith("\u2581") or t in specials) for t in self.tokens]

    # --- persistence ------------------------------------------------------------------------
    def save(self, directory):
        """Write ``sentencepiece.model`` and ``tokenizer.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, MODEL_FILE)
        with open(path + ".tmp", "wb") as f:
            f.write(self.proto)
        os.replace(path + ".tmp", path)
        config = {"name": "sentencepiece", "model_type": self.model_type,
                  "lowercase": self.lowercase, "num_sentinels": self.num_sentinels,
                  "vocabulary_size": len(self.tokens), "id_layout": self.id_layout}
        with open(os.path.join(directory, CONFIG_FILE) + ".tmp", "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2) + "\n")
        os.replace(os.path.join(directory, CONFIG_FILE) + ".tmp",
                   os.path.join(directory, CONFIG_FILE))

    @classmethod
    def load(cls, directory):
        """Load a tokenizer saved with ``save()`` (e.g. a run's ``tokenizer/``)."""
        try:
            with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError:
            config = {}
        return cls(vocabulary=directory, model_type=config.get("model_type", "unigram"),
                   lowercase=config.get("lowercase", False),
                   num_sentinels=config.get("num_sentinels", 100),
                   vocabulary_size=config.get("vocabulary_size", 8000),
                   id_layout=config.get("id_layout", "sentencepiece"))

    # --- internals --------------------------------------------------------------------------
    def _set_proto(self, proto, complete):
        """Use the serialized model ``proto``; with ``complete``, append the special pieces it
        lacks (a model from another toolkit) and take the roles from its trainer spec."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        model = pb.ModelProto()
        model.ParseFromString(proto)
        pieces = [p.piece for p in model.pieces]
        if complete:
            spec = model.trainer_spec
            for role, index, default in (("cls", spec.bos_id, "<s>"), ("sep", spec.eos_id, "</s>"),
                                         ("pad", spec.pad_id, "<pad>"),
                                         ("unk", spec.unk_id, "<unk>")):
                self.special[role] = pieces[index] if 0 <= index < len(pieces) else default
            present = set(pieces)
            wanted = [(sentinel(i), pb.ModelProto.SentencePiece.USER_DEFINED)
                      for i in reversed(range(self.num_sentinels))]
            wanted += [(self.special[r], pb.ModelProto.SentencePiece.CONTROL)
                       for r in ("cls", "sep", "pad")]
            wanted += [(self.special["mask"], pb.ModelProto.SentencePiece.USER_DEFINED)]
            for piece, kind in wanted:
                if piece not in present:
                    present.add(piece)
                    model.pieces.add(piece=piece, score=0.0, type=kind)
            proto = model.SerializeToString()
            pieces = [p.piece for p in model.pieces]
        self.proto, self.tokens, self._layer = proto, pieces, None
        self._ids = {piece: i for i, piece in enumerate(pieces)}


    def _set_fairseq(self, proto):
        """Number the pieces of ``proto`` (left unchanged) as ``id_layout``'s fairseq
        dictionary (``kplm.tokenizers.fairseq``)."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        from kplm.tokenizers import fairseq
        model = pb.ModelProto()
        model.ParseFromString(proto)
        pieces = [p.piece for p in model.pieces]
        _, skip = fairseq.LAYOUTS[self.id_layout]
        unk = model.trainer_spec.unk_id
        if not 0 <= unk < skip:
            raise ConfigError(f"tokenizer.vocabulary: its <unk> is piece {unk}; the "
                              f"{self.id_layout} layout expects one of the first {skip}")
        self.tokens = fairseq.vocabulary(pieces, self.id_layout)
        self.proto, self._layer = proto, None
        self._ids = {}
        for i, piece in enumerate(self.tokens):
            self._ids.setdefault(piece, i)
        self.special = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>",
                        "mask": "<mask>"}
        self._fairseq = fairseq.id_mapping(self.id_layout, unk, len(self.tokens))


def _read_model(path):
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in MODEL_FILES
                 if os.path.exists(os.path.join(path, f))]
        if not found:
            raise ConfigError(f"tokenizer.vocabulary: {path} holds none of "
                              f"{', '.join(MODEL_FILES)}")
        path = found[0]
    try:
        with open(path, "rb") as f:
            proto = f.read()
    except FileNotFoundError:
        raise ConfigError(f"tokenizer.vocabulary: {path} not found") from None
    except OSError as e:
        raise ConfigError(f"tokenizer.vocabulary: cannot read {path}: {describe(e)}") from None
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb
    try:
        if not pb.ModelProto.FromString(proto).pieces:
            raise DecodeError("no pieces")
    except DecodeError as e:
        raise ConfigError(f"tokenizer.vocabulary: {path} is not a SentencePiece model: {describe(e)}") \
            from None
    return proto


@hookimpl
def register_tokenizers(register):
    register("sentencepiece", SentencePiece)
