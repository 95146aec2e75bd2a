"""The README's Python example runs as written."""
import os
import re

from conftest import ROOT


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"<!-- README-EXAMPLE -->\s*```python\n(.*?)```", text, re.S).group(1)
    block = block.replace('"data/wikitext2/train.txt"', repr(os.path.join(ROOT, "data", "wikitext2", "train.txt")))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    losses = eval(out.split("]")[0] + "]")
    assert losses[1] < losses[0]
    assert os.path.exists(tmp_path / "runs" / "my_backbone" / "config.json")


def test_readme_finetune_example(tmp_path, monkeypatch, capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"<!-- README-FINETUNE-EXAMPLE -->\s*```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(ROOT)  # the example reads the bundled data and writes nothing
    import keras
    keras.utils.set_random_seed(0)  # the same start whatever ran before in this process
    exec(compile(block, "README.md", "exec"), {})
    metrics_line, predictions_line = capsys.readouterr().out.strip().splitlines()[-2:]
    metrics = eval(metrics_line)
    assert metrics["accuracy"] > 0.55  # majority class is ~0.51 of the dev set
    assert eval(predictions_line)[0]["label"] in ("negative", "positive")
