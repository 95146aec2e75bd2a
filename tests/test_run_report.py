"""``kplm runs`` (a table of the runs under a folder) and ``kplm report`` (one self-contained
HTML page putting runs side by side), down to the page as a real browser draws it."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import run_kplm


def _write_status(run_dir, state, pid, **extra):
    with open(os.path.join(run_dir, "status.json"), "w") as f:
        json.dump({"state": state, "pid": pid, "host": socket.gethostname(), "time": 0,
                   **extra}, f)


def _unfinished_copy(source, target, step):
    """``target``: ``source``'s config, tokenizer and one checkpoint at ``step``, no metrics."""
    os.makedirs(os.path.join(target, "checkpoints", f"step-{step:08d}"))
    shutil.copy(os.path.join(source, "config.yaml"), target)
    with open(os.path.join(target, "checkpoints", f"step-{step:08d}", "ckpt.index"), "w"):
        pass


@pytest.fixture
def runs_root(pretrained_run, tmp_path):
    """A folder of runs: the shared finished pretraining run, a copy with another learning
    rate, a live run, one whose process is gone, one that failed, and a folder that is no run."""
    root = tmp_path / "runs"
    finished = root / "finished"
    shutil.copytree(pretrained_run["run_dir"], finished)
    other = root / "group" / "higher_lr"
    shutil.copytree(pretrained_run["run_dir"], other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["trainer"]["learning_rate"] = 1e-2
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    _unfinished_copy(finished, root / "live", 20)
    _write_status(root / "live", "running", os.getpid())
    _unfinished_copy(finished, root / "killed", 40)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_status(root / "killed", "running", gone.pid)
    _unfinished_copy(finished, root / "broken", 10)
    _write_status(root / "broken", "failed", gone.pid, error="ValueError: bad batch")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run\n")
    return root, pretrained_run


def test_runs_lists_every_run_with_its_status_steps_and_best_metric(runs_root):
    root, pretrained = runs_root
    result = run_kplm("runs", str(root), "--json")
    assert result.returncode == 0, result.stderr
    rows = {os.path.relpath(r["run"], root): r
            for r in map(json.loads, result.stdout.strip().splitlines())}
    assert sorted(rows) == ["broken", "finished", os.path.join("group", "higher_lr"),
                            "killed", "live"]
    done = rows["finished"]
    steps = pretrained["config"]["trainer"]["steps"]
    assert (done["state"], done["kind"], done["task"]) == ("finished", "pretrain", "masked_lm")
    assert (done["step"], done["total_steps"]) == (steps, steps)
    assert done["best_metric"] == "loss"
    assert done["best_value"] == pytest.approx(pretrained["metrics"]["validation"]["loss"])
    assert done["tokens_per_second"] > 0 and done["wall_seconds"] > 0
    assert done["initialised_from"] == "random (encoder)"
    assert rows["live"]["status"] == "running, step 20"
    assert rows["killed"]["status"] == "interrupted at step 40"
    assert rows["broken"]["status"] == "failed at step 10"
    assert rows["broken"]["error"] == "ValueError: bad batch"

    table = run_kplm("runs", str(root))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["run", "kind", "status"] and len(lines) == 6
    line = next(x for x in lines if "broken" in x)
    assert "failed at step 10: ValueError: bad batch" in line and "10/60" in line


def test_runs_answers_without_importing_tensorflow(runs_root):
    root, _ = runs_root
    code = ("import sys; from kplm.run_summary import find_runs, summarize; "
            f"rows = [summarize(r) for r in find_runs({str(root)!r})]; "
            "assert len(rows) == 5, rows; assert 'tensorflow' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_runs_lists_a_run_whose_config_is_damaged(tmp_path):
    """A config.yaml that is not UTF-8 (damaged) is a run whose config cannot be read, not a
    traceback."""
    from kplm.run_summary import summarize
    run = tmp_path / "bad"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"run_dir: x\nobjective: {name: \xff}\n")
    (run / "metrics.json").write_text("{}")
    row = summarize(str(run))
    assert row["state"] == "finished"
    assert (row["kind"], row["task"], row["initialised_from"]) == (
        "?", "config.yaml unreadable", "?")
    (run / "head.json").write_text('{"name": "token_classification", "labels": ["O", "B-x"]}')
    row = summarize(str(run))
    assert (row["kind"], row["task"]) == ("finetune", "token_classification")
    (run / "metrics.json").write_text("{")  # damaged: not taken for an interrupted run
    row = summarize(str(run))
    assert row["state"] == "damaged" and row["status"] == "finished? metrics.json unreadable"
    # an --overwrite interrupted after its first checkpoint: the run it replaces is said
    (tmp_path / ".bad.old-12345").mkdir()
    assert summarize(str(run))["status"] == ("finished? metrics.json unreadable (the run it "
                                             "replaces waits in .bad.old-12345)")


def test_runs_refuses_a_folder_without_runs_in_one_line(tmp_path):
    for args, expected in (((str(tmp_path / "missing"),), "is not a directory"),
                           ((str(tmp_path),), "no kplm run")):
        result = run_kplm("runs", *args)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


def test_report_puts_runs_side_by_side_in_one_offline_page(runs_root, tmp_path):
    root, _ = runs_root
    out = tmp_path / "report.html"
    result = run_kplm("report", str(root / "finished"), str(root / "group" / "higher_lr"),
                      str(root / "killed"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    # self-contained: no script, style sheet, font or image fetched from anywhere
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert page.count("http") == page.count('xmlns="http://www.w3.org/2000/svg"')
    # the differing config key, with both values, and nothing that is the same
    assert "<td>trainer.learning_rate</td><td>0.003</td><td>0.01</td>" in page
    assert "<td>trainer.batch_size</td>" not in page
    # one plot per logged scalar, loss and learning rate first, a line per run
    from kplm.events import scalars
    tags = set(scalars(str(root / "finished")))
    assert {"train/loss", "train/learning_rate", "validation/loss",
            "train/tokens_per_second"} <= tags
    captions = [c.split("</figcaption>")[0] for c in page.split("<figcaption>")[1:]]
    assert sorted(captions) == sorted(tags) and captions[:2] == ["train/loss",
                                                                 "train/learning_rate"]
    loss_plot = page.split("<figcaption>train/loss</figcaption>")[1].split("</svg>")[0]
    assert loss_plot.count("<polyline") == 2  # the two runs that logged it (the copy: the same)
    assert "finished" in page and "interrupted at step 40" in page
    assert "validation.loss" in page  # the finished runs' final metrics

    # the output rule: an existing file is kept without --overwrite, replaced with it
    before = out.read_bytes()
    again = run_kplm("report", str(root / "finished"), "-o", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert out.read_bytes() == before
    assert run_kplm("report", str(root / "finished"), "-o", str(out),
                    "--overwrite").returncode == 0
    assert out.read_bytes() != before
    # a folder that is no run: one line, nothing written
    refused = run_kplm("report", str(root / "notes"), "-o", str(tmp_path / "other.html"))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "not a kplm run directory" in refused.stderr
    assert not (tmp_path / "other.html").exists()


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_page_draws_its_plots_in_a_headless_browser(runs_root, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser: `make test` installs Debian's chromium where it can "
                    "(apt-get install chromium); without one this check cannot run")
    root, _ = runs_root
    out = tmp_path / "report.html"
    assert run_kplm("report", str(root / "finished"), str(root / "group" / "higher_lr"),
                    "-o", str(out)).returncode == 0
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    from PIL import Image

    from kplm.report import COLOURS
    image = Image.open(shot).convert("RGB")
    pixels = list(image.getdata())
    # not blank: text, tables and plots, not one flat colour
    assert sum(p != (255, 255, 255) for p in pixels) > 0.02 * len(pixels)
    assert len(set(pixels)) > 50

    def count(colour):
        target = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return sum(all(abs(a - b) <= 12 for a, b in zip(p, target)) for p in pixels)
    # both runs' lines are drawn (the first run's colour also marks its legend swatch: far
    # fewer pixels than its lines)
    assert count(COLOURS[0]) > 1500 and count(COLOURS[1]) > 1500


def test_the_demo_writes_its_report_and_replaces_only_its_own(runs_root, tmp_path):
    from kplm.demo import write_report
    from kplm.report import is_report
    root, _ = runs_root
    runs = [str(root / "finished"), str(root / "group" / "higher_lr")]
    path = str(tmp_path / "demo_report.html")
    assert write_report(runs, path) == path and is_report(path)
    assert write_report(runs, path) == path  # a rerun replaces its own page
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my notes</html>")
    assert write_report(runs, str(mine)) is None
    assert mine.read_text() == "<html>my notes</html>"  # a user's file is never replaced
