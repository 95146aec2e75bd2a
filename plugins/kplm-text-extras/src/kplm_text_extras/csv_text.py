"""The ``csv_text`` data source: text from one or more columns of CSV/TSV files.

Imports only the standard library and the ``kplm`` facade; TensorFlow is imported inside
``build()``, so listing plugins and checking configs stay fast.
"""
import codecs
import csv
import glob
import gzip
import os
from typing import Literal, Optional, Union

import kplm

_TAB_SUFFIXES = (".tsv", ".tab")
_DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


class CsvText(kplm.DataSource):
    """Streams ``{"text": string}`` examples from a column of CSV or TSV files, row by row.

    Each row gives one example: its ``column`` field, or several fields joined by ``separator``.
    Fields are stripped of surrounding whitespace, empty ones are left out of a join, and rows
    with no text are skipped. Quoted fields may hold delimiters and newlines (Python's ``csv``
    module reads the files, one row at a time: nothing is loaded whole). A row whose number of
    fields differs from the header's, a missing column or a bad quote is refused with the file
    and line, by ``check()`` and by ``build()``.

    Args:
        paths: list of str. Files or glob patterns, in order; ``*.gz`` files are decompressed.
        column: str, int, or a list of them. The text column: a header name, or a 0-based index
            (the only choice when ``header`` is false). A list joins several columns with
            ``separator``. Defaults to ``"text"``.
        header: bool. The first row of each file names the columns. Defaults to True.
        delimiter: str or None. The one-character field delimiter (``tab`` is accepted for a
            tab); None picks a tab for ``*.tsv`` and ``*.tab`` files and a comma otherwise.
            Defaults to None.
        separator: str. Put between the fields of several columns. Defaults to ``" "``.
        encoding_errors: ``"strict"`` refuses invalid UTF-8, naming file and line;
            ``"replace"`` substitutes U+FFFD. Defaults to ``"strict"``.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "reviews.csv")
    >>> _ = open(path, "w").write('id,title,body\\n1,Fine,"Works, mostly."\\n2,Bad,Broke\\n')
    >>> [x["text"].numpy() for x in CsvText(paths=[path], column="body").build()]
    [b'Works, mostly.', b'Broke']
    >>> [text for _, _, text in CsvText(paths=[path], column=["title", 2]).rows()]
    ['Fine Works, mostly.', 'Bad Broke']

    In a config (``kplm tokenizer train``, ``kplm pretrain``)::

        data:
          train: {name: csv_text, paths: [reviews/*.tsv], column: body}
    """

    def __init__(
        self,
        paths: list[str],
        column: Union[str, int, list[Union[str, int]]] = "text",
        header: bool = True,
        delimiter: Optional[str] = None,
        separator: str = " ",
        encoding_errors: Literal["strict", "replace"] = "strict",
    ):
        self.paths = paths
        self.column = column
        self.header = header
        self.delimiter = delimiter
        self.separator = separator
        self.encoding_errors = encoding_errors
        self._config = {"paths": paths, "column": column, "header": header,
                        "delimiter": delimiter, "separator": separator,
                        "encoding_errors": encoding_errors}
        self._columns = _check_columns(column, header)
        self._delimiter = _check_delimiter(delimiter)
        self._files = None

    @property
    def files(self):
        """The files ``paths`` names, globs expanded (in order)."""
        if self._files is None:
            self._files = _expand_paths(self.paths)
        return self._files

    # --- reading (plain Python) -----------------------------------------------------------
    def rows(self):
        """Yield ``(path, line, text)`` for each row with text, streaming, without TensorFlow.

        ``line`` is the 1-based line the row starts on. Raises ``kplm.DataError`` naming the
        file and line of the first malformed row.
        """
        for path in self.files:
            yield from self._file_rows(path)

    def _file_rows(self, path):
        delimiter = self._delimiter or ("\t" if _stem(path).endswith(_TAB_SUFFIXES) else ",")
        try:
            with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
                reader = csv.reader(_decoded_lines(f, path, self.encoding_errors),
                                    delimiter=delimiter, strict=True)
                indices = None if self.header else self._columns
                width = None  # number of fields of the header row
                while True:
                    start = reader.line_num + 1
                    try:
                        row = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as e:
                        hint = " (an unclosed quote?)" if "field larger" in str(e) else ""
                        raise kplm.DataError(f"{path}:{start}: malformed row: {e}{hint}") from None
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # a blank line
                    if indices is None:
                        indices, width = self._header_indices(path, start, row, delimiter), len(row)
                        continue
                    if width is not None and len(row) != width:
                        raise kplm.DataError(
                            f"{path}:{start}: malformed row: {len(row)} fields, the header has "
                            f"{width}{_delimiter_hint(row, delimiter)}")
                    if max(indices) >= len(row):
                        raise kplm.DataError(
                            f"{path}:{start}: malformed row: {len(row)} fields, column "
                            f"{max(indices)} needs {max(indices) + 1}{_delimiter_hint(row, delimiter)}")
                    fields = [row[i].strip() for i in indices]
                    text = self.separator.join(f for f in fields if f)
                    if text:
                        yield path, start, text
        except PermissionError:
            raise kplm.DataError(f"{path}: permission denied") from None
        except (OSError, EOFError) as e:
            raise kplm.DataError(f"{path}: cannot read: {e}") from None

    def _header_indices(self, path, line, names, delimiter):
        indices = []
        for column in self._columns:
            if isinstance(column, int):
                if column >= len(names):
                    raise kplm.DataError(
                        f"{path}:{line}: no column {column}: the header has {len(names)} "
                        f"({', '.join(names)}){_delimiter_hint(names, delimiter)}")
                indices.append(column)
            elif column in names:
                indices.append(names.index(column))
            else:
                raise kplm.DataError(
                    f"{path}:{line}: no column '{column}' in the header (columns: "
                    f"{', '.join(names)}); set column{_delimiter_hint(names, delimiter)}")
        return indices

    # --- the DataSource contract ----------------------------------------------------------
    def check(self):
        """Read every row once (streaming): refuse malformed rows, missing columns, no text."""
        if sum(1 for _ in self.rows()) == 0:
            raise kplm.DataError(f"{', '.join(self.files)}: no text in column {self.column!r}")

    def size_bytes(self):
        """Bytes on disk of all files (compressed size for ``.gz``)."""
        return sum(os.path.getsize(f) for f in self.files)

    def build(self):
        """A ``tf.data.Dataset`` of ``{"text": scalar string}``, read lazily from the files."""
        import tensorflow as tf

        def generate():
            for _, _, text in self.rows():
                yield text.encode("utf-8")

        texts = tf.data.Dataset.from_generator(
            generate, output_signature=tf.TensorSpec([], tf.string))
        return texts.map(lambda s: {"text": s})


