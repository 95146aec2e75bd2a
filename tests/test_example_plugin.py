"""Third-party plugins for real: the example plugin (plugins/kplm-text-extras) and two broken ones
(tests/fixtures/) are pip-installed, then used through the ``kplm`` command line.

Each package is installed offline (``--no-index --no-build-isolation``) with
``pip install --target`` into a temporary directory that the ``kplm`` subprocesses get on
PYTHONPATH: a real install with real entry points, found by ``importlib.metadata``, that leaves
the shared virtualenv untouched (nothing to uninstall, nothing leaks into other tests, safe when
several test runs share the environment).
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = os.path.join(ROOT, "plugins", "kplm-text-extras")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TRAIN = os.path.join(ROOT, "data", "wikitext2", "train.txt")
BROKEN_ERROR = "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"


def pip_install(source, tmp_path_factory, name):
    """Install the package at ``source`` into a fresh directory; returns that directory."""
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    copy = tmp_path_factory.mktemp(f"{name}-src")
    shutil.copytree(source, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    site = tmp_path_factory.mktemp(f"{name}-site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--disable-pip-version-check", "--target", str(site), str(copy)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install {source} failed:\n{result.stderr}"
    return str(site)


def kplm(*args, sites=(), cwd=ROOT, **env):
    """Run ``python -m kplm ARGS`` with the packages in ``sites`` installed and only the
    ``KPLM_*`` variables given in ``env`` set."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KPLM_")}
    full_env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                    PYTHONPATH=os.pathsep.join([*sites, os.environ.get("PYTHONPATH", "")]),
                    **env)
    return subprocess.run([sys.executable, "-m", "kplm", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def plugins_json(sites, *options, **env):
    result = kplm("plugins", "--json", *options, sites=sites, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def extras_site(tmp_path_factory):
    return pip_install(EXTRAS, tmp_path_factory, "kplm-text-extras")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    site = pip_install(os.path.join(FIXTURES, "broken_plugin"), tmp_path_factory, "broken")
    yield site
    shutil.rmtree(site, ignore_errors=True)  # the "uninstall"


@pytest.fixture(scope="module")
def duplicate_site(tmp_path_factory):
    site = pip_install(os.path.join(FIXTURES, "duplicate_plugin"), tmp_path_factory, "duplicate")
    yield site
    shutil.rmtree(site, ignore_errors=True)


@pytest.fixture(scope="module")
def wiki_csv(tmp_path_factory):
    """A CSV of real text: the first 400 non-blank lines of the bundled WikiText-2, in column
    ``text``, beside an ``id`` column and a ``source`` column of a made-up word."""
    lines = []
    with open(TRAIN, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.strip())
            if len(lines) == 400:
                break
    path = tmp_path_factory.mktemp("csv") / "wiki.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # quotes the many commas and quotes of the text
        writer.writerow(["id", "source", "text"])
        writer.writerows([i, "zzqxsource", line] for i, line in enumerate(lines))
    return str(path), lines


def write_config(directory, train_section, name="config.yaml"):
    config = {"tokenizer": {"name": "wordpiece", "vocabulary_size": 600},
              "data": {"train": train_section}}
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


# --- the example plugin, installed ------------------------------------------------------------
def test_plugins_lists_the_installed_example(extras_site):
    with open(os.path.join(EXTRAS, "pyproject.toml"), encoding="utf-8") as f:
        version = re.search(r'^version = "(.+)"', f.read(), re.M).group(1)  # no tomllib on 3.10
    listing = plugins_json([extras_site])
    assert listing["failed"] == []
    rows = {row["name"]: row for row in listing["plugins"]}
    assert rows["text_extras"] == {
        "name": "text_extras", "distribution": "kplm-text-extras", "version": version,
        "builtin": False, "components": {"data_source": ["csv_text"]}, "adds_commands": True}
    table = kplm("plugins", sites=[extras_site])
    assert table.returncode == 0 and "kplm-text-extras" in table.stdout
    assert "data_source: csv_text; commands" in table.stdout


def test_plugin_adds_a_command(extras_site, wiki_csv):
    path, lines = wiki_csv
    assert "text-extras-stats" in kplm("--help", sites=[extras_site]).stdout
    assert "text-extras-stats" not in kplm("--help").stdout  # not installed: not there
    result = kplm("text-extras-stats", path, "--column", "text", "--json", sites=[extras_site])
    assert result.returncode == 0, result.stderr
    total = json.loads(result.stdout)["total"]
    assert total == {"rows": len(lines), "chars": sum(map(len, lines)),
                     "words": sum(len(line.split()) for line in lines)}


@pytest.mark.slow
def test_tokenizer_learns_from_a_csv_column(extras_site, wiki_csv, tmp_path):
    path, _ = wiki_csv
    config = write_config(tmp_path, {"name": "csv_text", "paths": [path], "column": "text"})
    result = kplm("tokenizer", "train", config, "-o", str(tmp_path / "tok"), sites=[extras_site])
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    with open(tmp_path / "tok" / "vocab.txt", encoding="utf-8") as f:
        vocab = f.read().split()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"the", "meridian", "mississippi", "lobster"} <= set(vocab)
    assert not any("zzqx" in token for token in vocab)  # only the text column was read


@pytest.mark.parametrize("section, fragments", [
    ({"colum": "text"}, ["unknown config key 'data.train.colum'", "Did you mean 'column'?"]),
    ({"column": "text", "header": "maybe"}, ["config key 'data.train.header'", "bool"]),
    ({"column": "body"}, ["wiki.csv:1: no column 'body' in the header (columns: id, source, text)"]),
    ({"column": "text", "delimiter": ";;"}, ["delimiter must be one character"]),
])
def test_csv_text_config_mistakes_are_one_line_errors(extras_site, wiki_csv, tmp_path, section,
                                                       fragments):
    config = write_config(tmp_path, {"name": "csv_text", "paths": [wiki_csv[0]], **section})
    result = kplm("tokenizer", "train", config, "-o", str(tmp_path / "tok"), sites=[extras_site])
    assert_one_line_error(result, *fragments)
    assert not os.path.exists(tmp_path / "tok")


def test_malformed_csv_row_is_a_one_line_error(extras_site, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,fine\n2,an unquoted, comma\n", encoding="utf-8")
    config = write_config(tmp_path, {"name": "csv_text", "paths": [str(bad)]})
    result = kplm("tokenizer", "train", config, "-o", str(tmp_path / "tok"), sites=[extras_site])
    assert_one_line_error(result, f"{bad}:3: malformed row: 3 fields, the header has 2")


def test_without_the_plugin_csv_text_is_unknown(wiki_csv, tmp_path):
    config = write_config(tmp_path, {"name": "csv_text", "paths": [wiki_csv[0]]})
    result = kplm("tokenizer", "train", config, "-o", str(tmp_path / "tok"))
    assert_one_line_error(result, "unknown data source 'csv_text'", "text_files")


# --- a plugin that fails to import ----------------------------------------------------------
def test_broken_plugin_is_reported_and_others_work(extras_site, broken_site, wiki_csv):
    sites = [extras_site, broken_site]
    listing = plugins_json(sites)
    assert [row["name"] for row in listing["plugins"]] == ["text_extras"]
    assert listing["failed"] == [{"name": "broken_example",
                                  "distribution": "kplm-broken-example 0.1.0",
                                  "error": BROKEN_ERROR}]
    table = kplm("plugins", sites=sites)
    assert table.returncode == 0 and "text_extras" in table.stdout
    assert f"FAILED broken_example (kplm-broken-example 0.1.0): {BROKEN_ERROR}" in table.stderr
    stats = kplm("text-extras-stats", wiki_csv[0], "-c", "text", sites=sites)
    assert stats.returncode == 0 and "total" in stats.stdout


def test_strict_mode_makes_a_broken_plugin_an_error(extras_site, broken_site):
    result = kplm("plugins", "--json", sites=[extras_site, broken_site], KPLM_STRICT_PLUGINS="1")
    assert_one_line_error(result, "plugin broken_example (kplm-broken-example 0.1.0) failed",
                          BROKEN_ERROR)


def test_broken_plugin_can_be_disabled_or_not_loaded(extras_site, broken_site):
    sites = [extras_site, broken_site]
    for env in ({"KPLM_DISABLE_PLUGINS": "broken_example"},
                {"KPLM_LOAD_PLUGINS": "text_extras"},
                {"KPLM_LOAD_PLUGINS": "text_extras", "KPLM_STRICT_PLUGINS": "1"}):
        listing = plugins_json(sites, **env)
        assert listing["failed"] == [], env
        assert [row["name"] for row in listing["plugins"]] == ["text_extras"], env
    assert plugins_json(sites, KPLM_LOAD_PLUGINS="") == {"plugins": [], "failed": []}


# --- a plugin that registers a built-in's name ----------------------------------------------
def test_duplicate_name_is_reported_naming_both_plugins(extras_site, duplicate_site):
    sites = [extras_site, duplicate_site]
    listing = plugins_json(sites, KPLM_LOAD_PLUGINS="text_extras,duplicate_example")
    [failure] = listing["failed"]
    assert failure["name"] == "duplicate_example"
    assert failure["distribution"] == "kplm-duplicate-example 0.1.0"
    assert "data_source 'text_files' is registered twice" in failure["error"]
    assert "kplm.data.text_files" in failure["error"] and "duplicate_example" in failure["error"]
    # The built-in keeps its name and the other plugin is unaffected.
    rows = {row["name"]: row for row in plugins_json(sites, "--all")["plugins"]}
    assert rows["kplm.data.text_files"]["components"] == {"data_source": ["text_files"]}
    assert rows["text_extras"]["components"] == {"data_source": ["csv_text"]}
    assert "duplicate_example" not in rows  # a plugin that fails to register is unloaded

    strict = kplm("plugins", "--json", sites=sites, KPLM_STRICT_PLUGINS="1")
    assert_one_line_error(strict, "registered twice", "kplm.data.text_files", "duplicate_example")
    disabled = plugins_json(sites, KPLM_DISABLE_PLUGINS="duplicate_example")
    assert disabled["failed"] == []
