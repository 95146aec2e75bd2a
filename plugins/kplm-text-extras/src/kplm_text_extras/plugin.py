"""The kplm plugin module (entry point ``text_extras`` in the ``kplm`` group).

kplm imports this module at start-up and calls the ``@kplm.hookimpl`` functions below: one per
hook this plugin implements (see ``kplm/hookspecs.py`` for all of them). Keep it light: no
TensorFlow here, so that ``kplm --help`` and ``kplm plugins`` stay fast.
"""
import json

import click

import kplm
from kplm_text_extras.csv_text import CsvText


@kplm.hookimpl
def register_data_sources(register):
    # A registry name says what, not who: configs use it as ``data.train.name: csv_text``.
    register("csv_text", CsvText)


@kplm.hookimpl
def register_commands(cli):
    cli.add_command(text_extras_stats)


@click.command("text-extras-stats")
@click.argument("sources", nargs=-1, required=True, metavar="CONFIG_OR_FILES...")
@click.option("--column", "-c", "columns", multiple=True, metavar="NAME|INDEX",
              help="Text column: a header name or a 0-based index; repeat to join several. "
                   "Default: text (or 0 with --no-header).")
@click.option("--delimiter", "-d", default=None,
              help="Field delimiter (one character, or 'tab'). Default: tab for *.tsv, else comma.")
@click.option("--no-header", is_flag=True, help="The files have no header row.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def text_extras_stats(sources, columns, delimiter, no_header, as_json):
    """Count rows, characters and words of the text column of CSV/TSV files.

    CONFIG_OR_FILES is one YAML config, whose csv_text data sections (data.train,
    data.validation, ...) are read as configured, or CSV/TSV files and globs read with the
    options below. Malformed rows are reported with their file and line.
    """
    if len(sources) == 1 and sources[0].endswith((".yaml", ".yml")):
        if columns or delimiter or no_header:
            raise kplm.ConfigError("--column/--delimiter/--no-header apply to files, not to a "
                                   "config (its csv_text sections say how to read them)")
        named = _sources_from_config(sources[0])
    else:
        column = [_column_value(c) for c in columns] or (0 if no_header else "text")
        named = [("files", CsvText(paths=list(sources), column=column, header=not no_header,
                                   delimiter=delimiter))]
    report = []
    for name, source in named:
        per_file = {f: {"path": f, "rows": 0, "chars": 0, "words": 0} for f in source.files}
        for path, _, text in source.rows():
            counts = per_file[path]
            counts["rows"] += 1
            counts["chars"] += len(text)
            counts["words"] += len(text.split())
        files = list(per_file.values())
        total = {k: sum(f[k] for f in files) for k in ("rows", "chars", "words")}
        report.append({"source": name, "files": files, "total": total})
    if as_json:
        click.echo(json.dumps(report if len(report) > 1 else report[0], indent=2))
        return
    click.echo(f"{'FILE':48} {'ROWS':>10} {'CHARS':>14} {'WORDS':>12}")
    for item in report:
        for f in item["files"] + [{"path": f"total ({item['source']})", **item["total"]}]:
            click.echo(f"{_short(f['path']):48} {f['rows']:>10,} {f['chars']:>14,} "
                       f"{f['words']:>12,}")


def _sources_from_config(path):
    """The ``csv_text`` sections of a config's ``data:``, as ``[(key path, CsvText)]``."""
    config = kplm.load_yaml(path)
    data = config.get("data")
    sections = data.items() if isinstance(data, dict) else []
    found = []
    for split, section in sections:
        if not (isinstance(section, dict) and section.get("name") == "csv_text"):
            continue
        options = {k: v for k, v in section.items() if k != "name"}
        try:
            found.append((f"data.{split}", CsvText(**options)))
        except TypeError as e:  # an unknown or missing key; `kplm tokenizer train` says more
            raise kplm.ConfigError(f"{path}: config key 'data.{split}': {e}") from None
    if not found:
        raise kplm.ConfigError(f"{path}: no csv_text section under data: (e.g. data.train)")
    return found


def _column_value(text):
    return int(text) if text.isdigit() else text


def _short(path, width=48):
    return path if len(path) <= width else "..." + path[-(width - 3):]