def _check_columns(column, header):
    columns = column if isinstance(column, (list, tuple)) else [column]
    if not columns:
        raise kplm.ConfigError("csv_text: column is an empty list; name at least one column")
    for c in columns:
        if isinstance(c, bool) or not isinstance(c, (int, str)):
            raise kplm.ConfigError(f"csv_text: column {c!r} must be a header name or a 0-based index")
        if isinstance(c, int) and c < 0:
            raise kplm.ConfigError(f"csv_text: column {c} must be a 0-based index (0 or more)")
        if isinstance(c, str) and not header:
            raise kplm.ConfigError(f"csv_text: column '{c}' is a name but header is false; "
                                   f"give a 0-based column index")
    return list(columns)


def _check_delimiter(delimiter):
    if delimiter is None:
        return None
    delimiter = _DELIMITER_ALIASES.get(delimiter, delimiter)
    if len(delimiter) != 1 or delimiter in "\"\r\n":
        raise kplm.ConfigError(f"csv_text: delimiter must be one character (or 'tab'), "
                               f"got {delimiter!r}")
    return delimiter


def _expand_paths(patterns):
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise kplm.DataError("csv_text: no data files given in paths")
    files = []
    for pattern in patterns:
        matches = sorted(m for m in glob.glob(os.path.expanduser(pattern), recursive=True)
                         if os.path.isfile(m))
        if not matches:
            raise kplm.DataError(f"paths: no file matches {pattern!r}")
        files.extend(matches)
    return files


def _stem(path):
    path = path.lower()
    return path[:-3] if path.endswith(".gz") else path


def _decoded_lines(f, path, errors):
    """Decode a binary file line by line, so that invalid UTF-8 is reported with its line."""
    for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]  # spreadsheets write a BOM before the header
        try:
            yield raw.decode("utf-8", errors)
        except UnicodeDecodeError as e:
            raise kplm.DataError(
                f"{path}:{number}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                f"{e.start + 1}); fix the file or set encoding_errors: replace") from None


def _delimiter_hint(row, delimiter):
    """A hint when a row looks split on the wrong delimiter."""
    for other, name in (("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "pipe")):
        if other != delimiter and len(row) == 1 and other in row[0]:
            return f" (is the file {name}-separated? set delimiter: {name})"
    return ""
