"""JSON Lines files: one JSON object per line, the text in a named field."""
import json

from kplm.data.files import FileSource, open_lines
from kplm.errors import DataError
from kplm.hookspecs import hookimpl


class JsonLines(FileSource):
    """Streams ``{"text": ...}`` examples from JSONL files (globs, ``.gz``), line by line.

    Blank lines are skipped; a line that is not a JSON object, lacks ``text_field`` or holds a
    non-string there is refused with the file and line number.

    Args:
        paths: list of str. Files or glob patterns.
        text_field: str. The key holding the text. Defaults to ``"text"``.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.jsonl")
    >>> _ = open(path, "w").write('{"body": "hello"}\\n{"body": "world"}\\n')
    >>> [x["text"].numpy() for x in JsonLines(paths=[path], text_field="body").build()]
    [b'hello', b'world']
    """

    def __init__(self, paths: list[str], text_field: str = "text"):
        self.paths = paths
        self.text_field = text_field

    def _records(self):
        for path in self.files:
            try:
                with open_lines(path) as f:
                    for number, raw in enumerate(f, 1):
                        if not raw.strip():
                            continue
                        yield path, number, self._parse(path, number, raw)
            except PermissionError:
                raise DataError(f"{path}: permission denied") from None
            except (OSError, EOFError) as e:
                raise DataError(f"{path}: cannot read: {e}") from None

    def _parse(self, path, number, raw):
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{path}:{number}: invalid UTF-8") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        if self.text_field not in record:
            raise DataError(f"{path}:{number}: no field '{self.text_field}' "
                            f"(fields: {', '.join(record) or 'none'}); set text_field")
        if not isinstance(record[self.text_field], str):
            raise DataError(f"{path}:{number}: field '{self.text_field}' must be a string, got "
                            f"{type(record[self.text_field]).__name__}")
        return record[self.text_field]

    def check(self):
        """Parse every record once (streaming); refuse malformed lines and empty corpora."""
        nonempty = 0
        for _, _, text in self._records():  # parse all: a bad line anywhere is reported now
            nonempty += bool(text.strip())
        if not nonempty:
            raise DataError(f"{', '.join(self.files)}: no text (the corpus is empty)")

    def build(self):
        import tensorflow as tf

        def generate():
            for _, _, text in self._records():
                if text.strip():
                    yield text.encode("utf-8")

        texts = tf.data.Dataset.from_generator(
            generate, output_signature=tf.TensorSpec([], tf.string))
        return texts.map(lambda s: {"text": s})


@hookimpl
def register_data_sources(register):
    register("jsonl", JsonLines)
