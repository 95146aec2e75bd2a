"""The ``distillation:`` section of a fine-tuning config: train the student on a fine-tuned
teacher's softened outputs (``kplm.models.distiller.TaskDistiller``), on the labelled training
set plus optional unlabelled transfer text (``data.transfer``)."""
import json
import os
from typing import Optional

from kplm.errors import ConfigError, DataError, shown
from kplm.models.inference import batch_predictor


class DistillationOptions:
    """The ``distillation:`` section.

    Args:
        teacher: str. A fine-tuned kplm run directory (``kplm finetune``'s ``run_dir``) with
            the same head (its name, labels and text fields). The student takes its tokenizer.
        temperature: float. Softmax temperature of the teacher's and the student's
            distributions (classification and token classification). Defaults to 2.0.
        gold_weight: float. Weight of the gold-label loss; the distillation loss weighs
            ``1 - gold_weight``. Defaults to 0.5.
        transfer_repeats: int. How many times ``data.transfer`` is read per pass over
            ``data.train`` (the two are interleaved at random). Defaults to 1.
        augment: int. Perturbed copies of each training text added per pass as unlabelled
            transfer rows (single-text heads; ``perturb``: word dropout and n-gram spans, as
            Tang et al. 2019). Defaults to 0.
        project_embeddings: bool. Start a new (randomly initialised) student's token,
            position and segment embeddings from the teacher's, projected onto their leading
            principal directions (``kplm.models.distiller.project_embeddings``). Defaults to
            False.
        select_weights: list of int or None. Start a new (randomly initialised) student from
            the teacher's weights: student block ``i`` from teacher block
            ``select_weights[i]``, every weight cut to the student's shape by keeping evenly
            spaced hidden units, attention heads and feed-forward units (weight selection, Xu
            et al. 2023; ``kplm.models.distiller.select_weights``). Both kplm encoders; the
            student's attention heads as wide as the teacher's, its widths no larger. Replaces
            ``project_embeddings``. Defaults to None (off).
        hidden_weight: float. Weight of a hidden-state term (TinyBERT, Jiao et al. 2020):
            the squared difference between the outputs of the student's embeddings and blocks,
            each through a learned projection to the teacher's width, and those of the
            teacher's embeddings and evenly spaced blocks (``kplm.models.distiller.layer_map``:
            a 2-block student of a 6-block teacher matches blocks 3 and 6). Gives the student
            a target for every token, not only the output. Both must be kplm encoders. Defaults
            to 0 (off).
        replace_words: float. In each perturbed copy (``augment``), the probability that a
            word is replaced by one of its 8 nearest neighbours among the whole-word tokens of
            the teacher's token embeddings (cosine; TinyBERT's augmentation, Jiao et al. 2020,
            which takes them from GloVe): "good" may become "great", "excellent" or "bad", and
            the teacher says what the new sentence means. Teaches the student words the
            labelled set never shows it. Defaults to 0 (off).
        cache: bool. Run the teacher once, before training, over one pass of the training
            rows (labelled, transfer, perturbed copies: the same each pass) and keep its
            outputs with them in ``RUN/teacher_outputs.tfrecord`` (``CachedTeacherOutputs``);
            training reads them back instead of running the teacher in each step. For large
            sets trained over several passes. Classification, pair and regression heads;
            not with ``hidden_weight`` (hidden states are not kept). Defaults to False.
    """

    limits = {"temperature": "> 0", "gold_weight": "[0, 1]", "transfer_repeats": ">= 1",
              "augment": ">= 0", "hidden_weight": ">= 0", "replace_words": "[0, 1]"}

    def __init__(self, teacher: str, temperature: float = 2.0, gold_weight: float = 0.5,
                 transfer_repeats: int = 1, augment: int = 0,
                 project_embeddings: bool = False, hidden_weight: float = 0.0,
                 replace_words: float = 0.0, cache: bool = False,
                 select_weights: Optional[list[int]] = None):
        from kplm.checks import check_limits
        check_limits(self.limits, locals(), "distillation")
        if select_weights is not None:
            from kplm.models.select_layers import check_keep_layers
            check_keep_layers(select_weights, "distillation.select_weights")
            if project_embeddings:
                raise ConfigError("config key 'distillation.select_weights': it starts the "
                                  "embeddings from the teacher's too; set project_embeddings "
                                  "to false")
        self.select_weights = select_weights
        self.teacher, self.temperature = teacher, temperature
        self.gold_weight, self.transfer_repeats = gold_weight, transfer_repeats
        self.project_embeddings, self.augment = project_embeddings, augment
        self.hidden_weight, self.replace_words = hidden_weight, replace_words
        self.cache = cache
        if cache and hidden_weight:
            raise ConfigError("config key 'distillation.cache': the cache keeps the teacher's "
                              "outputs, not its hidden states; set hidden_weight to 0 or cache "
                              "to false")
        if replace_words and not augment:
            raise ConfigError("config key 'distillation.replace_words': words are replaced in "
                              "the perturbed copies; set distillation.augment too")


