"""The ``question_answering`` head: extractive QA (SQuAD v1.1), answers as context spans."""
import unicodedata

from kplm.checks import check_limits
from kplm.components import Head
from kplm.errors import ConfigError, DataError
from kplm.hookspecs import hookimpl
from kplm.models.inference import batch_predictor

_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_FIELDS = ("question", "context", "answer_texts", "answer_starts")
# keras_hub's BERT pre-tokenizer patterns (RE2, for ``tf_text.regex_split_with_offsets``), which
# keras_hub does not export: words split on whitespace/control/format characters, each
# punctuation or CJK character kept alone. ``_is_separator``/``_is_kept_delimiter`` are the same
# sets in Python.
_WHITESPACE_RE2 = r"\s|\p{Cc}|\p{Cf}"
_PUNCTUATION_RE2 = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
_CJK_RE2 = "|".join(rf"[\x{{{lo:X}}}-\x{{{hi:X}}}]" for lo, hi in _CJK_RANGES)
_KEPT_RE2 = f"{_PUNCTUATION_RE2}|{_CJK_RE2}"
_SPLIT_RE2 = f"{_WHITESPACE_RE2}|{_KEPT_RE2}"


def _is_separator(ch):
    # keras_hub's WHITESPACE_REGEX: RE2 ``\s`` (ASCII only), control and format characters.
    return ch in " \t\n\r\f" or unicodedata.category(ch) in ("Cc", "Cf")


