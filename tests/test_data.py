"""Data sources: text files (lines, documents, gzip, globs), JSONL, and their errors."""
import gzip

import pytest

from kplm.data.jsonl import JsonLines
from kplm.data.text_files import TextFiles
from kplm.errors import DataError


def texts(source):
    return [x["text"].numpy().decode() for x in source.build()]


def test_lines_skip_blanks_and_strip(tmp_path):
    (tmp_path / "a.txt").write_text(" first \n\n second\r\n")
    assert texts(TextFiles(paths=[str(tmp_path / "a.txt")])) == ["first", "second"]
    # a UTF-8 byte-order mark (Windows editors write one) is not text of the first line
    (tmp_path / "bom.txt").write_bytes("\ufeffthe first\r\nsecond\r\n".encode("utf-8"))
    assert texts(TextFiles(paths=[str(tmp_path / "bom.txt")])) == ["the first", "second"]


def test_documents_never_cross_files(tmp_path):
    (tmp_path / "a.txt").write_text("a1\na2\n\n\nb1\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("c1\n\nd1\nd2")
    source = TextFiles(paths=[str(tmp_path / "*.txt*")], format="documents")
    source.check()
    assert texts(source) == ["a1\na2", "b1", "c1", "d1\nd2"]


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\nbad \xff line\n")
    with pytest.raises(DataError, match=rf"{path}:2: invalid UTF-8 \(byte 0xff at column 5\)"):
        TextFiles(paths=[str(path)]).check()
    replaced = TextFiles(paths=[str(path)], encoding_errors="replace")
    replaced.check()
    assert texts(replaced) == ["good line", "bad \ufffd line"]


def test_empty_corpus_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(DataError, match="the corpus is empty"):
        TextFiles(paths=[str(tmp_path / "empty.txt")]).check()
    with pytest.raises(DataError, match="no file matches"):
        TextFiles(paths=[str(tmp_path / "nope*.txt")]).check()


def test_jsonl_field_and_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"body": "hello"}\n\n{"body": "world", "id": 2}\n')
    source = JsonLines(paths=[str(path)], text_field="body")
    source.check()
    assert texts(source) == ["hello", "world"]
    with pytest.raises(DataError, match=rf"{path}:1: no field 'text'"):
        JsonLines(paths=[str(path)]).check()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "unterminated}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: invalid JSON"):
        JsonLines(paths=[str(bad)]).check()
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=rf"{wrong}:1: field 'text' must be a string"):
        JsonLines(paths=[str(wrong)]).check()


def test_jsonl_fields_for_fine_tuning(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"review": "great", "stars": 5}\n{"review": "awful", "stars": 1}\n'
                    '\n{"review": "", "stars": 3}\n')  # an empty review is an example, kept
    source = JsonLines(paths=[str(path)], fields={"text": "review", "label": "stars"})
    source.check()
    assert [(x["text"].numpy(), x["label"].numpy()) for x in source.build()] == [
        (b"great", b"5"), (b"awful", b"1"), (b"", b"3")]
    corpus = JsonLines(paths=[str(path)], text_field="review")  # a corpus: no empty lines
    assert [x["text"].numpy() for x in corpus.build()] == [b"great", b"awful"]
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"review": "ok", "stars": [1, 2]}\n')
    with pytest.raises(DataError, match=rf"{nested}:1: field 'stars' must be a string or a number"):
        JsonLines(paths=[str(nested)], fields={"text": "review", "label": "stars"}).check()


