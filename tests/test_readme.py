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
