"""CoNLL files: one token per line with its tag, a blank line between sentences."""
from typing import Optional

from kplm.data.files import FileSource, decode_line, generator_dataset, read_lines
from kplm.errors import DataError
from kplm.hookspecs import hookimpl


class ConllFiles(FileSource):
    """Streams sentences from CoNLL files as ``{"tokens": [n] string, "tags": [n] string}``.

    Each non-blank line holds one token and its columns (split on ``delimiter``; None: any
    whitespace, so tokens never contain whitespace); a blank (or whitespace-only) line ends a
    sentence, and so does a ``-DOCSTART-`` line (skipped). The first token line of a file fixes
    its column count: a line with another count, or too few columns for ``token_column`` /
    ``tag_column``, is refused with the file and line, as is invalid UTF-8.

    Args:
        paths: list of str. Files or glob patterns (``.gz`` read transparently).
        token_column: int. Column of the token (negative: from the end). Defaults to 0.
        tag_column: int. Column of the tag (negative: from the end). Defaults to -1.
        delimiter: str or None. Column separator; None splits on any whitespace. Defaults to None.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.conll")
    >>> _ = open(path, "w").write("Paris B-LOC\\nis O\\n\\nHi O\\n")
    >>> [list(x["tags"].numpy()) for x in ConllFiles(paths=[path]).build()]
    [[b'B-LOC', b'O'], [b'O']]
    """

    text_field = "tokens"

    def __init__(self, paths: list[str], token_column: int = 0, tag_column: int = -1,
                 delimiter: Optional[str] = None):
        self.paths = paths
        self.token_column, self.tag_column = token_column, tag_column
        self.delimiter = delimiter
        if delimiter == "":
            raise DataError("delimiter: must not be empty (None splits on whitespace)")

    def fields(self):
        return ["tokens", "tags"]

    def records(self):
        """Yield ``(path, first_line, tokens, tags)`` per sentence, checking every line."""
        need = max(self.token_column + 1 if self.token_column >= 0 else -self.token_column,
                   self.tag_column + 1 if self.tag_column >= 0 else -self.tag_column)
        for path in self.files:
            width, start, tokens, tags = None, 0, [], []
            for number, raw in read_lines(path):
                line = decode_line(path, number, raw).rstrip("\r\n")
                if not line.strip():
                    if tokens:
                        yield path, start, tokens, tags
                    tokens, tags = [], []
                    continue
                columns = line.split(self.delimiter)
                if self.delimiter is not None:
                    columns = [c.strip() for c in columns]
                if columns[0] == "-DOCSTART-":  # a document boundary ends a sentence too
                    if tokens:
                        yield path, start, tokens, tags
                    tokens, tags = [], []
                    continue
                if len(columns) < need:
                    raise DataError(f"{path}:{number}: expected at least {need} columns, "
                                    f"found {len(columns)}")
                if width is None:
                    width = len(columns)
                    if self.token_column % width == self.tag_column % width:
                        raise DataError(
                            f"{path}:{number}: token_column {self.token_column} and tag_column "
                            f"{self.tag_column} are the same column of {width}: expected a "
                            "token and a tag column")
                elif len(columns) != width:
                    raise DataError(f"{path}:{number}: expected {width} columns (as on the "
                                    f"first token line), found {len(columns)}")
                token, tag = columns[self.token_column], columns[self.tag_column]
                if not token or not tag:
                    raise DataError(f"{path}:{number}: empty token or tag")
                if not tokens:
                    start = number
                tokens.append(token)
                tags.append(tag)
            if tokens:
                yield path, start, tokens, tags

    def check(self):
        sentences = sum(1 for _ in self.records())  # every line: a bad one anywhere is reported now
        if not sentences:
            raise DataError(f"{', '.join(self.files)}: no sentences")


    def located(self):
        """``("FILE:LINE", example)`` per sentence (its first token's line)."""
        import numpy as np
        for path, start, tokens, tags in self.records():
            yield f"{path}:{start}", {"tokens": np.array([t.encode("utf-8") for t in tokens]),
                                      "tags": np.array([t.encode("utf-8") for t in tags])}

    def build(self):
        import tensorflow as tf

        def generate():
            for _, _, tokens, tags in self.records():
                yield {"tokens": [t.encode("utf-8") for t in tokens],
                       "tags": [t.encode("utf-8") for t in tags]}

        return generator_dataset(generate, {"tokens": tf.TensorSpec([None], tf.string),
                                            "tags": tf.TensorSpec([None], tf.string)})

    def texts(self):
        """Sentences as scalar strings (tokens joined by spaces), for learning a tokenizer."""
        import tensorflow as tf
        return self.build().map(lambda ex: tf.strings.reduce_join(ex["tokens"], separator=" "))


@hookimpl
def register_data_sources(register):
    register("conll", ConllFiles)
