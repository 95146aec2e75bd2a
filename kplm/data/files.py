"""File helpers shared by the data sources: glob expansion and streaming checks (no TensorFlow)."""
import atexit
import gc
import glob
import gzip
import os
import zlib

from kplm.components import DataSource
from kplm.errors import DataError, describe, shown


class FileSource(DataSource):
    """Base of the data sources that read files named by ``paths`` (globs expanded once)."""

    paths = ()
    _files = None

    @property
    def files(self):
        """The matching files, in order; ``DataError`` when a pattern matches nothing."""
        if self._files is None:
            self._files = expand_paths(self.paths, "paths")
        return self._files

    def size_bytes(self):
        return sum(os.path.getsize(f) for f in self.files)


#: A line longer than this many bytes is refused (a binary file, or text without newlines):
#: every source reads a line whole.
MAX_LINE_BYTES = 1 << 26


def expand_paths(patterns, key):
    """Expand globs (``~`` and ``**`` too), in order, refusing patterns that match nothing."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError(f"{key}: no data files given")
    files = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or "\0" in pattern:
            raise DataError(f"{key}: {shown(pattern)} is not a file path or pattern")
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        found = [m for m in matches if os.path.isfile(m)]
        if not found and matches and all(os.path.isdir(m) for m in matches):
            raise DataError(f"{key}: {shown(pattern)} is a directory; name the files in it "
                            f"(e.g. {shown(os.path.join(pattern, '*.txt'))})")
        odd = [m for m in matches if not os.path.isdir(m)]
        if not found and odd:
            what = ("a symbolic link to nothing (or a loop)" if not os.path.exists(odd[0])
                    else "not a regular file (a device, a pipe or a socket)")
            raise DataError(f"{key}: {shown(odd[0])} is {what}; expected a data file")
        if not found:
            raise DataError(f"{key}: no file matches {shown(pattern)}")
        files.extend(found)
    return files


def open_lines(path):
    """Binary line iterator over a plain or gzip file."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_lines(path):
    """Yield ``(line number, bytes)`` for each line of a plain or gzip file (newline kept),
    refusing lines over ``MAX_LINE_BYTES``; a missing, unreadable or damaged (gzip) file is a
    ``DataError`` naming it. Every line-based source reads through this, so line numbers are
    physical lines, counted from 1."""
    try:
        with open_lines(path) as f:
            number = 0
            while True:
                line = f.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                number += 1
                if len(line) > MAX_LINE_BYTES:
                    raise DataError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} "
                                    "bytes (a binary file, or text without newlines?)")
                yield number, line
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {describe(e)}") from None


def decode_line(path, number, raw, nul_ok=False, fix="fix the file (it must be UTF-8 text)"):
    """``raw`` (one line's bytes) as text; invalid UTF-8 or a NUL byte (a binary or UTF-16
    file) is a ``DataError`` naming the file, line and column. A UTF-8 byte-order mark
    starting line 1 is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{number}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}); {fix}") from None
    if number == 1 and text.startswith("\ufeff"):
        text = text[1:]
    if not nul_ok and "\0" in text:
        raise DataError(f"{path}:{number}: a NUL byte at column {text.index(chr(0)) + 1} (a "
                        "binary or UTF-16 file?)")
    return text


def check_text_file(path, strict_utf8=True, max_bytes=None):
    """Stream through ``path`` checking it is readable (and valid UTF-8 without NUL bytes when
    ``strict_utf8``).

    Returns the number of non-blank lines seen. Raises ``DataError`` naming the file and line.
    """
    count = seen = 0
    for number, line in read_lines(path):
        if strict_utf8:
            decode_line(path, number, line, fix="fix the file or set encoding_errors: replace")
        if line.strip():
            count += 1
        seen += len(line)
        if max_bytes is not None and seen >= max_bytes and count:
            break
    return count


def shown_input(name):
    """How errors name an input stream: ``stdin`` for ``-`` / ``<stdin>``, else ``name``."""
    return "stdin" if name in ("-", "<stdin>") else name


def input_lines(stream, name):
    """Yield ``(line number, text)`` for each line of a binary ``stream`` (``kplm predict
    --input``, ``kplm generate --file``, stdin), line end removed; invalid UTF-8, a NUL byte or
    a line over ``MAX_LINE_BYTES`` is a ``DataError`` naming ``name`` and the line."""
    name = shown_input(name)
    number = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 1)
        except OSError as e:
            raise DataError(f"{name}: cannot read: {describe(e)}") from None
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"{name}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes")
        yield number, decode_line(name, number, raw).rstrip("\r\n")


def generator_dataset(generate, output_signature):
    """``tf.data.Dataset.from_generator(generate, output_signature=...)`` for the sources that
    parse files in Python (csv, jsonl, conll, squad, parallel_text).

    Keras and tf.data leave iterators of such datasets in reference cycles; collected only when
    the interpreter is already gone, TensorFlow prints "Error occurred when finalizing
    GeneratorDataset iterator: ... Python interpreter state is not initialized". A garbage
    collection registered with ``atexit`` (after TensorFlow's own handlers, so it runs first)
    releases them while Python still runs.
    """
    import tensorflow as tf
    global _collecting_at_exit
    if not _collecting_at_exit:
        atexit.register(gc.collect)
        _collecting_at_exit = True
    return tf.data.Dataset.from_generator(generate, output_signature=output_signature)


_collecting_at_exit = False
