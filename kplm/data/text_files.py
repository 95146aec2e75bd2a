"""Plain-text corpora: one example per line, or blank-line-separated documents."""
from typing import Literal

from kplm.data.files import FileSource, check_text_file
from kplm.errors import DataError
from kplm.hookspecs import hookimpl


class TextFiles(FileSource):
    """Streams text from files (globs, ``.gz`` read transparently) without loading them whole.

    Examples are dicts ``{"text": string}``: each non-blank line (``format: lines``) or each run
    of non-blank lines between blank lines, joined by newlines (``format: documents``).

    Args:
        paths: list of str. Files or glob patterns, in order.
        format: ``"lines"`` or ``"documents"``. Defaults to ``"lines"``.
        encoding_errors: ``"strict"`` refuses a file with invalid UTF-8, naming file and line;
            ``"replace"`` substitutes U+FFFD. Defaults to ``"strict"``.
        shuffle_files: bool. Read the files in a shuffled order each epoch. Defaults to False.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> _ = open(path, "w").write("one line\\n\\nanother line\\n")
    >>> [x["text"].numpy() for x in TextFiles(paths=[path]).build()]
    [b'one line', b'another line']
    """

    def __init__(self, paths: list[str], format: Literal["lines", "documents"] = "lines",
                 encoding_errors: Literal["strict", "replace"] = "strict",
                 shuffle_files: bool = False):
        self.paths = paths
        self.format = format
        self.encoding_errors = encoding_errors
        self.shuffle_files = shuffle_files

    def check(self):
        """Files exist and are readable, (strict mode) valid UTF-8, and not all blank."""
        total = sum(check_text_file(f, strict_utf8=self.encoding_errors == "strict")
                    for f in self.files)
        if total == 0:
            raise DataError(f"{', '.join(self.files)}: no text (the corpus is empty)")

    def build(self):
        import tensorflow as tf

        files = tf.data.Dataset.from_tensor_slices(self.files)
        if self.shuffle_files:
            files = files.shuffle(len(self.files))

        def read(path):
            # Compression per file, as a tensor: "GZIP" for *.gz, "" otherwise.
            compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
            # A blank line after each file: documents never run across files.
            return tf.data.TextLineDataset(path, compression_type=compression).concatenate(
                tf.data.Dataset.from_tensors(tf.constant("")))

        lines = files.flat_map(read)
        if self.encoding_errors == "replace":
            lines = lines.map(lambda s: tf.strings.unicode_transcode(
                s, "UTF-8", "UTF-8", errors="replace"))
        # "\r" of CRLF files; a UTF-8 byte-order mark (a file's first line, as the checks read)
        lines = lines.map(lambda s: tf.strings.strip(tf.strings.regex_replace(
            s, "\r$|^\ufeff", "")))
        if self.format == "lines":
            texts = lines.filter(lambda s: tf.strings.length(s) > 0)
        else:
            texts = _documents(lines)
        return texts.map(lambda s: {"text": s})


def _documents(lines):
    """Group lines into blank-line-separated documents, streaming (``Dataset.scan``)."""
    import tensorflow as tf

    def step(buffer, line):
        blank = tf.equal(tf.strings.length(line), 0)
        joined = tf.where(tf.strings.length(buffer) > 0,
                          tf.strings.join([buffer, line], "\n"), line)
        new_buffer = tf.where(blank, tf.constant(""), joined)
        return new_buffer, (blank & (tf.strings.length(buffer) > 0), buffer)

    return (lines.scan(tf.constant(""), step)
            .filter(lambda done, doc: done)
            .map(lambda done, doc: doc))


@hookimpl
def register_data_sources(register):
    register("text_files", TextFiles)