def _is_kept_delimiter(ch):
    # keras_hub's PUNCTUATION_REGEX (all non-alphanumeric ASCII, Unicode P*) and CJK_REGEX.
    code = ord(ch)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    if unicodedata.category(ch).startswith("P"):
        return True
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def split_words(text):
    """``(start, end)`` character spans of the words keras_hub's BERT pre-tokenizer makes of
    ``text``: split on whitespace/control characters, each punctuation or CJK character alone.

    Example:
    >>> split_words("Hi, là-bas!")
    [(0, 2), (2, 3), (4, 6), (6, 7), (7, 10), (10, 11)]
    """
    spans, start = [], None
    for i, ch in enumerate(text):
        if _is_separator(ch) or _is_kept_delimiter(ch):
            if start is not None:
                spans.append((start, i))
                start = None
            if not _is_separator(ch):
                spans.append((i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


class QuestionAnsweringHead(Head):
    """Extractive question answering: finds the answer to a question as a span of its context.

    Inputs are packed as ``[CLS] question [SEP] context-window [SEP]`` (segment ids 0, then 1);
    a context longer than the sequence is cut into overlapping windows whose starts are
    ``doc_stride`` tokens apart. Targets are the gold answer's first and last token in each
    window (``[CLS]``, position 0, where the window lacks the answer). Tokenization is kplm's
    WordPiece (same vocabulary, lowercasing and accent stripping), applied word by word so every
    token keeps the character span it came from: answers are substrings of the original context.

    Evaluation searches the best span (start <= end, at most ``max_answer_length`` tokens, inside
    the context) over all windows of a question and reports the official SQuAD v1.1 exact match
    and F1 (percent). ``kplm predict`` reads ``QUESTION<TAB>CONTEXT`` lines and writes
    ``answer``, ``start``/``end`` (character offsets, end exclusive) and ``score`` (probability).

    Args:
        doc_stride: int. Tokens between the starts of consecutive context windows (capped at the
            window length). Defaults to 64.
        max_question_length: int. Question tokens kept. Defaults to 24.
        max_answer_length: int. Longest answer considered, in tokens. Defaults to 30.
        dropout: float. Dropout before the output layer. Defaults to 0.1.
        shuffle_buffer: int. Windows held for shuffling. Defaults to 10000.

    Example:
    >>> head = QuestionAnsweringHead(doc_stride=32)
    >>> head.get_config()["max_answer_length"]
    30
    """

    metric = "span_accuracy"
    metric_mode = "max"
    model_module = "kplm.models.span_extractor"
    #: The backbone families it fine-tunes (a config pairing it with another is refused).
    families = ("encoder",)
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"doc_stride": ">= 1", "max_question_length": ">= 1", "max_answer_length": ">= 1",
              "dropout": "[0, 1)", "shuffle_buffer": ">= 0"}
    #: The example fields ``kplm predict`` fills from ``QUESTION<TAB>CONTEXT`` lines.
    text_field = "question"
    pair_field = "context"

    def __init__(self, doc_stride: int = 64, max_question_length: int = 24,
                 max_answer_length: int = 30, dropout: float = 0.1, shuffle_buffer: int = 10000):
        check_limits(self.limits, locals(), "head")
        self.doc_stride, self.max_question_length = doc_stride, max_question_length
        self.max_answer_length, self.dropout = max_answer_length, dropout
        self.shuffle_buffer = shuffle_buffer
        self._vocabulary, self._cache = None, {}  # word -> token ids under that vocabulary

    def get_config(self):
        return {"doc_stride": self.doc_stride, "max_question_length": self.max_question_length,
                "max_answer_length": self.max_answer_length, "dropout": self.dropout,
                "shuffle_buffer": self.shuffle_buffer}

    def prepare(self, source):
        """Check that the source yields SQuAD-shaped examples with answers (one pass)."""
        count = 0
        for example in source.build().as_numpy_iterator():
            missing = [f for f in _FIELDS if f not in example]
            if missing:
                raise DataError(f"the data lacks the fields {missing} (fields: "
                                f"{', '.join(example)}); use a 'squad' data source")
            count += 1
        if not count:
            raise DataError("the data holds no questions")

    # --- tokens with character spans ----------------------------------------------------------
    def _word_ids(self, tokenizer, words):
        """Token ids of each word, tokenizing the ones not seen before in one batch."""
        if self._vocabulary is not tokenizer.tokens:
            self._vocabulary, self._cache = tokenizer.tokens, {}
        cache = self._cache
        new = sorted({w for w in words if w not in cache})
        if new:
            import tensorflow as tf
            ids = tokenizer.build()(tf.constant(new))
            ids = ids.to_list() if hasattr(ids, "to_list") else [list(i) for i in ids]
            cache.update(zip(new, ids))
        return [cache[w] for w in words]

    def tokenize(self, tokenizer, texts):
        """``[(token_ids, spans)]`` per text; ``spans[i]`` is the ``(start, end)`` characters
        token ``i`` came from: exact for word pieces whose text matches the word's letters, the
        whole word otherwise (``[UNK]``, case folding that changes lengths)."""
        word_spans = [split_words(t) for t in texts]
        words = [t[s:e] for t, spans in zip(texts, word_spans) for s, e in spans]
        ids = iter(self._word_ids(tokenizer, words))
        vocab, results = tokenizer.tokens, []
        for spans in word_spans:
            token_ids, token_spans = [], []
            for start, end in spans:
                pieces = next(ids)
                lengths = [len(vocab[i][2:] if vocab[i].startswith("##") else vocab[i])
                           for i in pieces]
                exact = sum(lengths) == end - start and "[UNK]" not in (vocab[i] for i in pieces)
                offset = start
                for piece, length in zip(pieces, lengths):
                    token_ids.append(piece)
                    token_spans.append((offset, offset + length) if exact else (start, end))
                    offset += length
            results.append((token_ids, token_spans))
        return results

    # --- windows ------------------------------------------------------------------------------
    def encode(self, examples, tokenizer, sequence_length):
        """Windows of ``examples`` (dicts of str: ``question``, ``context``, optionally
        ``answer_starts``/``answer_texts``) as a dict of lists: ``token_ids``, ``segment_ids``,
        ``padding_mask``, ``positions`` (gold start/end, [CLS] when absent), ``example`` (index),
        ``spans`` (character span per position, None outside the context)."""
        tokenizer.require_word_pieces("the question_answering head")
        cls_id, sep_id, pad_id = (tokenizer.special_id(r) for r in ("cls", "sep", "pad"))
        questions = self.tokenize(tokenizer, [ex["question"] for ex in examples])
        contexts = self.tokenize(tokenizer, [ex["context"] for ex in examples])
        out = {k: [] for k in ("token_ids", "segment_ids", "padding_mask", "positions",
                               "example", "spans")}
        for index, (ex, (q_ids, _), (c_ids, c_spans)) in enumerate(
                zip(examples, questions, contexts)):
            q_ids = q_ids[:self.max_question_length]
            room = sequence_length - len(q_ids) - 3
            if room < 1:
                raise ConfigError(f"sequence_length {sequence_length} leaves no room for the "
                                  f"context after {len(q_ids)} question tokens")
            step = min(self.doc_stride, room)
            gold = self._gold_tokens(ex, c_spans)
            offset = len(q_ids) + 2
            window = 0
            while True:
                ids = c_ids[window:window + room]
                tokens = [cls_id] + q_ids + [sep_id] + ids + [sep_id]
                pad = sequence_length - len(tokens)
                out["token_ids"].append(tokens + [pad_id] * pad)
                out["segment_ids"].append([0] * offset + [1] * (len(ids) + 1) + [0] * pad)
                out["padding_mask"].append([1] * len(tokens) + [0] * pad)
                positions = [0, 0]
                if gold and window <= gold[0] and gold[1] < window + len(ids):
                    positions = [gold[0] - window + offset, gold[1] - window + offset]
                out["positions"].append(positions)
                out["example"].append(index)
                out["spans"].append([None] * offset + c_spans[window:window + room]
                                    + [None] * (pad + 1))
                if window + room >= len(c_ids):
                    break
                window += step
        return out

    @staticmethod
    def _gold_tokens(example, spans):
        """First and last context token of the first gold answer, or None."""
        starts = example.get("answer_starts")
        if starts is None or len(starts) == 0:
            return None
        start = int(starts[0])
        end = start + len(example["answer_texts"][0])
        inside = [i for i, (s, e) in enumerate(spans) if s < end and e > start]
        return (inside[0], inside[-1]) if inside else None

    # --- data -----------------------------------------------------------------------------------
    @staticmethod
    def _examples(source_ds):
        """Decoded Python examples from a dataset of SQuAD examples."""
        examples = []
        for ex in source_ds.as_numpy_iterator():
            item = {"question": ex["question"].decode("utf-8"),
                    "context": ex["context"].decode("utf-8")}
            if "answer_texts" in ex:
                item["answer_texts"] = [t.decode("utf-8") for t in ex["answer_texts"]]
                item["answer_starts"] = [int(s) for s in ex["answer_starts"]]
            examples.append(item)
        return examples

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True, with_labels=True):
        """``(x, y)`` batches of windows, ``y`` the ``[batch, 2]`` gold token positions (``x``
        only when ``with_labels`` is False). Windows are made in Python, once, in memory."""
        import numpy as np
        import tensorflow as tf

        windows = self.encode(self._examples(source_ds), tokenizer, sequence_length)
        x = {k: np.asarray(windows[k], dtype=np.int32).reshape(-1, sequence_length)
             for k in ("token_ids", "segment_ids", "padding_mask")}
        if with_labels:
            ds = tf.data.Dataset.from_tensor_slices(
                (x, np.asarray(windows["positions"], dtype=np.int32).reshape(-1, 2)))
        else:
            ds = tf.data.Dataset.from_tensor_slices(x)
        if training:
            ds = ds.shuffle(self.shuffle_buffer, seed=seed).repeat()
        return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

    # --- model ----------------------------------------------------------------------------------
    def build_model(self, backbone):
        from kplm.models.span_extractor import SpanExtractor
        return SpanExtractor(backbone, dropout=self.dropout)

    def _answers(self, model, examples, tokenizer, batch_size, sequence_length):
        import numpy as np
        if not examples:
            return []
        windows = self.encode(examples, tokenizer, sequence_length)
        x = {k: np.asarray(windows[k], dtype=np.int32).reshape(-1, sequence_length)
             for k in ("token_ids", "segment_ids", "padding_mask")}
        predict = batch_predictor(model)
        logits = np.concatenate([
            np.asarray(predict({k: v[i:i + batch_size] for k, v in x.items()}))
            for i in range(0, len(x["token_ids"]), batch_size)])
        return self.postprocess(logits, windows, [ex["context"] for ex in examples])

    def evaluate(self, model, source, tokenizer, *, batch_size, sequence_length):
        """Official SQuAD v1.1 exact match and F1 (percent) over all of ``source``."""
        from kplm.squad_metrics import squad_scores
        examples = self._examples(source.build())
        answers = self._answers(model, examples, tokenizer, batch_size, sequence_length)
        scores = squad_scores([a["answer"] for a in answers],
                              [ex["answer_texts"] for ex in examples])
        return {**scores, "questions": len(examples)}

    def predict(self, model, examples, tokenizer, *, batch_size, sequence_length):
        """``[{"question": ..., "context": ...}]`` -> ``[{"answer", "start", "end", "score"}]``."""
        examples = [{"question": str(ex["question"]), "context": str(ex["context"])}
                    for ex in examples]
        return self._answers(model, examples, tokenizer, batch_size, sequence_length)

    def postprocess(self, logits, windows, contexts):
        """Best answer per context from window logits ``[windows, sequence, 2]``: the span with
        the highest start x end probability over all windows of a context (start <= end, at most
        ``max_answer_length`` tokens, context tokens only), as a substring of the context."""
        import numpy as np
        logits = np.asarray(logits, dtype=np.float64)
        best = [None] * len(contexts)
        for w, index in enumerate(windows["example"]):
            inside = np.array([s is not None for s in windows["spans"][w]])
            if not inside.any():
                continue
            positions = np.flatnonzero(inside)
            top = logits[w].max(axis=0)  # log-softmax over the window, start and end apart
            log_p = logits[w] - top - np.log(np.exp(logits[w] - top).sum(axis=0))
            starts, ends = log_p[positions, 0], log_p[positions, 1]
            scores = starts[:, None] + ends[None, :]
            gap = positions[None, :] - positions[:, None]
            scores[(gap < 0) | (gap >= self.max_answer_length)] = -np.inf
            i, j = np.unravel_index(np.argmax(scores), scores.shape)
            if best[index] is None or scores[i, j] > best[index][0]:
                spans = windows["spans"][w]
                best[index] = (scores[i, j], spans[positions[i]][0], spans[positions[j]][1])
        results = []
        for context, found in zip(contexts, best):
            if found is None:
                results.append({"answer": "", "start": 0, "end": 0, "score": 0.0})
                continue
            score, start, end = found
            results.append({"answer": context[start:end], "start": int(start), "end": int(end),
                            "score": round(float(np.exp(score)), 6)})
        return results

    # --- serving --------------------------------------------------------------------------------
    def serving_endpoint(self, model, tokenizer, sequence_length):
        """``(fn, input signature)``: raw ``question`` and ``context`` strings -> ``answer``,
        ``start``/``end`` (character offsets into the context, end exclusive) and ``score``.

        The same computation as ``predict`` in graph ops: words split by keras_hub's BERT
        pre-tokenizer pattern, word pieces with character spans, windows every ``doc_stride``
        tokens, and the best span over all windows of a question."""
        import tensorflow as tf
        import tensorflow_text as tf_text

        from kplm.serving import char_offsets, piece_char_lengths, string_input, words_to_pieces
        tokenizer.require_word_pieces("the question_answering head")
        cls_id, sep_id, pad_id, unk_id = (tokenizer.special_id(r)
                                          for r in ("cls", "sep", "pad", "unk"))
        piece_lengths = piece_char_lengths(tokenizer.tokens)
        length, longest = sequence_length, self.max_answer_length

        def tokens_with_spans(text):
            """Ragged ``[batch, (tokens)]`` ids and character start/end of each token."""
            words, starts, ends = tf_text.regex_split_with_offsets(text, _SPLIT_RE2, _KEPT_RE2)
            starts, ends = char_offsets(text, starts), char_offsets(text, ends)
            pieces = words_to_pieces(tokenizer, words.flat_values)  # [all words, (pieces)]
            sizes = tf.gather(piece_lengths, pieces)
            exact = ((tf.reduce_sum(sizes, axis=1) == ends.flat_values - starts.flat_values)
                     & ~tf.reduce_any(pieces == unk_id, axis=1))
            flat = sizes.flat_values
            total = tf.cumsum(flat, exclusive=True)
            row_first = tf.gather(total, pieces.row_starts())
            before = total - tf.gather(row_first, pieces.value_rowids())
            word = pieces.value_rowids()
            exact_piece = tf.gather(exact, word)
            word_start = tf.gather(starts.flat_values, word)
            word_end = tf.gather(ends.flat_values, word)
            piece_start = tf.where(exact_piece, word_start + before, word_start)
            piece_end = tf.where(exact_piece, word_start + before + flat, word_end)
            nested = [words.row_lengths(), pieces.row_lengths()]

            def per_text(values):
                return tf.RaggedTensor.from_nested_row_lengths(values, nested).merge_dims(1, 2)
            return per_text(pieces.flat_values), per_text(piece_start), per_text(piece_end)

        def serve(question, context):
            q_ids, _, _ = tokens_with_spans(question)
            q_ids = q_ids[:, :self.max_question_length]
            c_ids, c_start, c_end = tokens_with_spans(context)
            q_len, n = q_ids.row_lengths(), c_ids.row_lengths()
            room = length - q_len - 3
            tf.debugging.assert_positive(room, message="sequence_length leaves no room for the "
                                         "context after the question")
            step = tf.minimum(tf.cast(self.doc_stride, tf.int64), room)
            windows = 1 + tf.maximum(tf.constant(0, tf.int64), (n - room + step - 1) // step)  # per example
            example = tf.repeat(tf.range(tf.size(n, out_type=tf.int64)), windows)
            first = tf.gather(step, example) * tf.ragged.range(windows).flat_values
            last = tf.minimum(first + tf.gather(room, example), tf.gather(n, example))
            at = tf.ragged.range(first, last)  # context token indices of each window
            flat_at = at + tf.expand_dims(tf.gather(c_ids.row_starts(), example), 1)

            def take(ragged):
                return tf.gather(ragged.flat_values, flat_at)
            count = tf.size(example, out_type=tf.int64)
            cls = tf.fill([count, 1], tf.cast(cls_id, tf.int64))
            sep = tf.fill([count, 1], tf.cast(sep_id, tf.int64))
            question_rows = tf.gather(q_ids, example)
            ids = tf.concat([cls, tf.cast(question_rows, tf.int64), sep,
                             tf.cast(take(c_ids), tf.int64), sep], axis=1)
            token_ids = tf.cast(ids.to_tensor(default_value=pad_id, shape=[None, length]),
                                tf.int32)
            offset = tf.gather(q_len, example) + 2
            context_len = at.row_lengths()
            position = tf.range(length, dtype=tf.int64)[None, :]
            segment = (position >= offset[:, None]) & (position <= (offset + context_len)[:, None])
            x = {"token_ids": token_ids, "segment_ids": tf.cast(segment, tf.int32),
                 "padding_mask": tf.cast(token_ids != pad_id, tf.int32)}
            logits = tf.cast(model(x, training=False), tf.float32)
            log_p = tf.nn.log_softmax(logits, axis=1)
            in_context = (position >= offset[:, None]) & (
                position < (offset + context_len)[:, None])
            scores = log_p[:, :, 0:1] + tf.transpose(log_p[:, :, 1:2], [0, 2, 1])  # [w, s, e]
            gap = position[:, None, :] - position[:, :, None]  # [1, s, e]: e - s
            allowed = ((gap >= 0) & (gap < longest) & in_context[:, :, None]
                       & in_context[:, None, :])
            scores = tf.where(allowed, scores, -float("inf"))
            flat_scores = tf.reshape(scores, [count, -1])
            best = tf.argmax(flat_scores, axis=1)
            best_score = tf.reduce_max(flat_scores, axis=1)
            s_pos, e_pos = best // length, best % length
            def padded(ragged):  # a column more: a batch of empty contexts leaves none
                return tf.pad(ragged.to_tensor(), [[0, 0], [0, 1]])
            span_start = tf.gather(padded(take(c_start)), tf.maximum(s_pos - offset, 0),
                                   batch_dims=1)
            span_end = tf.gather(padded(take(c_end)), tf.maximum(e_pos - offset, 0),
                                 batch_dims=1)
            # the best window of each example (the first one on ties, as predict)
            per_example = tf.RaggedTensor.from_value_rowids(best_score, example,
                                                            nrows=tf.size(n, out_type=tf.int64))
            winner = tf.argmax(per_example.to_tensor(default_value=-float("inf")), axis=1)
            chosen = per_example.row_starts() + winner
            score = tf.gather(best_score, chosen)
            found = score > -float("inf")
            start = tf.where(found, tf.gather(span_start, chosen), 0)
            end = tf.where(found, tf.gather(span_end, chosen), 0)
            answer = tf.strings.substr(context, start, end - start, unit="UTF8_CHAR")
            return {"answer": tf.where(found, answer, ""), "start": start, "end": end,
                    "score": tf.where(found, tf.exp(score), 0.0)}
        return serve, [string_input("question"), string_input("context")]

    def baseline(self, train_source, eval_source):
        """Two answer-agnostic baselines on ``eval_source``, official exact match and F1
        (percent): ``first_words``, the context's first N words (N the median gold answer length
        in words on ``train_source``), and ``sentence``, the context sentence sharing the most
        (normalised) words with the question. ``exact_match``/``f1`` are the better of the two."""
        import re
        import statistics

        from kplm.squad_metrics import normalize_answer, squad_scores
        lengths = [len(ex["answer_texts"][0].split())
                   for ex in self._examples(train_source.build()) if ex.get("answer_texts")]
        n = max(1, int(statistics.median(lengths))) if lengths else 1
        examples = self._examples(eval_source.build())
        golds = [ex["answer_texts"] for ex in examples]
        first, overlap = [], []
        for ex in examples:
            first.append(" ".join(ex["context"].split()[:n]))
            question = set(normalize_answer(ex["question"]).split())
            sentences = re.split(r"(?<=[.!?])\s+", ex["context"].strip())
            overlap.append(max(sentences, key=lambda s: len(
                question & set(normalize_answer(s).split()))))
        scores = {"first_words": squad_scores(first, golds),
                  "sentence": squad_scores(overlap, golds)}
        best = max(scores.values(), key=lambda s: s["f1"])
        return {"exact_match": best["exact_match"], "f1": best["f1"], "first_words_n": n,
                **scores, "questions": len(examples)}


@hookimpl
def register_heads(register):
    register("question_answering", QuestionAnsweringHead)