def check_teacher(options, head_name, head, key="distillation.teacher"):
    """Refuse a teacher that is not a finished fine-tuned run of the same head, before anything
    is written. Cheap: reads its ``head.json`` and checks its weights file. Returns the
    teacher's head config; fills the student head's labels from it when they were not given."""
    from kplm import runs
    from kplm.pretrained import check_weights_file
    from kplm.pretrained.hf_io import is_checkpoint
    path = options.teacher
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ConfigError(f"config key '{key}': {shown(path)} is not a directory (expected a "
                          "fine-tuned kplm run or a Hugging Face *ForSequenceClassification "
                          "directory)")
    if is_checkpoint(path):
        return _check_hf_teacher(path, head_name, head, key)
    head_file = os.path.join(path, runs.HEAD_CONFIG)
    if not os.path.isfile(head_file):
        hint = (" (a pretraining run: distil a pretrained model with the 'distillation' "
                "pretraining objective)"
                if os.path.exists(os.path.join(path, runs.BACKBONE_CONFIG)) else "")
        raise ConfigError(f"config key '{key}': {path} is not a fine-tuned kplm run (no "
                          f"{runs.HEAD_CONFIG}){hint}")
    for name in (runs.MODEL_CONFIG, os.path.join(runs.TOKENIZER, "tokenizer.json")):
        if not os.path.isfile(os.path.join(path, name)):
            raise ConfigError(f"config key '{key}': {path} has no {name}; the teacher's "
                              "fine-tuning did not finish")
    check_weights_file(os.path.join(path, runs.MODEL_WEIGHTS), key)
    try:
        with open(head_file, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"config key '{key}': cannot read {head_file}: {e}") from None
    if not isinstance(saved, dict) or saved.get("name") != head_name:
        raise ConfigError(f"config key '{key}': the teacher {path} fine-tuned head "
                          f"{shown(saved.get('name') if isinstance(saved, dict) else saved)}, "
                          f"the student head '{head_name}'; they must be the same task")
    kind = getattr(head, "distillation", None)
    if kind is None:
        raise ConfigError(f"config key 'distillation': head '{head_name}' cannot be distilled "
                          "(classification, pairs, regression and token classification can)")
    for field in ("text_field", "pair_field", "tokens_field"):
        if hasattr(head, field) and field in saved and (saved[field] is None) != (
                getattr(head, field) is None):
            raise ConfigError(f"config key 'head.{field}': the teacher {path} has "
                              f"{shown(saved[field])}; a student reads the same inputs")
    if "labels" in saved:
        if head.labels is None:
            head.labels = list(saved["labels"])
        elif list(head.labels) != list(saved["labels"]):
            raise ConfigError(f"config key 'head.labels': {head.labels} differ from the "
                              f"teacher's {saved['labels']} ({path}); remove head.labels to "
                              "take the teacher's")
    return saved


