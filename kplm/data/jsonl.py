"""JSON Lines files: one JSON object per line, fields picked by key."""
import json
import math
from typing import Optional

from kplm.data.files import FileSource, decode_line, generator_dataset, read_lines
from kplm.errors import DataError, listed, require_utf8_text, shown
from kplm.hookspecs import hookimpl


class JsonLines(FileSource):
    """Streams examples from JSONL files (globs, ``.gz``), line by line.

    By default each example is ``{"text": record[text_field]}``. ``fields`` maps example fields
    to JSON keys instead (e.g. ``{text: review, label: stars}`` for fine-tuning); numbers and
    booleans in those keys are turned into strings (labels are strings in kplm). Blank lines are
    skipped, and so is a record with an empty text when the text is all it gives (a corpus);
    with ``fields`` naming more (a label, a pair), it is an example and kept. A line that is
    not a JSON object, lacks a key, or holds a list or object there is refused with the file
    and line number.

    Args:
        paths: list of str. Files or glob patterns.
        text_field: str. The key holding the text (when ``fields`` is not given). Defaults to
            ``"text"``.
        fields: mapping or None. Example field -> JSON key. Defaults to None.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.jsonl")
    >>> _ = open(path, "w").write('{"body": "hello", "stars": 5}\\n{"body": "world", "stars": 1}\\n')
    >>> [x["text"].numpy() for x in JsonLines(paths=[path], text_field="body").build()]
    [b'hello', b'world']
    >>> source = JsonLines(paths=[path], fields={"text": "body", "label": "stars"})
    >>> [(x["text"].numpy(), x["label"].numpy()) for x in source.build()]
    [(b'hello', b'5'), (b'world', b'1')]
    """

    def __init__(self, paths: list[str], text_field: str = "text", fields: Optional[dict] = None):
        self.paths = paths
        self.fields = dict(fields) if fields else {"text": text_field}
        for field, key in self.fields.items():
            if not isinstance(key, str):
                raise DataError(f"fields.{field}: expected a JSON key (string), got {shown(key)}")
        self.text_field = "text" if "text" in self.fields else next(iter(self.fields))

    @classmethod
    def check_config(cls, section, path):
        """Config-time checks (``kplm.config.check_arguments``): the JSON keys named."""
        fields = section.get("fields")
        if fields is not None and not fields:
            raise DataError(f"config key '{path}.fields': empty; map at least one field to a "
                            "JSON key, e.g. {text: body}")
        for field, key in (fields or {}).items():
            if not isinstance(key, str) or not key:
                raise DataError(f"config key '{path}.fields.{field}': expected a JSON key "
                                f"(string), got {shown(key)}")

    def _records(self):
        for path in self.files:
            for number, raw in read_lines(path):
                if not raw.strip():
                    continue
                yield path, number, self._parse(path, number, raw)

    def _parse(self, path, number, raw):
        text = decode_line(path, number, raw).rstrip("\r\n")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise DataError(f"{path}:{number}: invalid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        example = {}
        for field, key in self.fields.items():
            if key not in record:
                hint = "set text_field" if field == "text" and len(self.fields) == 1 else "set fields"
                raise DataError(f"{path}:{number}: no field {shown(key)} "
                                f"(fields: {listed(record, 100) or 'none'}); {hint}")
            value = record[key]
            if field == self.text_field and not isinstance(value, str):
                raise DataError(f"{path}:{number}: field '{key}' must be a string, got "
                                f"{type(value).__name__}")
            if isinstance(value, (list, dict)) or value is None:
                raise DataError(f"{path}:{number}: field '{key}' must be a string or a number, "
                                f"got {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN, Infinity
                raise DataError(f"{path}:{number}: field '{key}' is {json.dumps(value)}; "
                                "expected a string or a finite number")
            if isinstance(value, str):
                require_utf8_text(value, f"{path}:{number}: field '{key}'")
            example[field] = value if isinstance(value, str) else json.dumps(value)
        return example

    def check(self):
        """Parse every record once (streaming); refuse malformed lines and empty corpora."""
        nonempty = 0
        for _, _, example in self._records():  # parse all: a bad line anywhere is reported now
            nonempty += bool(example[self.text_field].strip())
        if not nonempty:
            raise DataError(f"{', '.join(self.files)}: no text (the corpus is empty)")

    def located(self):
        """``("FILE:LINE", example)`` per example, as ``build()`` gives them."""
        fields = list(self.fields)
        labelled = len(fields) > 1  # an example (kept, as CSV rows are), not a corpus line
        for path, number, example in self._records():
            if labelled or example[self.text_field].strip():
                yield f"{path}:{number}", {f: example[f].encode("utf-8") for f in fields}

    def build(self):
        import tensorflow as tf

        fields = list(self.fields)

        def generate():
            for _, example in self.located():
                yield example

        return generator_dataset(generate, {f: tf.TensorSpec([], tf.string) for f in fields})


@hookimpl
def register_data_sources(register):
    register("jsonl", JsonLines)
