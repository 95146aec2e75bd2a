"""The csv_text data source: columns by name and index, TSV, joins, and refused inputs."""
import doctest
import gzip
import importlib.util
import os
import sys

import pytest

import kplm

# Run from a kplm checkout without installing this package: use the sources. (No conftest.py
# for this: kplm's own tests import helpers from theirs, and two would clash.)
if importlib.util.find_spec("kplm_text_extras") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "src"))

from kplm_text_extras import csv_text, plugin  # noqa: E402
from kplm_text_extras.csv_text import CsvText  # noqa: E402


def write(tmp_path, name, text):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def texts(source):
    return [text for _, _, text in source.rows()]


def test_named_column_with_header(tmp_path):
    path = write(tmp_path, "a.csv", 'id,text\n1,"Hello, world"\n2,"He said ""hi""."\n')
    assert texts(CsvText(paths=[path])) == ["Hello, world", 'He said "hi".']


def test_numbered_column_without_header(tmp_path):
    path = write(tmp_path, "a.csv", "1,first line\n2,second line\n")
    source = CsvText(paths=[path], column=1, header=False)
    source.check()
    assert texts(source) == ["first line", "second line"]


def test_tsv_delimiter_from_suffix_and_option(tmp_path):
    tsv = write(tmp_path, "a.tsv", "label\tsentence\npos\tgood, really\nneg\tbad\n")
    assert texts(CsvText(paths=[tsv], column="sentence")) == ["good, really", "bad"]
    txt = write(tmp_path, "b.txt", "label|sentence\npos|fine\n")
    assert texts(CsvText(paths=[txt], column="sentence", delimiter="|")) == ["fine"]
    assert texts(CsvText(paths=[tsv], column=1, delimiter="tab")) == ["good, really", "bad"]


def test_several_columns_joined_and_blank_rows_skipped(tmp_path):
    path = write(tmp_path, "a.csv", "title,body\nA title,The body\n\n,only body\n , \n")
    source = CsvText(paths=[path], column=["title", "body"], separator=" | ")
    assert texts(source) == ["A title | The body", "only body"]


def test_multiline_fields_bom_gzip_and_globs(tmp_path):
    write(tmp_path, "part1.csv", '\ufefftext\n"two\nlines"\n')
    write(tmp_path, "part2.csv.gz", "text\nzipped\n")
    source = CsvText(paths=[str(tmp_path / "part*")])
    assert [(line, text) for _, line, text in source.rows()] == [(2, "two\nlines"), (2, "zipped")]


def test_build_streams_text_dicts(tmp_path):
    path = write(tmp_path, "a.csv", "text\nalpha\nbeta\n")
    source = CsvText(paths=[path])
    assert [x["text"].numpy() for x in source.build()] == [b"alpha", b"beta"]
    assert [t.numpy() for t in source.texts()] == [b"alpha", b"beta"]
    assert source.size_bytes() == len("text\nalpha\nbeta\n")


def test_malformed_row_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.csv", "id,text\n1,fine\n2,too,many\n3,fine\n")
    with pytest.raises(kplm.DataError, match=r"bad\.csv:3: malformed row: 3 fields, the header has 2"):
        CsvText(paths=[path]).check()
    quoted = write(tmp_path, "quote.csv", 'id,text\n1,fine\n\n2,"oops"x\n')
    with pytest.raises(kplm.DataError, match=r"quote\.csv:4: malformed row"):
        CsvText(paths=[quoted]).check()
    short = write(tmp_path, "short.csv", "1,a\n2\n")
    with pytest.raises(kplm.DataError, match=r"short\.csv:2: .* column 1 needs 2"):
        CsvText(paths=[short], column=1, header=False).check()


def test_invalid_utf8_names_line_unless_replaced(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(kplm.DataError, match=r"latin1\.csv:2: invalid UTF-8"):
        CsvText(paths=[str(path)]).check()
    assert texts(CsvText(paths=[str(path)], encoding_errors="replace")) == ["caf\ufffd"]


def test_missing_column_lists_the_header(tmp_path):
    path = write(tmp_path, "a.csv", "id,body\n1,x\n")
    with pytest.raises(kplm.DataError, match=r"a\.csv:1: no column 'text' in the header "
                                             r"\(columns: id, body\); set column"):
        CsvText(paths=[path]).check()
    tsv_as_csv = write(tmp_path, "b.csv", "id\ttext\n1\tx\n")
    with pytest.raises(kplm.DataError, match="tab-separated"):
        CsvText(paths=[tsv_as_csv]).check()


def test_refused_options_and_inputs(tmp_path):
    with pytest.raises(kplm.ConfigError, match="header is false"):
        CsvText(paths=["x.csv"], header=False)
    with pytest.raises(kplm.ConfigError, match="one character"):
        CsvText(paths=["x.csv"], delimiter=";;")
    with pytest.raises(kplm.ConfigError, match="0-based"):
        CsvText(paths=["x.csv"], column=-1, header=False)
    with pytest.raises(kplm.DataError, match="no file matches"):
        CsvText(paths=[str(tmp_path / "missing*.csv")]).check()
    empty = write(tmp_path, "empty.csv", "text\n\n")
    with pytest.raises(kplm.DataError, match="no text"):
        CsvText(paths=[empty]).check()


def test_registers_through_the_hook():
    registered = {}
    plugin.register_data_sources(register=lambda name, cls: registered.setdefault(name, cls))
    assert registered == {"csv_text": CsvText}
    assert issubclass(CsvText, kplm.DataSource)


def test_docstring_example_runs():
    result = doctest.testmod(csv_text, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def test_stats_command(tmp_path):
    from click.testing import CliRunner

    path = write(tmp_path, "a.tsv", "label\tsentence\npos\tgood, really\nneg\tbad\n")
    result = CliRunner().invoke(plugin.text_extras_stats, [path, "-c", "sentence", "--json"])
    assert result.exit_code == 0, result.output
    assert '"rows": 2' in result.output and '"words": 3' in result.output