class TransferMixture:
    """The training source for distillation: ``train`` (labelled), ``transfer`` (unlabelled:
    its rows get ``head.unlabelled`` as their label; read ``repeats`` times per pass) and
    ``augment`` perturbed copies of the training texts (unlabelled too: Tang et al. 2019's
    transfer set), interleaved at random. For a single-text head the transfer source's own
    text (``texts()``: a text file's lines, a CSV's text column) becomes the head's text
    field; a pair head needs both of its fields in the transfer examples.

    Example (one labelled row and its two perturbed copies):
    >>> import tempfile, os
    >>> from kplm.data.csv_files import CsvFiles
    >>> from kplm.heads.sequence_classification import SequenceClassificationHead
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tsv")
    >>> _ = open(path, "w").write("sentence\\tlabel\\na gripping , funny film\\t1\\n")
    >>> train = CsvFiles(paths=[path], columns={"text": "sentence", "label": "label"})
    >>> mix = TransferMixture(train, None, SequenceClassificationHead(), augment=2)
    >>> sorted(x["label"].numpy() for x in mix.build())
    [b'', b'', b'1']
    """

    def __init__(self, train, transfer, head, repeats=1, seed=0, augment=0, replace=0.0):
        self.train, self.transfer, self.head = train, transfer, head
        self.repeats, self.seed, self.augment = repeats, seed, augment
        #: word replacement in the perturbed copies: its probability, and the neighbour table
        #: (``word_neighbours``) the trainer sets once the teacher is loaded
        self.replace, self.neighbours = replace, None

    def fields(self):
        return [f for f in (getattr(self.head, "text_field", None),
                            getattr(self.head, "pair_field", None)) if f]

    def check(self):
        """A pair head's transfer source gives both text fields (a single-text head reads any
        text source: its ``texts()``); augmented copies are for single-text heads."""
        if self.augment and len(self.fields()) > 1:
            raise ConfigError("config key 'distillation.augment': perturbed copies are made of "
                              "single texts; a pair head distils on data.transfer instead")
        if self.transfer is None:
            return
        if len(self.fields()) == 1:
            self.transfer.check()
            return
        example = next(iter(self.transfer.build().take(1).as_numpy_iterator()), None)
        if example is None:
            raise DataError("data.transfer: no examples")
        missing = [f for f in self.fields() if f not in example]
        if missing:
            raise DataError(f"data.transfer: the data has no field '{missing[0]}' (fields: "
                            f"{', '.join(example)}); the head reads {', '.join(self.fields())}")

    def build(self):
        import tensorflow as tf
        head = self.head
        label_field, fields = head.label_field, self.fields()
        unlabelled = tf.constant(head.unlabelled)
        train = self.train.build().map(
            lambda ex: {**{f: ex[f] for f in fields}, label_field: ex[label_field]})
        streams = [train]
        if self.transfer is not None:
            if len(fields) == 1:
                transfer = self.transfer.texts().map(
                    lambda text: {fields[0]: text, label_field: unlabelled})
            else:
                transfer = self.transfer.build().map(
                    lambda ex: {**{f: ex[f] for f in fields}, label_field: unlabelled})
            streams.append(transfer.repeat(self.repeats) if self.repeats > 1 else transfer)
        if self.augment:
            seed = self.seed
            replacer = None
            if self.replace and self.neighbours is not None:
                replacer = NeighbourTable(*self.neighbours)

            def perturbed(index, ex):
                return {fields[0]: perturb(ex[fields[0]], tf.stack(
                    [tf.cast(seed, tf.int64), index]), replace=self.replace,
                    neighbours=replacer), label_field: unlabelled}
            streams.append(train.repeat(self.augment).enumerate().map(perturbed))
        # Equal weights: the labelled rows run out early in a pass and the perturbed copies
        # fill the rest, clean sentences first. Measured against weights in proportion to the
        # streams' sizes (labelled rows spread over the pass): SST-2 student 0.819 against
        # 0.831, validation distillation loss 0.168 against 0.154 (docs/recipes.md).
        return tf.data.Dataset.sample_from_datasets(streams, seed=self.seed,
                                                    stop_on_empty_dataset=False)


