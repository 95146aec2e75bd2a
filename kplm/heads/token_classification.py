"""The ``token_classification`` head: a tag per word (named entities in IOB2, ...)."""
import re
from typing import Optional

from kplm.checks import check_limits
from kplm.components import Head
from kplm.errors import DataError, listed
from kplm.hookspecs import hookimpl
from kplm.models.inference import batch_predictor

IGNORED = -1  # label of the pieces that carry no tag: later pieces of a word, [CLS], [SEP], padding


class TokenClassificationHead(Head):
    """Tags every word of a sentence (e.g. NER with IOB2 tags ``B-TYPE``/``I-TYPE``/``O``).

    Each word is split into WordPieces and the sentence framed as ``[CLS] pieces [SEP]``,
    truncated to ``sequence_length`` (words cut off are predicted ``O``, and counted:
    ``evaluate``'s ``truncated``, ``predict``'s ``truncated_words``). A word's tag is learned
    and predicted on its first piece only; the other pieces weigh 0 in the loss and metrics. The
    training metric ``accuracy`` is over those first pieces; ``evaluate`` adds entity-level
    precision, recall and F1 exactly as conlleval (``kplm.ner_metrics``). ``predict`` takes
    ``{"text": line}``, splits the line on whitespace and returns the tags and the entities with
    character offsets into the line.

    Args:
        labels: list of str or None. The tag set, in id order; None learns it (sorted) from the
            training data. Defaults to None.
        tokens_field: str. Example field with the words (a string vector). Defaults to
            ``"tokens"``.
        tags_field: str. Example field with the tags (a string vector). Defaults to ``"tags"``.
        dropout: float. Dropout before the output layer. Defaults to 0.1.
        shuffle_buffer: int. Sentences held for shuffling. Defaults to 10000.

    Example:
    >>> head = TokenClassificationHead(labels=["B-PER", "I-PER", "O"])
    >>> head.entities("Ada  Lovelace wrote", ["B-PER", "I-PER", "O"])
    [{'text': 'Ada  Lovelace', 'type': 'PER', 'start': 0, 'end': 13}]
    """

    metric = "accuracy"
    length_bucketing = True
    metric_mode = "max"
    distillation = "tokens"
    model_module = "kplm.models.token_classifier"
    #: The backbone families it fine-tunes (a config pairing it with another is refused).
    families = ("encoder",)
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"dropout": "[0, 1)", "shuffle_buffer": ">= 0"}
    text_field = "text"  # what `kplm predict` reads: one sentence per line
    pair_field = None

    def __init__(self, labels: Optional[list[str]] = None, tokens_field: str = "tokens",
                 tags_field: str = "tags", dropout: float = 0.1, shuffle_buffer: int = 10000):
        check_limits(self.limits, locals(), "head")
        self.labels = self.checked_labels(labels)
        self.tokens_field, self.tags_field = tokens_field, tags_field
        self.dropout, self.shuffle_buffer = dropout, shuffle_buffer

    def get_config(self):
        return {"labels": self.labels, "tokens_field": self.tokens_field,
                "tags_field": self.tags_field, "dropout": self.dropout,
                "shuffle_buffer": self.shuffle_buffer}

    # --- labels -----------------------------------------------------------------------------
    def _tag_sequences(self, source):
        for _, example in self._located(source):
            yield [t.decode("utf-8") for t in example[self.tags_field]]

    def _located(self, source):
        """``source.located()``, each example checked for the head's fields."""
        for place, example in source.located():
            self.require_fields(example, "tokens_field", "tags_field")
            yield place, example

    def prepare(self, source):
        """Learn the tag set from a data source (one streaming pass) unless it was given."""
        seen = {}  # tag -> where first seen
        for place, example in self._located(source):
            for tag in example[self.tags_field]:
                seen.setdefault(tag.decode("utf-8"), place)
        if self.labels is None:
            if len(seen) < 2:
                raise DataError(f"the training data has {len(seen)} distinct tag(s); "
                                "token classification needs at least 2")
            from kplm.ner_metrics import is_entity_tag
            other = sorted(t for t in seen if t != "O" and not is_entity_tag(t))
            if other:  # conlleval reads every other tag as O: entities would go unscored
                raise DataError(f"{seen[other[0]]}: tags [{listed(map(repr, other), 80)}] are "
                                "not IOB2 (O, B-TYPE, I-TYPE); convert the tags (BIOES: S- to "
                                "B-, E- to I-)")
            self.labels = sorted(seen)
        unknown = sorted(set(seen) - set(self.labels))
        if unknown:
            raise DataError(f"{seen[unknown[0]]}: tags [{listed(map(repr, unknown), 80)}] are "
                            f"not in head.labels [{listed(map(repr, self.labels), 80)}]")
        return self.labels

    # --- data -------------------------------------------------------------------------------
    def encode(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
               training=False, with_labels=True):
        """Batches of dicts: ``token_ids``, ``segment_ids``, ``padding_mask``, ``word_ids``
        (the word a first piece starts, else -1), ``num_words`` and, with labels, ``labels``
        (the tag id on first pieces, else -1)."""
        import tensorflow as tf

        encode = self._batch_encoder(tokenizer, sequence_length, with_labels)
        fields = [self.tokens_field] + ([self.tags_field] if with_labels else [])
        ds = source_ds.map(lambda ex: {f: ex[f] for f in fields})
        if training:
            ds = ds.shuffle(self.shuffle_buffer, seed=seed).repeat()
        ds = ds.ragged_batch(batch_size, drop_remainder=training)
        return ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def _batch_encoder(self, tokenizer, sequence_length, with_labels):
        """A function of a batch ``{tokens_field: ragged [batch, (words)]}`` (and the tags,
        with labels) -> the dict ``encode`` batches hold."""
        import keras_hub
        import tensorflow as tf

        layer = tokenizer.build()
        tokenizer.require_word_pieces("the token_classification head")
        cls_id, sep_id, pad_id, unk_id = (tokenizer.special_id(r)
                                          for r in ("cls", "sep", "pad", "unk"))
        packers = {name: keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length, start_value=start, end_value=end, pad_value=pad)
            for name, (start, end, pad) in {"token_ids": (cls_id, sep_id, pad_id),
                                            "ignored": (IGNORED, IGNORED, IGNORED)}.items()}
        table = None
        if with_labels:
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(self.labels), tf.range(len(self.labels), dtype=tf.int32)), IGNORED)

        def encode(batch):
            words = batch[self.tokens_field]  # ragged [batch, (words)]
            pieces = layer(words.flat_values)  # ragged [all words, (pieces)]
            # a word the tokenizer drops entirely (control characters only) becomes [UNK]
            empty = tf.cast(pieces.row_lengths() == 0, tf.int64)
            pieces = tf.concat([pieces, tf.RaggedTensor.from_row_lengths(
                tf.fill([tf.reduce_sum(empty)], tf.cast(unk_id, pieces.dtype)), empty)], axis=1)
            first = tf.ragged.range(pieces.row_lengths()).flat_values == 0
            word_of_piece = tf.gather(tf.ragged.range(words.row_lengths()).flat_values,
                                      pieces.value_rowids())

            def per_sentence(values):  # piece-level flat values -> ragged [batch, (pieces)]
                return tf.RaggedTensor.from_nested_row_lengths(
                    values, [words.row_lengths(), pieces.row_lengths()]).merge_dims(1, 2)

            token_ids = packers["token_ids"](per_sentence(pieces.flat_values))
            ignored = packers["ignored"]
            x = {"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                 "padding_mask": tf.cast(token_ids != pad_id, tf.int32),
                 "word_ids": ignored(per_sentence(
                     tf.where(first, tf.cast(word_of_piece, tf.int32), IGNORED))),
                 "num_words": tf.cast(words.row_lengths(), tf.int32)}
            if with_labels:
                word_labels = tf.gather(table.lookup(batch[self.tags_field].flat_values),
                                        pieces.value_rowids())
                x["labels"] = ignored(per_sentence(tf.where(first, word_labels, IGNORED)))
            return x
        return encode

    def _cached_encoder(self, tokenizer, sequence_length):
        """``_batch_encoder`` (no labels) as a ``tf.function`` kept on the head for this
        tokenizer and length, so that repeated ``predict`` calls reuse its traced graph instead
        of tracing it into a new ``tf.data`` pipeline each call."""
        import tensorflow as tf
        words = tf.RaggedTensorSpec([None, None], tf.string, ragged_rank=1)
        return self.traced("encoder", tokenizer, sequence_length,
                           lambda: self._batch_encoder(tokenizer, sequence_length,
                                                       with_labels=False),
                           input_signature=[{self.tokens_field: words}])

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True, with_labels=True):
        """``(x, labels, sample_weight)`` batches (``x`` only when ``with_labels`` is False);
        the weight is 1 on words' first pieces, 0 elsewhere."""
        import tensorflow as tf

        def split(batch):
            x = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
            if not with_labels:
                return x
            labels = batch["labels"]
            return x, tf.maximum(labels, 0), tf.cast(labels != IGNORED, tf.float32)

        return self.encode(source_ds, tokenizer, batch_size=batch_size,
                           sequence_length=sequence_length, seed=seed, training=training,
                           with_labels=with_labels).map(split)

    # --- model ------------------------------------------------------------------------------
    def build_model(self, backbone):
        from kplm.models.token_classifier import TokenClassifier
        return TokenClassifier(backbone, num_labels=len(self.labels), dropout=self.dropout)

    def _predict_tags(self, model, batches, sequence_length, batch_size):
        """Per sentence, in input order, the predicted tag of every word (``O`` for words
        truncated away), and the number of words truncated away. Rows are run sorted by token
        count, batches cut to their longest."""
        import numpy as np

        from kplm.data.bucketing import sorted_by_length
        out, cut, predict = {}, {}, batch_predictor(model)
        for rows, batch in sorted_by_length(batches, sequence_length=sequence_length,
                                            batch_size=batch_size):
            x = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
            predicted = np.argmax(predict(x), axis=-1)
            out.update(zip(rows.tolist(), self.postprocess(predicted, batch["word_ids"],
                                                           batch["num_words"])))
            kept = (np.asarray(batch["word_ids"]) >= 0).sum(axis=-1)  # first pieces kept
            cut.update(zip(rows.tolist(), (np.asarray(batch["num_words"]) - kept).tolist()))
        return [out[i] for i in range(len(out))], [cut[i] for i in range(len(cut))]

    def postprocess(self, predicted, word_ids, num_words):
        """Tag ids per piece ``[n, length]`` -> a list of word tags per sentence."""
        import numpy as np
        sentences = []
        rows = zip(np.asarray(predicted), np.asarray(word_ids), np.asarray(num_words))
        for ids, words, n in rows:
            tags = ["O"] * int(n)
            for tag_id, word in zip(ids, words):
                if word >= 0:
                    tags[word] = self.labels[int(tag_id)]
            sentences.append(tags)
        return sentences

    def evaluate(self, model, source, tokenizer, *, batch_size, sequence_length):
        """Entity precision/recall/F1 (conlleval), token accuracy, over all of ``source``.

        Gold ``B-``/``I-`` tags the run was not trained on are scored as conlleval scores them
        (their entities are missed) and listed under ``unseen_tags``."""
        from kplm.ner_metrics import entity_scores, is_entity_tag
        placed = [(place, [t.decode("utf-8") for t in example[self.tags_field]])
                  for place, example in self._located(source)]
        gold = [tags for _, tags in placed]
        unseen = sorted({t for tags in gold for t in tags} - set(self.labels))
        # conlleval scores a gold entity of a type the tagger never saw as a miss; a tag of no
        # IOB shape (``PER``, ``ORG``: another tagging scheme) would score as O: refused.
        shapeless = [t for t in unseen if not is_entity_tag(t)]
        if shapeless:
            first = next(place for place, tags in placed if shapeless[0] in tags)
            raise DataError(f"{first}: tags [{listed(map(repr, shapeless), 80)}] are not in "
                            f"the run's labels [{listed(map(repr, self.labels), 80)}] "
                            "and are not IOB tags (B-TYPE / I-TYPE) that could be scored as "
                            "missed entities")
        predicted, cut = self._predict_tags(model, self.encode(
            source.build(), tokenizer, batch_size=batch_size, sequence_length=sequence_length,
            with_labels=False), sequence_length, batch_size)
        scores = entity_scores(gold, predicted)
        metrics = {k: scores[k] for k in ("precision", "recall", "f1", "accuracy", "entities",
                                          "predicted_entities", "per_type")}
        if unseen:  # counted as misses: the tagger cannot predict them
            metrics["unseen_tags"] = unseen
        if any(cut):  # words past sequence_length, predicted O: said, not hidden in the F1
            metrics["truncated"] = {"sentences": sum(n > 0 for n in cut), "words": sum(cut)}
        return metrics

    @staticmethod
    def words(text):
        """The whitespace-separated words of ``text`` with their ``(start, end)`` offsets."""
        found = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        return [w for w, _, _ in found], [(s, e) for _, s, e in found]

    def entities(self, text, tags):
        """Entities of a line from its word tags: ``[{"text", "type", "start", "end"}]``."""
        from kplm.ner_metrics import extract_entities
        _, offsets = self.words(text)
        spans = []
        for kind, first, last in extract_entities(tags):
            start, end = offsets[first][0], offsets[last - 1][1]
            spans.append({"text": text[start:end], "type": kind, "start": start, "end": end})
        return spans

    def predict(self, model, examples, tokenizer, *, batch_size, sequence_length):
        """``[{"text": line}]`` -> ``[{"entities": [...], "tags": [tag per word]}]``."""
        import tensorflow as tf
        if not examples:
            return []
        words = [self.words(ex[self.text_field])[0] for ex in examples]
        encode = self._cached_encoder(tokenizer, sequence_length)
        chunk = 4096  # the traced encoder is called directly on chunks of sentences
        packed = (encode({self.tokens_field: tf.ragged.constant(
            words[i:i + chunk], dtype=tf.string, ragged_rank=1)})
            for i in range(0, len(words), chunk))
        tags, cut = self._predict_tags(model, packed, sequence_length, batch_size)
        return [{"entities": self.entities(ex[self.text_field], t), "tags": t,
                 **({"truncated_words": n} if n else {})}
                for ex, t, n in zip(examples, tags, cut)]

    # --- serving --------------------------------------------------------------------------------
    def serving_endpoint(self, model, tokenizer, sequence_length):
        """``(fn, input signature)``: raw lines ``text`` -> per word ``words``, ``tags``,
        ``word_start``/``word_end``, and the entities ``entity_text``, ``entity_type``,
        ``entity_start``/``entity_end`` (character offsets, end exclusive) and ``num_entities``.
        Rows are padded with ``""`` / -1. Same words, tags and entities as ``predict``."""
        import tensorflow as tf
        import tensorflow_text as tf_text

        from kplm.ner_metrics import _split
        from kplm.serving import char_offsets, string_input, words_to_pieces
        tokenizer.require_word_pieces("the token_classification head")
        cls_id, sep_id, pad_id = (tokenizer.special_id(r) for r in ("cls", "sep", "pad"))
        labels = tf.constant(self.labels + ["O"])  # the extra "O" tags truncated words
        outside = len(self.labels)
        prefixes = tf.constant([_split(t)[0] for t in self.labels] + ["O"])
        kinds = tf.constant([_split(t)[1] for t in self.labels] + [""])

        def serve(text):
            # the words ``words()`` finds (Python's whitespace); tf_text.WhitespaceTokenizer
            # splits U+3000, U+00A0, U+2028 ... inside their UTF-8 bytes
            words, starts, ends = tf_text.regex_split_with_offsets(text, WHITESPACE_RE2)
            pieces = words_to_pieces(tokenizer, words.flat_values)
            first = tf.ragged.range(pieces.row_lengths()).flat_values == 0
            word_of_piece = tf.gather(tf.ragged.range(words.row_lengths()).flat_values,
                                      pieces.value_rowids())
            lengths = [words.row_lengths(), pieces.row_lengths()]

            def per_sentence(values):
                return tf.RaggedTensor.from_nested_row_lengths(values, lengths).merge_dims(1, 2)

            kept = per_sentence(pieces.flat_values)[:, :sequence_length - 2]
            batch = tf.shape(text, out_type=tf.int64)[0]
            framing = tf.fill([batch, 1], tf.cast(cls_id, tf.int64))
            ids = tf.concat([framing, kept, tf.fill([batch, 1], tf.cast(sep_id, tf.int64))], 1)
            token_ids = tf.cast(ids.to_tensor(default_value=pad_id,
                                              shape=[None, sequence_length]), tf.int32)
            x = {"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                 "padding_mask": tf.cast(token_ids != pad_id, tf.int32)}
            predicted = tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32)
            predicted = tf.RaggedTensor.from_tensor(predicted[:, 1:], lengths=kept.row_lengths())
            # the tag of each word: its first piece's prediction ("O" when truncated away)
            is_first = per_sentence(first)[:, :sequence_length - 2]
            word_ids = per_sentence(word_of_piece)[:, :sequence_length - 2]
            first_words = tf.ragged.boolean_mask(word_ids, is_first)
            num_words = tf.reduce_max(tf.concat([words.row_lengths(), [0]], 0))
            tag_ids = tf.fill([batch, num_words], outside)
            index = tf.stack([first_words.value_rowids(), first_words.flat_values], axis=1)
            tag_ids = tf.tensor_scatter_nd_update(
                tag_ids, index, tf.ragged.boolean_mask(predicted, is_first).flat_values)
            valid = tf.sequence_mask(words.row_lengths(), num_words)
            tags = tf.where(valid, tf.gather(labels, tag_ids), "")
            # entities, conlleval style: a run starts at B-X, or at I-X not continuing an X run
            prefix, kind = tf.gather(prefixes, tag_ids), tf.gather(kinds, tag_ids)
            inside = valid & ((prefix == "B") | (prefix == "I"))
            prev_inside = tf.pad(inside[:, :-1], [[0, 0], [1, 0]])
            prev_kind = tf.pad(kind[:, :-1], [[0, 0], [1, 0]])
            start = inside & ((prefix == "B") | ~(prev_inside & (prev_kind == kind)))
            entity = tf.cumsum(tf.cast(start, tf.int64), axis=1) - 1
            count = tf.reduce_sum(tf.cast(start, tf.int64), axis=1)
            max_entities = tf.reduce_max(tf.concat([count, [0]], 0))
            segment = tf.where(inside, tf.expand_dims(tf.range(batch), 1) * max_entities + entity,
                               batch * max_entities)
            position = tf.broadcast_to(tf.range(num_words), tf.shape(segment))
            first_word = tf.math.unsorted_segment_min(position, segment,
                                                      batch * max_entities + 1)[:-1]
            last_word = tf.math.unsorted_segment_max(position, segment,
                                                     batch * max_entities + 1)[:-1]
            has = tf.sequence_mask(count, max_entities)
            grid = [batch, max_entities]
            first_word = tf.where(has, tf.reshape(first_word, grid), 0)
            last_word = tf.where(has, tf.reshape(last_word, grid), 0)
            word_start = char_offsets(text, starts).to_tensor(default_value=-1)
            word_end = char_offsets(text, ends).to_tensor(default_value=-1)
            entity_start = tf.where(has, tf.gather(word_start, first_word, batch_dims=1), -1)
            entity_end = tf.where(has, tf.gather(word_end, last_word, batch_dims=1), -1)
            entity_text = tf.where(has, tf.strings.substr(
                tf.broadcast_to(tf.expand_dims(text, 1), grid), tf.maximum(entity_start, 0),
                entity_end - entity_start, unit="UTF8_CHAR"), "")
            entity_type = tf.where(has, tf.gather(kind, first_word, batch_dims=1), "")
            return {"words": words.to_tensor(default_value=""), "tags": tags,
                    "word_start": word_start, "word_end": word_end,
                    "entity_text": entity_text, "entity_type": entity_type,
                    "entity_start": entity_start, "entity_end": entity_end,
                    "num_entities": count}
        return serve, [string_input(self.text_field)]

    def baseline(self, train_source, eval_source):
        """Tagging every word with the most frequent training tag (usually ``O``)."""
        from collections import Counter

        from kplm.ner_metrics import entity_scores
        counts = Counter(t for tags in self._tag_sequences(train_source) for t in tags)
        top = counts.most_common(1)[0][0]
        gold = list(self._tag_sequences(eval_source))
        scores = entity_scores(gold, [[top] * len(tags) for tags in gold])
        return {"majority_tag": top, "accuracy": scores["accuracy"], "f1": scores["f1"]}


#: ``str.isspace()``'s characters as an RE2 class: the word separators of ``words`` (Python's
#: ``\S+``), in the exported graph.
WHITESPACE_RE2 = (r"[\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
                  r"\x{202f}\x{205f}\x{3000}]+")


@hookimpl
def register_heads(register):
    register("token_classification", TokenClassificationHead)
