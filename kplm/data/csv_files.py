"""CSV and TSV files: named or numbered columns mapped to example fields."""
import csv
from typing import Literal, Optional

from kplm.data.files import FileSource, decode_line, generator_dataset, read_lines
from kplm.errors import DataError, clip, describe, listed, shown
from kplm.hookspecs import hookimpl


class CsvFiles(FileSource):
    """Streams examples from CSV/TSV files, one row each, as ``{field: string}`` dicts.

    ``columns`` maps example fields (``text``, ``text_pair``, ``label``, ...) to a column, by header
    name (``header: true``) or 0-based number. Every row must have as many cells as the header
    (or, without one, as the file's first row; empty cells beyond them, a trailing delimiter,
    are fine): a row with a delimiter too many or too few (a tab inside a sentence, a missing
    one) would shift its columns, so it is refused with the file and line, as are an unknown
    column and invalid UTF-8.

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
        self._headers = {}  # path -> its header cells, as records() read them
        self.check_config({"columns": columns, "header": header, "delimiter": delimiter},
                          "data")
        self.text_field = "text" if "text" in self.columns else next(iter(self.columns))

    @classmethod
    def check_config(cls, section, path):
        """Config-time checks (``kplm.config.check_arguments``): columns and delimiter."""
        columns, delimiter = section.get("columns"), section.get("delimiter")
        if columns is not None and not columns:
            raise DataError(f"config key '{path}.columns': empty; map at least one field to a "
                            "column, e.g. {text: 0}")
        for field, column in (columns or {}).items():
            if isinstance(column, bool) or not isinstance(column, (int, str)) or column == "":
                raise DataError(f"config key '{path}.columns.{field}': expected a column name or "
                                f"number, got {shown(column)}")
            if isinstance(column, int) and column < 0:
                raise DataError(f"config key '{path}.columns.{field}': column numbers start at "
                                f"0, got {column}")
            if isinstance(column, str) and not section.get("header", True):
                raise DataError(f"config key '{path}.columns.{field}': column {shown(column)} is "
                                "a name, but header is false; use a column number")
        if delimiter is not None and (len(delimiter) != 1 or delimiter in "\r\n\"" + "\0"):
            raise DataError(f"config key '{path}.delimiter': expected one character (not a "
                            f"quote or newline), got {shown(delimiter)}")

    def fields(self):
        return list(self.columns)

    def _dialect(self, path):
        name = path[:-3] if path.endswith(".gz") else path
        delimiter = self.delimiter or ("\t" if name.endswith((".tsv", ".tab")) else ",")
        quote = (self.quoting == "csv") or (self.quoting == "auto" and delimiter != "\t")
        return delimiter, (csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)

    def records(self):
        """Yield ``(path, line, {field: str})`` for every row, checking each; ``line`` is the
        physical line the row starts on (a quoted field may span lines)."""
        for path in self.files:
            delimiter, quoting = self._dialect(path)

            def lines(path=path):  # decoded one line at a time: errors name the true line
                for number, raw in read_lines(path):
                    yield decode_line(path, number, raw)

            reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting, strict=True)
            index = width = None
            start = 1
            try:
                for row in reader:
                    line, start = start, reader.line_num + 1
                    if index is None:
                        if self.header and not any(cell.strip() for cell in row):
                            raise DataError(f"{path}:{line}: an empty header line; expected "
                                            "the column names (or set header: false)")
                        index = self._index(path, row if self.header else None)
                        if self.header:
                            self._headers[path] = [cell.strip() for cell in row]
                        names = len(row)
                        while self.header and names and not row[names - 1].strip():
                            names -= 1  # a trailing delimiter names no column
                        width = (names, "the header") if self.header else None
                        if self.header:
                            continue
                    if not row or not any(cell.strip() for cell in row):
                        continue
                    width = width or (len(row), f"line {line}")
                    yield path, line, self._pick(path, line, row, index, width)
            except csv.Error as e:
                raise DataError(f"{path}:{start}: malformed row ({describe(e)})") from None

    def _index(self, path, header):
        index = {}
        for field, column in self.columns.items():
            if isinstance(column, int):
                index[field] = column
            elif column in header:
                index[field] = header.index(column)
            else:
                raise DataError(f"{path}:1: no column {shown(column)} for field '{field}' "
                                f"(columns: {listed(header, 120)})")
        return index

    def _pick(self, path, line, row, index, width):
        need = max(index.values()) + 1
        unquoted = self.quoting == "auto" and self._dialect(path)[1] == csv.QUOTE_NONE
        if len(row) < need:
            hint = ("; a quoted cell spanning lines (a TSV written with CSV quoting)? set "
                    "quoting: csv" if unquoted and row and row[0].startswith('"') else "")
            raise DataError(f"{path}:{line}: expected at least {need} columns, found "
                            f"{len(row)}{hint}")
        for i in index.values():  # pandas' to_csv(sep="\t") quotes: "She said ""hi"""
            cell = row[i].strip()
            if unquoted and len(cell) > 2 and cell[0] == cell[-1] == '"' and '""' in cell[1:-1]:
                raise DataError(f"{path}:{line}: the cell {clip(cell, 60)!r} is CSV-quoted "
                                "(quotes around it, doubled inside), but tab-separated files "
                                "are read unquoted: set quoting: csv to read it (quoting: none "
                                "keeps the quotes)")
        if len(row) < width[0] or any(cell.strip() for cell in row[width[0]:]):
            quoted = "" if self._dialect(path)[1] == csv.QUOTE_NONE else " or a quote"
            raise DataError(f"{path}:{line}: {len(row)} columns where {width[1]} has "
                            f"{width[0]}: a delimiter{quoted} too many or too few in this row "
                            f"(delimiter {self._dialect(path)[0]!r})")
        return {field: row[i].strip() for field, i in index.items()}

    def check(self):
        """Read every row (a bad one anywhere is reported now). With ``header: true`` and
        columns given by number, a first line whose cell recurs as a value of its column in the
        rows below is refused: a file without a header would lose its first example unsaid."""
        numbered = {f: c for f, c in self.columns.items() if isinstance(c, int)}
        rows = 0
        for path, line, example in self.records():
            rows += 1
            header = self._headers.get(path) if self.header else None
            if header == [str(i) for i in range(len(header or []))]:
                header = None  # pandas' integer column names (to_csv of unnamed columns)
            for field, column in numbered.items():
                if header and column < len(header) and header[column] and (
                        example[field] == header[column]):
                    raise DataError(
                        f"{path}:1: read as the header (header: true), but its column {column} "
                        f"({clip(header[column], 60)!r}) is also the {field} of line {line}: a "
                        "file without a header? Set header: false")
        if not rows:
            raise DataError(f"{', '.join(self.files)}: no rows")

    def located(self):
        """``("FILE:LINE", example)`` per row, as ``build()`` gives the examples."""
        fields = self.fields()
        for path, line, record in self.records():
            yield f"{path}:{line}", {f: record[f].encode("utf-8") for f in fields}

    def build(self):
        import tensorflow as tf

        fields = self.fields()

        def generate():
            for _, example in self.located():
                yield example

        return generator_dataset(generate, {f: tf.TensorSpec([], tf.string) for f in fields})


@hookimpl
def register_data_sources(register):
    register("csv", CsvFiles)