def perturb(text, seed, drop=0.1, ngram=0.25, max_ngram=5, replace=0.0, neighbours=None):
    """A perturbed copy of ``text`` (a scalar string tensor), as Tang et al. 2019 and Jiao et
    al. 2020 augment a transfer set: with ``neighbours`` (a ``NeighbourTable``), each word it
    knows replaced with probability ``replace`` by one of its neighbours; each word dropped
    with probability ``drop``; then, with probability ``ngram``, only a random span of 1 to
    ``max_ngram`` words kept. Stateless: the same ``seed`` (a pair of int64) gives the same
    copy. A text left empty stays as it was.

    Example:
    >>> import tensorflow as tf
    >>> out = perturb(tf.constant("a b c d e f g h"), tf.constant([0, 1], tf.int64))
    >>> set(out.numpy().split()) <= set(b"a b c d e f g h".split())
    True
    >>> table = NeighbourTable(["good"], [["great"]])
    >>> perturb(tf.constant("good"), tf.constant([0, 1], tf.int64), drop=0.0, ngram=0.0,
    ...         replace=1.0, neighbours=table).numpy()
    b'great'
    """
    import tensorflow as tf
    words = tf.strings.split(text)
    n = tf.size(words)
    seeds = tf.random.experimental.stateless_split(seed, 6)
    if neighbours is not None and replace:
        words = neighbours.replace(words, replace, seeds[4], seeds[5])
    kept = tf.boolean_mask(words, tf.random.stateless_uniform([n], seeds[0]) >= drop)
    kept = tf.cond(tf.size(kept) > 0, lambda: kept, lambda: words)
    m = tf.size(kept)
    length = tf.minimum(m, tf.random.stateless_uniform([], seeds[1], 1, max_ngram + 1,
                                                       dtype=tf.int32))
    start = tf.random.stateless_uniform([], seeds[2], 0, m - length + 1, dtype=tf.int32)
    span = tf.random.stateless_uniform([], seeds[3]) < ngram
    kept = tf.cond(span & (m > 0), lambda: kept[start:start + length], lambda: kept)
    return tf.strings.reduce_join(kept, separator=" ")


#: The key of ``x`` that carries cached teacher outputs (``CachedTeacherOutputs``): a head's
#: ``dataset`` passes it on, bucketing leaves it whole, ``TaskDistiller`` reads it instead of
#: running the teacher.
TEACHER_OUTPUTS = "teacher_outputs"
#: The cache's file in the run directory.
CACHE_FILE = "teacher_outputs.tfrecord"


class CachedTeacherOutputs:
    """A training source: the rows of one pass of ``source``, each with the teacher's outputs
    on it (``TEACHER_OUTPUTS``: logits, or a regression score), stored once in a TFRecord file
    and read back on every pass. A head's ``dataset`` carries ``TEACHER_OUTPUTS`` into ``x``,
    and ``TaskDistiller`` uses it instead of running the teacher.

    ``write`` runs the teacher (inference mode, rows sorted by length) and writes
    ``path`` atomically (a ``.tmp`` file, then renamed): a run killed while writing leaves no
    cache, and a resumed run whose cache is complete reads it again.

    Example:
    >>> import tempfile, os, numpy as np, tensorflow as tf
    >>> class Rows:
    ...     def build(self):
    ...         return tf.data.Dataset.from_tensor_slices({"text": ["a", "b c"],
    ...                                                     "label": ["x", ""]})
    >>> class Teacher:  # one logit per word
    ...     def predict_on_batch(self, x):
    ...         return np.asarray(x["padding_mask"], "float32").sum(1, keepdims=True)
    >>> class Head:
    ...     def dataset(self, ds, tokenizer, **kwargs):
    ...         return ds.batch(2).map(lambda b: {"padding_mask": tf.cast(tf.strings.length(
    ...             b["text"]) > 0, "int32")[:, None] + tf.zeros([1, 4], "int32")})
    >>> cache = CachedTeacherOutputs(Rows(), os.path.join(tempfile.mkdtemp(), "t.tfrecord"))
    >>> cache.write(Teacher(), Head(), None, batch_size=2, sequence_length=4)
    2
    >>> [(r["text"], r["teacher_outputs"].tolist()) for r in cache.build().as_numpy_iterator()]
    [(b'a', [4.0]), (b'b c', [4.0])]
    """

    def __init__(self, source, path):
        self.source, self.path = source, path

    def check(self):
        pass

    def write(self, teacher, head, tokenizer, *, batch_size, sequence_length):
        """Compute and store the teacher's outputs, unless a complete cache is there. Returns
        the number of rows written (0 when the cache was reused)."""
        import numpy as np
        import tensorflow as tf

        from kplm.data.bucketing import sorted_by_length
        if os.path.exists(self.path):
            return 0
        rows = self.source.build()
        inputs = head.dataset(rows, tokenizer, batch_size=batch_size,
                              sequence_length=sequence_length, training=False,
                              with_labels=False)
        # the teacher reads rows sorted by length (batches cut to their longest row: perturbed
        # copies are often a few words); its outputs are put back in the rows' order
        found, predict = {}, batch_predictor(teacher)
        for positions, x in sorted_by_length(inputs, sequence_length=sequence_length,
                                             batch_size=batch_size):
            outputs = np.asarray(predict(x), np.float32)
            found.update(zip(positions.tolist(), outputs.reshape(len(positions), -1)))
        temporary, written, outputs = self.path + ".tmp", 0, ()
        with tf.io.TFRecordWriter(temporary) as out:
            for written, raw in enumerate(rows.as_numpy_iterator(), 1):
                outputs = found.pop(written - 1, None)
                if outputs is None:
                    break
                out.write(_example({**raw, TEACHER_OUTPUTS: outputs}))
        if found or outputs is None:  # a source that does not give the same rows twice
            os.remove(temporary)
            raise DataError("data.train: the training rows differ between two reads (a "
                            "source must be deterministic for distillation.cache)")
        os.replace(temporary, self.path)
        return written

    def build(self):
        import tensorflow as tf
        spec = self.source.build().element_spec
        first = next(iter(tf.data.TFRecordDataset(self.path).take(1)))
        width = len(tf.train.Example.FromString(first.numpy()).features.feature[
            TEACHER_OUTPUTS].float_list.value)
        features = {k: tf.io.FixedLenFeature([], _stored_dtype(s.dtype))
                    for k, s in spec.items()}
        features[TEACHER_OUTPUTS] = tf.io.FixedLenFeature([width], tf.float32)

        def parse(record):
            row = tf.io.parse_single_example(record, features)
            return {k: tf.cast(v, spec[k].dtype) if k in spec else v for k, v in row.items()}
        return tf.data.TFRecordDataset(self.path).map(parse)