def test_mixture_reads_every_source_once_per_pass_interleaved_and_resolves_fields(tmp_path):
    """``mixture``: each example of each source once per pass (``repeats`` more), in a seeded
    random interleaving; labelled sources keep their labels, mixed kinds give text only."""
    from kplm.data.mixture import Mixture
    (tmp_path / "wiki.txt").write_text("".join(f"wiki {i}\n" for i in range(40)))
    (tmp_path / "a.tsv").write_text("sentence\tlabel\n" + "".join(f"a {i}\t1\n" for i in range(20)))
    (tmp_path / "b.tsv").write_text("label\ttext\n" + "".join(f"0\tb {i}\n" for i in range(5)))
    wiki = {"name": "text_files", "paths": [str(tmp_path / "wiki.txt")]}
    a = {"name": "csv", "paths": [str(tmp_path / "a.tsv")],
         "columns": {"text": "sentence", "label": "label"}}
    b = {"name": "csv", "paths": [str(tmp_path / "b.tsv")],
         "columns": {"text": "text", "label": "label"}}
    mix = Mixture(sources=[wiki, a], repeats=[1, 2], seed=3)
    mix.check()
    got = texts(mix)
    assert sorted(got) == sorted([f"wiki {i}" for i in range(40)] + [f"a {i}" for i in range(20)] * 2)
    first_half = got[:len(got) // 2]
    assert any(t.startswith("a ") for t in first_half) and any(t.startswith("wiki") for t in first_half)
    assert got == texts(Mixture(sources=[wiki, a], repeats=[1, 2], seed=3))  # seeded
    assert got != texts(Mixture(sources=[wiki, a], repeats=[1, 2], seed=4))
    assert list(next(iter(mix.build()))) == ["text"]  # text files + CSV: text only
    labelled = list(Mixture(sources=[a, b]).build())
    assert {tuple(sorted(x)) for x in labelled} == {("label", "text")} and len(labelled) == 25
    # sources sharing another text field keep it (a SQuAD head reads "context", say)
    body = [{**a, "columns": {"body": "sentence", "label": "label"}},
            {**b, "columns": {"body": "text", "label": "label"}}]
    kept = Mixture(sources=body)
    assert kept.text_field == "body"
    assert {tuple(sorted(x)) for x in kept.build()} == {("body", "label")}
    assert sorted(t.decode() for t in kept.texts().as_numpy_iterator())[:2] == ["a 0", "a 1"]


@pytest.mark.parametrize("section, message", [
    ({"name": "mixture", "sources": [{"name": "text_files", "paths": ["x.txt"]}]},
     "'data.train.sources': expected a list of at least two data source sections"),
    ({"name": "mixture", "sources": [{"name": "text_files", "paths": ["x.txt"]},
                                     {"name": "csv", "paths": ["x.tsv"], "colums": {}}]},
     "unknown config key 'data.train.sources[1].colums'"),
    ({"name": "mixture", "sources": [{"name": "text_files", "paths": ["x.txt"]},
                                     {"name": "text_files", "paths": ["y.txt"]}],
      "repeats": [1, 0]},
     "'data.train.repeats': expected one integer >= 1 per source (2), got [1, 0]"),
])
def test_mixture_config_errors_name_the_key(section, message):
    from kplm.config import check_data
    from kplm.errors import ConfigError
    from kplm.plugins import get_registry
    with pytest.raises(ConfigError) as e:
        check_data({"data": {"train": section}}, ["train"], get_registry())
    assert message in str(e.value)


def test_a_headerless_file_read_with_header_true_is_refused(tmp_path):
    """CoLA's TSV has no header: with ``header: true`` (the default) and numbered columns its
    first example was taken for column names, unsaid. Its label cell recurring as a label
    below gives it away; a real header with numbered columns still reads."""
    from kplm.data.csv_files import CsvFiles
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tOur friends won't buy this analysis.\n"
                    "gj04\t1\t\tOne more pseudo generalization and I'm giving up.\n"
                    "gj04\t0\t*\tThey drank the pub.\n")
    columns = {"text": 3, "label": 1}
    with pytest.raises(DataError, match=r"cola\.tsv:1: read as the header \(header: true\), but "
                                        r"its column 1 \('1'\) is also the label of line 2: a "
                                        r"file without a header\? Set header: false"):
        CsvFiles(paths=[str(cola)], columns=columns).check()
    source = CsvFiles(paths=[str(cola)], columns=columns, header=False)
    source.check()
    assert [x["label"] for _, x in source.located()] == [b"1", b"1", b"0"]
    headed = tmp_path / "headed.tsv"
    headed.write_text("source\tlabel\tmark\tsentence\ngj04\t1\t\tfine.\ngj04\t0\t*\tbad.\n")
    CsvFiles(paths=[str(headed)], columns=columns).check()
    # pandas writes integer column names for unnamed columns: a header, even where a label
    # below is "1"
    pandas = tmp_path / "pandas.csv"
    pandas.write_text("0,1\nreview one,0\nreview two,1\n")
    source = CsvFiles(paths=[str(pandas)], columns={"text": 0, "label": 1})
    source.check()
    assert [x["label"] for _, x in source.located()] == [b"0", b"1"]


def test_held_out_file_quirks_are_read_right_or_refused(tmp_path):
    """Quirks of real exports: a cut emoji's lone surrogate in JSON (a TensorFlow traceback
    later), JSON's NaN as a label (learned as a class "NaN"), -DOCSTART- with no blank line
    after a sentence (two documents' sentences merged), a TSV written with CSV quoting (the
    quotes kept as text)."""
    from kplm.data.conll import ConllFiles
    from kplm.data.csv_files import CsvFiles
    from kplm.data.squad import SquadFiles
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "fine", "label": 1}\n{"text": "cut \\ud83d", "label": 0}\n')
    fields = {"text": "text", "label": "label"}
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text': holds an unpaired surrogate "
                                        r"\(\\ud83d at character 5\)"):
        JsonLines(paths=[str(jsonl)], fields=fields).check()
    jsonl.write_text('{"text": "fine", "label": 1}\n{"text": "odd", "label": NaN}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'label' is NaN; expected a string "
                                        r"or a finite number"):
        JsonLines(paths=[str(jsonl)], fields=fields).check()
    squad = tmp_path / "s.json"
    squad.write_text('{"data": [{"paragraphs": [{"context": "Ada \\udc00 wrote it.", "qas": '
                     '[{"id": "q1", "question": "Who?", "answers": [{"text": "Ada", '
                     '"answer_start": 0}]}]}]}]}')
    with pytest.raises(DataError, match=r"s\.json/data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id q1\): "
                                        r"the context: holds an unpaired surrogate"):
        SquadFiles(paths=[str(squad)]).check()
    conll = tmp_path / "d.conll"
    conll.write_text("Paris B-LOC\nlast O\n-DOCSTART- -X- -X- O\nBob B-PER\n")
    assert [tokens for _, _, tokens, _ in ConllFiles(paths=[str(conll)]).records()] == [
        ["Paris", "last"], ["Bob"]]
    tsv = tmp_path / "pandas.tsv"
    tsv.write_text('sentence\tlabel\n"She said ""hi"" to me"\t1\nplain\t0\n')
    columns = {"text": "sentence", "label": "label"}
    with pytest.raises(DataError, match=r"pandas\.tsv:2: the cell .* is CSV-quoted .* set "
                                        r"quoting: csv"):
        CsvFiles(paths=[str(tsv)], columns=columns).check()
    assert [x["text"] for _, x in CsvFiles(paths=[str(tsv)], columns=columns,
                                           quoting="csv").located()][0] == b'She said "hi" to me'
