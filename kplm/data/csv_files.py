"""CSV and TSV files: named or numbered columns mapped to example fields."""
import csv
import io
from typing import Literal, Optional

from kplm.data.files import FileSource, open_lines
from kplm.errors import DataError
from kplm.hookspecs import hookimpl


class CsvFiles(FileSource):
    """Streams examples from CSV/TSV files, one row each, as ``{field: string}`` dicts.

    ``columns`` maps example fields (``text``, ``text_pair``, ``label``, ...) to a column, by header
    name (``header: true``) or 0-based number. Every row must have every mapped column; a short row,
    an unknown column or invalid UTF-8 is refused with the file and line.

    Args:
        paths: list of str. Files or glob patterns (``.gz`` read transparently).
        columns: mapping of field to column name or number. Defaults to
            ``{"text": 0}``.
        header: bool. The first line of each file names the columns. Defaults to True.
        delimiter: str or None. None: tab for ``.tsv``/``.tab`` files, comma otherwise.
        quoting: ``"auto"`` (none for tab-separated, CSV quoting otherwise), ``"csv"``,
            ``"none"``. Defaults to ``"auto"``.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.tsv")
    >>> _ = open(path, "w").write("label\\tsentence\\npositive\\tgreat film\\n")
    >>> source = CsvFiles(paths=[path], columns={"text": "sentence", "label": "label"})
    >>> [(x["text"].numpy(), x["label"].numpy()) for x in source.build()]
    [(b'great film', b'positive')]
    """

    def __init__(self, paths: list[str], columns: Optional[dict] = None, header: bool = True,
                 delimiter: Optional[str] = None,
                 quoting: Literal["auto", "csv", "none"] = "auto"):
        self.paths = paths
        self.columns = dict(columns or {"text": 0})
        self.header = header
        self.delimiter = delimiter
        self.quoting = quoting
        self.text_field = "text" if "text" in self.columns else next(iter(self.columns))
        for field, column in self.columns.items():
            if not isinstance(column, (int, str)) or isinstance(column, bool):
                raise DataError(f"columns.{field}: expected a column name or number, got {column!r}")
            if isinstance(column, str) and not header:
                raise DataError(f"columns.{field}: column '{column}' is a name, but header is "
                                "false; use a column number")

    def fields(self):
        return list(self.columns)

    def _dialect(self, path):
        name = path[:-3] if path.endswith(".gz") else path
        delimiter = self.delimiter or ("\t" if name.endswith((".tsv", ".tab")) else ",")
        quote = (self.quoting == "csv") or (self.quoting == "auto" and delimiter != "\t")
        return delimiter, (csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)

    def records(self):
        """Yield ``(path, line, {field: str})`` for every row, checking each."""
        for path in self.files:
            delimiter, quoting = self._dialect(path)
            try:
                with open_lines(path) as raw:
                    text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                    reader = csv.reader(text, delimiter=delimiter, quoting=quoting, strict=True)
                    index = None
                    line = 0
                    try:
                        for row in reader:
                            line = reader.line_num
                            if index is None:
                                index = self._index(path, row if self.header else None)
                                if self.header:
                                    continue
                            if not row or not any(cell.strip() for cell in row):
                                continue
                            yield path, line, self._pick(path, line, row, index)
                    except UnicodeDecodeError:
                        raise DataError(f"{path}:{line + 1}: invalid UTF-8") from None
                    except csv.Error as e:
                        raise DataError(f"{path}:{reader.line_num}: malformed row ({e})") from None
            except PermissionError:
                raise DataError(f"{path}: permission denied") from None
            except (OSError, EOFError) as e:
                raise DataError(f"{path}: cannot read: {e}") from None

    def _index(self, path, header):
        index = {}
        for field, column in self.columns.items():
            if isinstance(column, int):
                index[field] = column
            elif column in header:
                index[field] = header.index(column)
            else:
                raise DataError(f"{path}:1: no column '{column}' for field '{field}' "
                                f"(columns: {', '.join(header)})")
        return index

    def _pick(self, path, line, row, index):
        need = max(index.values()) + 1
        if len(row) < need:
            raise DataError(f"{path}:{line}: expected at least {need} columns, found {len(row)}")
        return {field: row[i].strip() for field, i in index.items()}

    def check(self):
        rows = sum(1 for _ in self.records())  # every row: a bad one anywhere is reported now
        if not rows:
            raise DataError(f"{', '.join(self.files)}: no rows")

    def build(self):
        import tensorflow as tf

        fields = self.fields()

        def generate():
            for _, _, record in self.records():
                yield {f: record[f].encode("utf-8") for f in fields}

        return tf.data.Dataset.from_generator(
            generate, output_signature={f: tf.TensorSpec([], tf.string) for f in fields})


@hookimpl
def register_data_sources(register):
    register("csv", CsvFiles)