def _stored_dtype(dtype):
    import tensorflow as tf
    if dtype == tf.string:
        return tf.string
    return tf.float32 if dtype.is_floating else tf.int64


def _example(row):
    """One ``tf.train.Example``, serialized, of a row of scalars and one float vector."""
    import numpy as np
    import tensorflow as tf
    feature = {}
    for key, value in row.items():
        value = np.asarray(value)
        if value.dtype.kind in "SUO":
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[value.item() if isinstance(value.item(), bytes)
                       else str(value.item()).encode()]))
        elif value.dtype.kind == "f":
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(
                value=value.reshape(-1).tolist()))
        else:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(
                value=value.reshape(-1).tolist()))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class NeighbourTable:
    """Words and their neighbours, in graph: ``replace(words, p, seed_a, seed_b)`` swaps each
    word found in ``words`` (as it is, else lower-cased) for one of its neighbours, picked at
    random, with probability ``p``.

    Args:
        words: list of n str.
        neighbours: n lists of k str (``word_neighbours``).
    """

    def __init__(self, words, neighbours):
        import tensorflow as tf
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(words)),
                                                tf.range(len(words), dtype=tf.int64)), -1)
        self.neighbours = tf.constant([list(row) for row in neighbours])

    def replace(self, words, p, seed_a, seed_b):
        import tensorflow as tf
        row = self.table.lookup(words)
        row = tf.where(row < 0, self.table.lookup(tf.strings.lower(words)), row)
        n = tf.size(words)
        pick = tf.random.stateless_uniform([n], seed_b, 0, tf.shape(self.neighbours)[1],
                                           dtype=tf.int32)
        swap = (row >= 0) & (tf.random.stateless_uniform([n], seed_a) < p)
        found = tf.gather_nd(self.neighbours, tf.stack(
            [tf.cast(tf.maximum(row, 0), tf.int32), pick], axis=1))
        return tf.where(swap, found, words)


def word_neighbours(tokens, embeddings, k=8):
    """``(words, neighbours)``: the whole-word tokens of a vocabulary (WordPiece words without
    ``##``, SentencePiece pieces that start a word, letters only, two or more of them) and, for
    each, its ``k`` nearest other words by the cosine of their centred token embeddings.

    Example (a toy vocabulary whose embeddings pair "good" with "great"):
    >>> import numpy as np
    >>> tokens = ["[PAD]", "good", "great", "bad", "awful", "##s"]
    >>> e = np.array([[0, 0], [1, .1], [1, .2], [-1, .1], [-1, .2], [0, 1]], "float32")
    >>> words, near = word_neighbours(tokens, e, k=1)
    >>> dict(zip(words, (n[0] for n in near)))
    {'good': 'great', 'great': 'good', 'bad': 'awful', 'awful': 'bad'}
    """
    import numpy as np
    marker = "\u2581"
    sentencepiece = sum(t.startswith(marker) for t in tokens) > len(tokens) // 10
    rows, words = [], []
    for i, token in enumerate(tokens):
        word = token[1:] if sentencepiece and token.startswith(marker) else (
            None if sentencepiece else token)
        if word is not None and len(word) >= 2 and word.isalpha():
            rows.append(i)
            words.append(word)
    if len(words) <= k:
        return [], []
    import tensorflow as tf
    vectors = np.asarray(embeddings, np.float32)[rows]
    vectors = vectors - vectors.mean(axis=0)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    table = tf.constant(vectors)
    near = []
    for start in range(0, len(words), 4096):  # [4096, words] scores at a time
        scores = tf.matmul(table[start:start + 4096], table, transpose_b=True)
        top = tf.math.top_k(scores, k + 1).indices.numpy()
        for i, row in enumerate(top, start):  # the word itself (score 1) left out
            near.append([words[j] for j in row if j != i][:k])
    return words, near


