"""SQuAD v1.1 JSON files: questions about paragraphs, answered by spans of the paragraph."""
import json

from kplm.data.files import FileSource, generator_dataset, open_lines
from kplm.errors import DataError, reading, require_utf8_text, shown
from kplm.hookspecs import hookimpl


class SquadFiles(FileSource):
    """Reads SQuAD v1.1 JSON files (``data[].paragraphs[].context``, ``qas[].id``, ``question``,
    ``answers[].text`` / ``answer_start``) into one example per question: ``{"id", "question",
    "context", "answer_texts", "answer_starts"}`` (the last two are lists: dev sets hold several
    gold answers). Each file is a single JSON document, so it is read whole (``.gz`` too).

    A record that is not of that shape, or an answer whose text is not
    ``context[answer_start:answer_start + len(text)]``, is refused with the file, the record's
    position and the question id.

    Args:
        paths: list of str. Files or glob patterns.
        require_answers: bool. Refuse questions without answers. False reads SQuAD v2's
            unanswerable questions (``is_impossible``, empty ``answers``): the
            ``question_answering`` head trains their windows to point at ``[CLS]`` ("no span
            here") and scores them as SQuAD v2 does (right only for an empty answer; the head
            always answers with a span, so they count against it). Defaults to True.

    Example:
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.json")
    >>> qa = {"id": "q1", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]}
    >>> _ = open(path, "w").write(json.dumps(
    ...     {"data": [{"paragraphs": [{"context": "Ada wrote it.", "qas": [qa]}]}]}))
    >>> example = next(iter(SquadFiles(paths=[path]).build()))
    >>> example["answer_texts"].numpy().tolist(), example["answer_starts"].numpy().tolist()
    ([b'Ada'], [0])
    """

    text_field = "context"

    def __init__(self, paths: list[str], require_answers: bool = True):
        self.paths = paths
        self.require_answers = require_answers

    def _load(self, path):
        with reading(path, "a SQuAD JSON file"):  # one document (often one line): read whole
            with open_lines(path) as f:
                raw = f.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: invalid UTF-8 (byte 0x{raw[e.start]:02x})") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") \
                from None
        except RecursionError:
            raise DataError(f"{path}: invalid JSON (nested too deeply)") from None
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            raise DataError(f"{path}: expected a SQuAD JSON object with a 'data' list")
        return document["data"]

    def examples(self):
        """Checked examples as Python dicts, file by file (each file parsed whole)."""
        for path in self.files:
            for a, article in enumerate(self._load(path)):
                paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
                if not isinstance(paragraphs, list):
                    raise DataError(f"{path}/data[{a}]: expected a 'paragraphs' list")
                for p, paragraph in enumerate(paragraphs):
                    where = f"{path}/data[{a}].paragraphs[{p}]"
                    context = paragraph.get("context") if isinstance(paragraph, dict) else None
                    if not isinstance(context, str) or not isinstance(paragraph.get("qas"), list):
                        raise DataError(f"{where}: expected a 'context' string and a 'qas' list")
                    for q, qa in enumerate(paragraph["qas"]):
                        yield self._example(f"{where}.qas[{q}]", context, qa)

    def _example(self, where, context, qa):
        if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
            raise DataError(f"{where}: expected an object with a 'question' string")
        qid = str(qa.get("id", "?"))
        where = f"{where} (id {qid})"
        answers = qa.get("answers", [])
        if not isinstance(answers, list):
            raise DataError(f"{where}: expected an 'answers' list")
        if self.require_answers and not answers:
            flagged = " (is_impossible)" if qa.get("is_impossible") else ""
            raise DataError(f"{where}: expected a non-empty 'answers' list (an unanswerable "
                            f"SQuAD v2 question{flagged}? set require_answers: false to read "
                            "it without a span)")
        if qa.get("is_impossible") is True and answers:
            raise DataError(f"{where}: is_impossible is true but 'answers' holds "
                            f"{len(answers)}; expected an empty list (SQuAD v2 keeps the "
                            "plausible ones under 'plausible_answers')")
        require_utf8_text(qa["question"], f"{where}: the question")
        require_utf8_text(context, f"{where}: the context")
        texts, starts = [], []
        for k, answer in enumerate(answers):
            text = answer.get("text") if isinstance(answer, dict) else None
            start = answer.get("answer_start") if isinstance(answer, dict) else None
            if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
                raise DataError(f"{where}: answers[{k}] needs a 'text' string and an integer "
                                "'answer_start'")
            if self.require_answers and not text.strip():
                raise DataError(f"{where}: answers[{k}] has an empty 'text' (an unanswerable "
                                "question? set require_answers: false to read it without a "
                                "span)")
            found = context[start:start + len(text)] if start >= 0 else ""
            if found != text:
                raise DataError(f"{where}: answers[{k}] {shown(text, 60)} does not match the "
                                f"context at answer_start {start} (found {shown(found, 60)})")
            texts.append(text)
            starts.append(start)
        return {"id": qid, "question": qa["question"], "context": context,
                "answer_texts": texts, "answer_starts": starts}

    def check(self):
        """Parse and validate every record; refuse files without any question."""
        if not sum(1 for _ in self.examples()):  # all of them: a bad record anywhere is reported
            raise DataError(f"{', '.join(self.files)}: no questions")


    def build(self):
        import tensorflow as tf

        import numpy as np

        def generate():
            for ex in self.examples():  # numpy arrays: an empty answer list keeps its dtype
                yield {"id": ex["id"], "question": ex["question"], "context": ex["context"],
                       "answer_texts": np.array([t.encode("utf-8") for t in ex["answer_texts"]],
                                                dtype=object),
                       "answer_starts": np.array(ex["answer_starts"], dtype=np.int32)}

        string = tf.TensorSpec([], tf.string)
        return generator_dataset(generate, {
            "id": string, "question": string, "context": string,
            "answer_texts": tf.TensorSpec([None], tf.string),
            "answer_starts": tf.TensorSpec([None], tf.int32)})


@hookimpl
def register_data_sources(register):
    register("squad", SquadFiles)