#: Hugging Face ``model_type`` whose ``*ForSequenceClassification`` head kplm reads: BERT's
#: (the tanh pooler over ``[CLS]``, dropout, one ``classifier`` layer), which MiniLM and the
#: other BERT-architecture checkpoints share. RoBERTa's and DistilBERT's heads differ.
HF_TEACHER_TYPES = ("bert",)
_GENERIC_LABEL = "LABEL_"


def _check_hf_teacher(path, head_name, head, key):
    """``check_teacher`` for a Hugging Face ``*ForSequenceClassification`` directory: a
    classification teacher (its ``id2label`` the labels; generic ``LABEL_i`` names are taken
    in the order of the student's labels) or, with one label, a regression teacher."""
    from kplm.pretrained import check_checkpoint
    from kplm.pretrained.huggingface import read_config
    where = os.path.join(path, "config.json")
    _, config = read_config(path)
    if config.get("model_type") not in HF_TEACHER_TYPES:
        raise ConfigError(f"config key '{key}': {where}: a {shown(config.get('model_type'))} "
                          "classifier's head is not read; kplm reads BERT-architecture "
                          "*ForSequenceClassification teachers (fine-tune this one with kplm "
                          "first)")
    if not any(str(a).endswith("ForSequenceClassification")
               for a in config.get("architectures") or []):
        raise ConfigError(f"config key '{key}': {where} is not a *ForSequenceClassification "
                          "model (its architectures); a teacher must be fine-tuned for the task")
    id2label = config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    except (KeyError, TypeError):
        raise ConfigError(f"config key '{key}': {where}: id2label is not numbered 0..n-1") from None
    regression = config.get("problem_type") == "regression" or len(labels) == 1
    if head_name == "regression" and not regression:
        raise ConfigError(f"config key '{key}': {where} classifies into {len(labels)} labels; "
                          "a regression student needs a one-output teacher")
    if head_name != "regression" and (head_name != "sequence_classification" or regression):
        raise ConfigError(f"config key '{key}': a Hugging Face teacher teaches "
                          "sequence_classification or regression students, not "
                          f"'{head_name}' ({where} is a "
                          f"{'regression' if regression else 'classification'} model)")
    check_checkpoint(path, key)
    saved = {"name": head_name}
    if not regression:
        if all(label == f"{_GENERIC_LABEL}{i}" for i, label in enumerate(labels)):
            if head.labels is not None and len(head.labels) != len(labels):
                raise ConfigError(f"config key 'head.labels': {len(head.labels)} labels, the "
                                  f"teacher {path} has {len(labels)}")
            labels = list(head.labels) if head.labels is not None else None
        if labels is not None:
            if head.labels is None:
                head.labels = list(labels)
            elif list(head.labels) != labels:
                raise ConfigError(f"config key 'head.labels': {head.labels} differ from the "
                                  f"teacher's {labels} ({where} id2label)")
            saved["labels"] = labels
    return saved


def check_student_start(spec, options):
    """Config-time checks of how a student starts from its teacher (``project_embeddings``,
    ``select_weights``): a new kplm encoder, shaped so the teacher's weights fit. Reads the
    teacher's configuration files only."""
    if not (options.project_embeddings or options.select_weights is not None):
        return
    from kplm.training.runtime import is_pretrained
    key = ("distillation.select_weights" if options.select_weights is not None
           else "distillation.project_embeddings")
    if spec.init_from is not None or is_pretrained(spec.backbone_cls):
        raise ConfigError(f"config key '{key}': the student already starts from a checkpoint; "
                          "it initialises a new backbone only")
    if options.select_weights is None:
        return
    from kplm.models.distiller import selection_problem
    from kplm.models.encoder import Encoder
    if spec.backbone_cls is not Encoder:
        raise ConfigError(f"config key '{key}': the student's backbone "
                          f"'{spec.backbone['name']}' is not kplm's encoder")
    student = spec.backbone  # its defaults filled in by check_section
    teacher = teacher_backbone_config(options.teacher)
    if teacher is None:
        raise ConfigError(f"config key '{key}': the teacher {options.teacher} is not a kplm "
                          "encoder; weights are selected from one")
    problem = selection_problem(student, teacher, options.select_weights)
    if problem is not None:
        raise ConfigError(f"config key '{problem[0]}': {problem[1]}")


def teacher_backbone_config(path):
    """The ``Encoder`` arguments of a teacher (a kplm run's ``model.json``, a Hugging Face
    directory's ``config.json``), or None when its backbone is not a kplm ``Encoder``."""
    from kplm.pretrained.hf_io import is_checkpoint
    if is_checkpoint(path):
        from kplm.pretrained.huggingface import (backbone_arguments, backbone_family,
                                                 read_config)
        family, config = read_config(path)
        if backbone_family(family) != "encoder":
            return None
        return backbone_arguments(family, config, path)
    from kplm import runs
    saved = runs.read_json(os.path.join(path, runs.MODEL_CONFIG), "a saved model config")
    model = saved.get("config") if isinstance(saved, dict) else None
    backbone = model.get("backbone") if isinstance(model, dict) else None
    if not isinstance(backbone, dict) or backbone.get("class_name") != "Encoder" or (
            not isinstance(backbone.get("config"), dict)):
        return None
    return backbone["config"]


def teacher_tokenizer(path):
    """The tokenizer a teacher reads with (and its student takes): a kplm run's, or a Hugging
    Face directory's."""
    from kplm.pretrained.hf_io import is_checkpoint
    if is_checkpoint(path):
        from kplm.pretrained.huggingface import load_tokenizer
        return load_tokenizer(path)
    from kplm import runs
    return runs.load_tokenizer(path)


class _HuggingFaceTeacher:
    """A Hugging Face ``BertForSequenceClassification`` as a kplm ``SequenceClassifier`` (or
    ``SequenceRegressor``): the encoder and pooler imported, the ``classifier`` layer copied."""

    def __init__(self, path):
        import numpy as np

        from kplm.models.classifier import SequenceClassifier, SequenceRegressor
        from kplm.pretrained.hf_io import load_state_dict
        from kplm.pretrained.huggingface import load_backbone, load_tokenizer, read_config
        _, config = read_config(path)
        self.tokenizer = load_tokenizer(path)
        backbone = load_backbone(path)
        state = load_state_dict(path)
        if "classifier.weight" not in state:
            raise DataError(f"{path}: no classifier.weight (not a *ForSequenceClassification "
                            "checkpoint)")
        kernel = np.asarray(state["classifier.weight"], np.float32).T
        bias = np.asarray(state.get("classifier.bias", np.zeros(kernel.shape[1])), np.float32)
        if kernel.shape[1] == 1:
            self.model = SequenceRegressor(backbone, dropout=0.0, pooling="pooler")
        else:
            self.model = SequenceClassifier(backbone, num_classes=kernel.shape[1], dropout=0.0,
                                            pooling="pooler")
        dense = self.model.output_dense
        if tuple(dense.kernel.shape) != kernel.shape:
            raise DataError(f"{path}: classifier.weight has shape {kernel.shape[::-1]}, which "
                            f"does not fit the hidden size {dense.kernel.shape[0]}")
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)


def load_teacher(path, tokenizer):
    """The teacher's task model; refuses a student tokenizer other than the teacher's."""
    from kplm.pretrained.hf_io import is_checkpoint
    from kplm.runs import FinetunedRun
    teacher = _HuggingFaceTeacher(path) if is_checkpoint(path) else FinetunedRun(path)
    if list(teacher.tokenizer.tokens) != list(tokenizer.tokens):
        raise ConfigError(f"config key 'distillation.teacher': the student's tokenizer differs "
                          f"from the teacher's ({path}/tokenizer): the teacher reads the "
                          "student's token ids; leave out 'tokenizer' (the student takes the "
                          "teacher's)")
    return teacher
