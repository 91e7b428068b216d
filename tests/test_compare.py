"""``python -m common.compare``: the orchestration and the report, with fake chapters.

The real chapters take minutes; what is tested here is the comparison's own logic, so each entry is
a small package written into ``tmp_path`` (its ``train.py`` writes a run directory in the run format
of ``common/runs.py``, its ``evaluate.py`` an evaluation in the format of ``common/evaluate``), run as
a subprocess exactly like a chapter. One entry can be told to fail; its error must reach the table
while the others finish, and running the command again must train nothing twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from common.compare import __main__ as compare_main
from common.compare import report, runner
from common.errors import ConfigError

pytestmark = pytest.mark.xdist_group("compare")  # one worker builds the module's fixtures

FAKE_TRAIN = '''
import json, os, signal, sys, time
from pathlib import Path

args = sys.argv[1:]
def value(flag, default=None):
    return args[args.index(flag) + 1] if flag in args else default

name = os.path.basename(os.path.dirname(os.path.abspath(__file__)))
def told(mode):  # FAKE_FAIL, FAKE_CRASH, FAKE_INTERRUPT, FAKE_TERM: comma-separated chapter names
    return name in os.environ.get(mode, "").split(",")

if told("FAKE_FAIL"):
    print("error: the fake chapter was told to fail")
    sys.exit(1)
if "--resume" in args:
    run = Path(value("--resume"))
    epochs = json.loads((run / "config.json").read_text())["epochs"]
    root = run.parent
    call = f"resume {run.name}"
else:
    root = Path(value("--output-dir"))
    attempt = len(list(root.glob(f"{name}-run*"))) if root.is_dir() else 0
    run = root / f"{name}-run{attempt or ''}"  # every new run its own directory, as a chapter's
    run.mkdir(parents=True)
    epochs = int(value("--epochs", 3))
    start = value("--init-encoder")  # the comparison's shared starting encoder
    config = {"framework": "pytorch", "method": name, "dataset": "digits", "knn_test_split": "test",
              "image_size": 16, "augment": "simclr", "batch_size": 8, "epochs": epochs,
              "seed": 0, "recipe": "quick", "init_encoder": start and str(Path(start).resolve())}
    (run / "config.json").write_text(json.dumps(config))
    call = f"train {name} {epochs} epochs{' from ' + '/'.join(Path(start).parts[-2:]) if start else ''}"
with open(root.parent / "calls.txt", "a") as calls:
    calls.write(call + "\\n")
if told("FAKE_CRASH"):  # after the run directory exists, before the first checkpoint
    print("error: the fake chapter crashed in its first epoch")
    sys.exit(1)
def save_and_exit(*signal_args):  # what a chapter does on Ctrl-C or SIGTERM
    checkpoint = run / "checkpoints" / "step-00000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "position.json").write_text(json.dumps({"global_step": 10}))
    (run / "checkpoints" / "latest").write_text(checkpoint.name)
    print("interrupted: a checkpoint was saved")
    sys.exit(130)
if told("FAKE_INTERRUPT"):  # Ctrl-C reaches the comparison too; the chapter saves and exits 130
    os.kill(os.getppid(), signal.SIGINT)
    save_and_exit()
if told("FAKE_TERM"):  # a SIGTERM to the comparison alone, which must pass it on to the chapter
    signal.signal(signal.SIGTERM, save_and_exit)
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(60)
    print("error: the SIGTERM was not passed on")
    sys.exit(1)
rows = [{"kind": "init", "epoch": 0, "step": 0, "wall_s": 0.0, "knn_top1": 0.1}]
rows += [{"kind": "epoch", "epoch": e, "step": 10 * e, "wall_s": 2.0 * e, "loss": 5.0 / e,
          "knn_top1": 0.1 + 0.2 * e} for e in range(1, epochs + 1)]
(run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
summary = {"framework": "pytorch", "method": name, "recipe": "quick", "epochs": epochs,
           "steps": 10 * epochs, "final_loss": 5.0 / epochs, "knn_top1_init": 0.1,
           "knn_top1": rows[-1]["knn_top1"], "wall_s": 2.0 * epochs, "train_s": 1.0 * epochs,
           "images_per_sec": 40.0,
           "peak_rss_mib": 100.0, "trainable_parameters": 1234}
(run / "summary.json").write_text(json.dumps(summary))
'''

FAKE_EVALUATE = '''
import json, os, sys
from pathlib import Path
import numpy as np


run, args = Path(sys.argv[1]), sys.argv[2:]
output = Path(args[args.index("--output") + 1])
name = os.path.basename(os.path.dirname(os.path.abspath(__file__)))
told_to_fail = name in os.environ.get("FAKE_EVALUATE_FAIL", "").split(",")
if told_to_fail and not {"--random-init", "--pixels"} & set(args):  # the encoder's own evaluation
    print("error: the fake chapter's encoder was told to fail its evaluation")
    sys.exit(1)
knn = ((0.3 if "--recalibrate-bn" in args else 0.1) if "--random-init" in args else
       0.95 if "--pixels" in args else {"alpha": 0.7, "beta": 0.5}.get(name, 0.9))
evaluation = {"dataset": "digits", "train_images": int(args[args.index("--max-train") + 1])
              if "--max-train" in args else 1442, "test_images": 355,
              "knn": {"top1": knn, "top5": 1.0, "k": 20, "temperature": 0.1},
              "linear_probe": {"top1": knn + 0.05, "top5": 1.0, "preprocessing": "standardized"},
              "label_efficiency": {f: {"top1": knn * float(f) ** 0.1} for f in ("0.01", "0.1", "1.0")},
              "diagnostics": {"representation": {"alignment": 0.5, "uniformity": -2.0,
                                                 "effective_rank": 12.0, "collapse_ratio": 0.8}}}
if "--random-init" not in args and "--pixels" not in args:  # the checkpoint it scored
    evaluation["checkpoint"] = {"global_step": json.loads((run / "summary.json").read_text())["steps"]}
output.write_text(json.dumps(evaluation))
if "--random-init" in args and "--recalibrate-bn" not in args:  # the run's starting encoder
    (run / "encoder-random-init.safetensors").write_text("portable weights")
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(3), 20)
np.savez(output.with_suffix(".features.npz"), features=rng.normal(size=(60, 8)) + labels[:, None],
         labels=labels)
with open(run.parent.parent / "calls.txt", "a") as calls:
    calls.write(f"evaluate {name}{' random-init' if '--random-init' in args else ''}"
                f"{' bn' if '--recalibrate-bn' in args else ''}{' pixels' if '--pixels' in args else ''}\\n")
'''


def fake_chapters(folder, patch: pytest.MonkeyPatch) -> None:
    """Packages ``alpha`` and ``beta`` in ``folder``, made the comparison's entries by ``patch``."""
    packages = folder / "packages"
    for name in ("alpha", "beta"):
        package = packages / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "train.py").write_text(textwrap.dedent(FAKE_TRAIN))
        (package / "evaluate.py").write_text(textwrap.dedent(FAKE_EVALUATE))
    use_fake_chapters(packages, patch)
    for mode in ("FAKE_FAIL", "FAKE_CRASH", "FAKE_INTERRUPT", "FAKE_TERM", "FAKE_EVALUATE_FAIL"):
        patch.delenv(mode, raising=False)


def use_fake_chapters(packages: Path, patch: pytest.MonkeyPatch) -> None:
    """Make the packages ``alpha`` and ``beta`` in ``packages`` the comparison's entries."""
    entries = [runner.Entry("alpha", "Alpha / fake", "alpha"), runner.Entry("beta", "Beta / fake", "beta")]
    patch.setenv("PYTHONPATH", str(packages))
    patch.setattr(runner, "entries", lambda keras_backends, supervised=True: entries)


def without_embeddings(patch: pytest.MonkeyPatch) -> None:
    """Skip the t-SNE figure (about a second per encoder) where a test reads the tables only."""
    patch.setattr(report, "embedding_figure", lambda lines: None)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A comparison of two fake chapters run twice: first with ``beta`` failing (the report of that
    first call is kept as ``first-report.md``), then again with nothing failing."""
    folder = tmp_path_factory.mktemp("compare")
    report_dir = folder / "report"
    with pytest.MonkeyPatch.context() as patch:
        fake_chapters(folder, patch)
        patch.setenv("FAKE_FAIL", "beta")
        codes = [compare_main.main(["--epochs", "3", "--output-dir", str(report_dir)])]
        (folder / "first-report.md").write_text((report_dir / "report.md").read_text())
        patch.setenv("FAKE_FAIL", "")
        codes.append(compare_main.main(["--epochs", "3", "--output-dir", str(report_dir)]))
    assert codes == [1, 0]  # a failed line fails the command, after its report is written
    return report_dir


def calls(folder) -> list[str]:
    path = folder / "calls.txt"
    return path.read_text().splitlines() if path.is_file() else []


def accuracy_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Accuracy")[1].split("## ")[0]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))] for line in section.splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]  # a "\|" is in a cell
    return {row[0]: row[1:] for row in rows[1:]}


def test_a_failed_entry_is_reported_and_a_rerun_continues_without_training_twice(comparison):
    table = accuracy_rows((comparison.parent / "first-report.md").read_text())
    assert table["Alpha / fake"][:4] == ["0.700", "+0.600", "+0.400", "-0.250"]  # kNN, lifts over the 3
    assert table["the pixels themselves (no encoder)"][:4] == ["0.950", "–", "–", "–"]
    assert table["Beta / fake"][0] == "failed: error: the fake chapter was told to fail"
    assert table["random-init encoder"][:3] == ["0.100", "–", "–"]
    assert table["random-init encoder, BN statistics of the data"][0] == "0.300"
    # alpha's starting encoder is everyone's (its random-init baseline writes it), and the rerun
    # redid nothing of alpha's
    assert calls(comparison) == ["train alpha 3 epochs", "evaluate alpha", "evaluate alpha random-init",
                                 "evaluate alpha random-init bn", "evaluate alpha pixels",
                                 "train beta 3 epochs from alpha-run/encoder-random-init.safetensors",
                                 "evaluate beta"]
    table = accuracy_rows((comparison / "report.md").read_text())
    assert table["Beta / fake"][:6] == ["0.500", "+0.400", "+0.200", "-0.450", "0.550", "0.315"]
    state = json.loads((comparison / runner.STATE_FILE).read_text())
    assert {name: record["status"] for name, record in state["entries"].items()} == {
        "alpha": "evaluated", "beta": "evaluated", "random-init": "trained", "random-init-bn": "trained",
        "pixels": "trained"}


def test_the_time_left_counts_only_the_entries_that_worked():
    """A rerun skips the entries it finished: averaged in, their instant would make the rest
    look nearly free (two skipped entries and one of 30 s: 10 s each, not 30)."""
    assert compare_main.seconds_left([], 3) is None  # nothing measured yet
    assert compare_main.seconds_left([0.02, 0.01], 3) is None  # only skipped ones
    assert compare_main.seconds_left([0.02, 0.01, 30.0], 2) == 60.0
    assert compare_main.seconds_left([20.0, 40.0], 1) == 30.0


def test_a_folder_holding_another_comparison_is_refused_and_left_as_it_is(comparison, capsys):
    state = (comparison / runner.STATE_FILE).read_text()
    before = calls(comparison)
    code = compare_main.main(["--epochs", "4", "--seed", "1", "--output-dir", str(comparison)])
    message = capsys.readouterr().err
    assert code == 1 and "trained with `--recipe quick --knn-every 1 --epochs 3`" in message
    assert "not `--recipe quick --knn-every 1 --epochs 4 --seed 1`" in message
    assert "another --output-dir" in message
    assert (comparison / runner.STATE_FILE).read_text() == state and calls(comparison) == before


def test_a_folder_trained_by_other_code_is_refused_and_left_as_it_is(comparison, monkeypatch, capsys):
    """A rerun after a chapter's code changed would put two versions of it in one table."""
    # the rerun rewrites the shared comparison's report: with every figure, as the other tests read it
    use_fake_chapters(comparison.parent / "packages", monkeypatch)
    state, before = (comparison / runner.STATE_FILE).read_text(), calls(comparison)
    train = comparison.parent / "packages" / "beta" / "train.py"
    code = train.read_text()
    try:
        train.write_text(code + "\n# changed\n")
        assert compare_main.main(["--epochs", "3", "--output-dir", str(comparison)]) == 1
    finally:
        train.write_text(code)
    assert "trained by other code" in capsys.readouterr().err
    assert (comparison / runner.STATE_FILE).read_text() == state and calls(comparison) == before
    assert compare_main.main(["--epochs", "3", "--output-dir", str(comparison)]) == 0  # the same code
    assert calls(comparison) == before  # continued: nothing trained or evaluated again


def test_the_report_has_every_table_and_a_self_contained_html_page(comparison):
    markdown = (comparison / "report.md").read_text()
    cost = markdown.split("## Cost")[1].split("## ")[0]
    assert "| Alpha / fake | 3 | 6 s | 3 s | 40 | 100 | 1,234 |" in cost
    assert ("Every method trained after alpha-run started from that run's initial encoder "
            "(`--init-encoder ") in markdown and "(except" not in markdown  # beta too, on the rerun
    page = (comparison / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    names = ["curves", "label_efficiency", "throughput", "embeddings", "views"]
    assert len(images) == len(names)  # every figure embedded: the page needs no other file
    assert 'src="' not in re.sub(r'src="data:image/png;base64,[^"]+"', "", page)
    for name in names:
        png = (comparison / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert f"({name}.png)" in markdown


def test_the_note_names_a_method_that_did_not_start_from_the_shared_encoder(comparison, monkeypatch):
    """E.g. a method trained while the first run's encoder could not be shared yet."""
    notes = []
    monkeypatch.setattr(compare_main, "publish", lambda folder, lines, title, written: notes.extend(written))
    monkeypatch.setattr(compare_main.report, "started_from", lambda run, source: run.path.name == "alpha-run")
    entries = [runner.Entry("alpha", "Alpha / fake", "alpha"), runner.Entry("beta", "Beta / fake", "beta")]
    args = compare_main.parse(["--epochs", "3", "--output-dir", str(comparison)])
    compare_main.write_report(comparison, entries, runner.State(comparison), args)
    [note] = [note for note in notes if note.startswith("Every method trained after alpha-run")]
    assert "(except Beta / fake: from its own seed's draw" in note


def test_lines_of_code_count_neither_docstrings_nor_comments_nor_blank_lines(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('"""Module\n\ndocstring."""\n\n# a comment\nimport os\n\n\ndef f():\n'
                      '    """One line."""\n    return os.sep  # trailing comment counts\n')
    assert report.lines_of_code(source) == 3


def test_the_report_of_existing_runs_needs_no_training(comparison, tmp_path):
    run_dirs = sorted((comparison / "runs").glob("*-run"))
    before = calls(comparison)
    assert compare_main.main(["--runs", *map(str, run_dirs), "--output-dir", str(tmp_path)]) == 0
    assert calls(comparison) == before
    table = accuracy_rows((tmp_path / "report.md").read_text())
    # the runs, then the baselines `evaluate --random-init [--recalibrate-bn]` wrote into alpha's run
    assert [row[0] for row in table.values()] == ["0.700", "0.500", "0.100", "0.300", "0.950"]
    assert list(table.values())[0][1:4] == ["+0.600", "+0.400", "-0.250"]  # alpha over the baselines
    assert list(table.values())[1][1:4] == ["+0.400", "+0.200", "-0.450"]  # beta started from alpha's
    assert all((tmp_path / f"{n}.png").is_file() for n in ("curves", "throughput", "embeddings"))
    again = tmp_path / "again" / "alpha-run2"  # two runs of one chapter: each row says which
    shutil.copytree(run_dirs[0], again)
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        assert compare_main.main(["--runs", str(run_dirs[0]), str(again), "--output-dir",
                                  str(tmp_path / "twice")]) == 0
    table = accuracy_rows((tmp_path / "twice" / "report.md").read_text())
    assert list(table)[:2] == ["alpha / pytorch (alpha-run)", "alpha / pytorch (alpha-run2)"]
    # the copy did not start from alpha-run's encoder: no lift over its random-init lines, only
    # over the pixels, which are every encoder's
    assert table["alpha / pytorch (alpha-run2)"][:4] == ["0.700", "–", "–", "-0.250"]
    assert table["alpha / pytorch (alpha-run)"][:4] == ["0.700", "+0.600", "+0.400", "-0.250"]


def test_a_report_of_runs_does_not_show_an_evaluation_of_an_earlier_checkpoint(comparison, tmp_path):
    run = tmp_path / "alpha-run"  # evaluated at step 10, while training, then trained to step 30
    shutil.copytree(sorted((comparison / "runs").glob("alpha-run"))[0], run)
    evaluation = json.loads((run / "evaluation.json").read_text())
    evaluation["checkpoint"] = {"epoch": 1, "global_step": 10, "finished": False}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        assert compare_main.main(["--runs", str(run), "--output-dir", str(tmp_path / "report")]) == 0
    row = accuracy_rows((tmp_path / "report" / "report.md").read_text())["alpha / pytorch"]
    assert row[0].startswith("its evaluation.json is of step 10, the run ended at step 30: evaluate")
    assert f"(python -m pytorch_simclr.evaluate {run})" in row[0]
    evaluation["checkpoint"] = {"epoch": 3, "global_step": 30, "finished": True}  # the final one
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        assert compare_main.main(["--runs", str(run), "--output-dir", str(tmp_path / "again")]) == 0
    assert accuracy_rows((tmp_path / "again" / "report.md").read_text())["alpha / pytorch"][0] == "0.700"
    (run / "summary.json").unlink()  # still training: its evaluation is of a checkpoint on the way
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        assert compare_main.main(["--runs", str(run), "--output-dir", str(tmp_path / "unfinished")]) == 0
    assert ("Not finished training (no summary.json; evaluated from a checkpoint on the way, and no "
            "Cost row): alpha / pytorch (evaluated at step 30).") in (
        tmp_path / "unfinished" / "report.md").read_text()


def test_a_report_of_runs_never_replaces_a_trained_comparison_s_report(comparison, capsys):
    report_before = (comparison / "report.md").read_text()
    code = compare_main.main(["--runs", str(sorted((comparison / "runs").glob("*-run"))[0]),
                              "--output-dir", str(comparison)])
    assert code == 1 and "holds a comparison that trained its own runs" in capsys.readouterr().err
    assert (comparison / "report.md").read_text() == report_before
    assert compare_main.parse(["--runs", "a"]).output_dir is None  # and its default folder is its own


def test_every_chapter_trains_with_the_flags_the_comparison_was_given():
    args = compare_main.parse(["--epochs", "3", "--seed", "1", "--no-zero-init-residual"])
    assert compare_main.train_flags(args) == ["--recipe", "quick", "--knn-every", "1", "--epochs", "3",
                                              "--seed", "1", "--no-zero-init-residual"]
    args = compare_main.parse(["--zero-init-residual"])
    assert compare_main.train_flags(args)[-1] == "--zero-init-residual"
    assert compare_main.train_flags(compare_main.parse([])) == ["--recipe", "quick", "--knn-every", "1"]
    args = compare_main.parse(["--dataset", "placeddigits", "--image-size", "16"])
    assert compare_main.train_flags(args)[4:] == ["--dataset", "placeddigits", "--image-size", "16"]


def test_a_crashed_training_is_retried_in_a_new_run_and_an_interrupted_one_resumed(tmp_path):
    """beta crashes after making its run directory, then is interrupted (Ctrl-C) after its first
    checkpoint: the record follows the retry's new directory, and the third call resumes it."""
    report_dir = tmp_path / "report"
    command = ["--epochs", "3", "--output-dir", str(report_dir)]
    with pytest.MonkeyPatch.context() as patch:
        fake_chapters(tmp_path, patch)
        without_embeddings(patch)
        # the chapter's Ctrl-C is sent to this process: make it a KeyboardInterrupt whatever the
        # test runner's own handler is
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            patch.setenv("FAKE_CRASH", "beta")
            codes = [compare_main.main(command)]
            patch.setenv("FAKE_CRASH", "")
            patch.setenv("FAKE_INTERRUPT", "beta")
            codes.append(compare_main.main(command))
            interrupted = accuracy_rows((report_dir / "report.md").read_text())
            patch.setenv("FAKE_INTERRUPT", "")
            codes.append(compare_main.main(command))
        finally:
            signal.signal(signal.SIGINT, previous)
    assert codes == [1, 130, 0]  # the crash fails the first call
    assert interrupted["Beta / fake"][0] == f"failed: {runner.INTERRUPTED}"
    # what the chapter said while it stopped (where it saved) is in its log
    assert "interrupted: a checkpoint was saved" in (report_dir / "logs" / "beta.log").read_text()
    assert interrupted["Alpha / fake"][0] == "0.700"  # the finished entry kept in the partial report
    trained = [call for call in calls(report_dir) if not call.startswith("evaluate")]
    start = "from alpha-run/encoder-random-init.safetensors"
    assert trained == ["train alpha 3 epochs", f"train beta 3 epochs {start}",
                       f"train beta 3 epochs {start}", "resume beta-run1"]
    state = json.loads((report_dir / runner.STATE_FILE).read_text())
    assert state["entries"]["beta"]["run_dir"] == str(report_dir / "runs" / "beta-run1")
    assert state["entries"]["beta"]["status"] == "evaluated"
    assert accuracy_rows((report_dir / "report.md").read_text())["Beta / fake"][0] == "0.500"


def test_a_sigterm_to_the_comparison_stops_its_chapter_and_the_rerun_resumes_that_run(tmp_path):
    """``kill`` of the comparison alone (not its process group, as Ctrl-C is): the chapter it runs
    gets the SIGTERM too and saves, and the run is recorded, so the next call resumes it instead of
    training the entry again beside an unrecorded run."""
    report_dir = tmp_path / "report"
    command = ["--epochs", "3", "--output-dir", str(report_dir)]

    def handler(signum, frame):  # this process's own, outside the chapter's run (and not fatal)
        raise RuntimeError("the SIGTERM reached the test's handler: the comparison did not take it")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            fake_chapters(tmp_path, patch)
            without_embeddings(patch)
            patch.setenv("FAKE_TERM", "beta")
            codes = [compare_main.main(command)]
            patch.setenv("FAKE_TERM", "")
            codes.append(compare_main.main(command))
        assert signal.getsignal(signal.SIGTERM) is handler  # put back after the chapter's run
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert codes == [130, 0]
    assert "interrupted: a checkpoint was saved" in (report_dir / "logs" / "beta.log").read_text()
    trained = [call.split(" from ")[0] for call in calls(report_dir) if not call.startswith("evaluate")]
    assert trained == ["train alpha 3 epochs", "train beta 3 epochs", "resume beta-run"]


def test_a_budget_is_measured_once_and_a_retry_trains_the_same_epochs(tmp_path, capsys):
    report_dir = tmp_path / "report"
    command = ["--budget", "60", "--output-dir", str(report_dir)]
    measured = []

    def calibrated_epochs(entry, flags, seconds, folder):
        measured.append(entry.name)
        return {"alpha": (2, 25.0), "beta": (1, 90.0)}[entry.name]  # beta: one epoch over budget

    with pytest.MonkeyPatch.context() as patch:
        fake_chapters(tmp_path, patch)
        without_embeddings(patch)
        patch.setattr(compare_main, "calibrated_epochs", calibrated_epochs)
        patch.setenv("FAKE_CRASH", "beta")
        assert compare_main.main(command) == 1  # beta crashed
        patch.setenv("FAKE_CRASH", "")
        assert compare_main.main(command) == 0
    assert measured == ["alpha", "beta"]
    trained = [call.split(" from ")[0] for call in calls(report_dir) if call.startswith("train")]
    assert trained == ["train alpha 2 epochs", "train beta 1 epochs", "train beta 1 epochs"]
    said = capsys.readouterr().out
    assert "2 epoch(s) of about 25 s fit in 60 s" in said
    over = "one epoch takes about 90 s, over the budget of 60 s: it trains 1 epoch anyway"
    assert over in said
    notes = (report_dir / "report.md").read_text()
    assert ("A budget of 60 s of training per method, in whole epochs measured before each trained: "
            f"Alpha / fake: 2 epoch(s) of about 25 s fit in 60 s; Beta / fake: {over}") in notes


def test_the_baselines_stay_on_the_shared_encoder_s_run_when_its_own_evaluation_failed(tmp_path):
    """alpha trained, its starting encoder became beta's, and alpha's own evaluation failed: the
    baselines are still evaluated on alpha's run. (On beta's, the lifts of any later method, which
    started from alpha's encoder too, would be hidden as from another draw.)"""
    report_dir = tmp_path / "report"
    with pytest.MonkeyPatch.context() as patch:
        fake_chapters(tmp_path, patch)
        without_embeddings(patch)
        patch.setenv("FAKE_EVALUATE_FAIL", "alpha")
        assert compare_main.main(["--epochs", "3", "--output-dir", str(report_dir)]) == 1
    table = accuracy_rows((report_dir / "report.md").read_text())
    assert table["Alpha / fake"][0] == ("failed: error: the fake chapter's encoder was told to fail "
                                        "its evaluation")
    assert table["Beta / fake"][:4] == ["0.500", "+0.400", "+0.200", "-0.450"]
    baselines = [call for call in calls(report_dir) if call.endswith((" bn", " pixels"))]
    assert baselines == ["evaluate alpha random-init bn", "evaluate alpha pixels"]  # not beta's


def test_a_run_trained_on_by_hand_after_its_evaluation_is_evaluated_again(tmp_path):
    """``train --resume RUN --epochs 4`` by hand after the comparison: the rerun must not show the
    3-epoch evaluation beside the 4-epoch summary. (The first call names its folder relative to
    its working directory, the second from another one: the runs are found all the same.)"""
    report_dir = tmp_path / "report"
    with pytest.MonkeyPatch.context() as patch:
        fake_chapters(tmp_path, patch)
        without_embeddings(patch)
        patch.chdir(tmp_path)
        assert compare_main.main(["--epochs", "3", "--output-dir", "report"]) == 0
        summary = report_dir / "runs" / "alpha-run" / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps": 40, "epochs": 4}))
        before = calls(report_dir)
        patch.chdir(tmp_path / "packages")
        assert compare_main.main(["--epochs", "3", "--output-dir", str(report_dir)]) == 0
    assert calls(report_dir)[len(before):] == ["evaluate alpha"]  # not trained, not the others
    evaluation = json.loads((report_dir / "runs" / "alpha-run" / "evaluation.json").read_text())
    assert evaluation["checkpoint"]["global_step"] == 40


def test_an_impossible_budget_or_evaluation_cap_is_refused_before_anything_trains(capsys):
    for flags, message in ((["--budget", "0"], "--budget must be a positive number of seconds (got 0)"),
                           (["--budget", "nan"], "--budget must be a positive number of seconds"),
                           (["--eval-max-train", "0"], "--eval-max-train must be at least 3 (got 0)"),
                           (["--eval-max-train", "2"], "--eval-max-train must be at least 3 (got 2): "
                                                       "the probe needs two classes"),
                           (["--eval-max-test", "1"], "--eval-max-test must be at least 2 (got 1): "
                                                      "the diagnostics"),
                           (["--eval-max-test", "-1"], "--eval-max-test must be at least 2 (got -1)"),
                           # the shared settings, checked with every method's recipe as its chapter
                           # would (each line used to fail on its own, after the first had started)
                           (["--epochs", "0"], "--epochs must be at least 1 (got 0) (with simclr's"),
                           (["--dataset", "nosuch"], "--dataset 'nosuch' is unknown"),
                           (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir"),
                           (["--batch-size", "100"], "--queue-size 512 must be a multiple of the 100 "
                                                     "keys enqueued per step (--batch-size): e.g. 500 "
                                                     "(with mocov2's 'quick' recipe)")):
        with pytest.raises(SystemExit) as exit_:
            compare_main.parse(flags)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("entry", [runner.SIMCLR, runner.MOCO, runner.byol("tensorflow"), runner.SUPERVISED],
                         ids=lambda entry: entry.name)
def test_the_calibration_is_a_command_the_chapter_accepts_with_a_token_knn_monitor(entry, tmp_path,
                                                                                    monkeypatch):
    """The speed probe trains 6 steps; its kNN monitor (at its start and end) runs on a token
    subset, not on all the images (on CIFAR-10, 53 s against 3 min 32 s). The command is parsed by
    the chapter's own command line, so a flag it does not know fails here, not in every real
    comparison with --budget."""
    import importlib

    from common import cli

    commands = []

    def run_stage(command, log):  # record the probe's command; say it failed
        commands.append(command)
        return 1, "stopped here"

    monkeypatch.setattr(runner, "run_stage", run_stage)
    flags = compare_main.train_flags(compare_main.parse(["--budget", "60"]))
    with pytest.raises(ConfigError, match="could not measure the speed"):
        compare_main.calibrated_epochs(entry, flags, 60.0, tmp_path)
    [command] = commands
    package = importlib.import_module(entry.package)
    chapter = package.SUPERVISED if entry is runner.SUPERVISED else package.CHAPTER
    module_at = command.index(f"{entry.package}.{entry.train_module}")
    argv = [arg for arg in command[module_at + 1:] if arg not in entry.extra]  # --backend: train.py's own
    config = cli.resolve(chapter, cli.build_parser(chapter, "test").parse_args(argv)).config
    caps = compare_main.CALIBRATION_KNN_IMAGES
    assert (config["knn_max_train"], config["knn_max_test"]) == (caps, caps)
    assert (config["epochs"], config["max_steps_per_epoch"], config["knn_every"]) == (1, 6, 0)


def test_the_calibration_speed_is_the_median_after_the_compiling_steps():
    rows = [{"kind": "init"}, *({"kind": "step", "images_per_sec": v} for v in (10, 20, 100, 100, 50, 60))]
    assert compare_main.steady_speed(rows, "A") == 80  # not the two slowest dropped: (60 + 100) / 2
    with pytest.raises(ConfigError, match="speed of A: an epoch holds only 2 step.* --epochs instead"):
        compare_main.steady_speed(rows[:3], "A")  # e.g. --budget with --batch-size 512 on digits


def test_a_failed_stage_is_reported_by_its_cause_not_by_the_generic_bug_line():
    bug = ["Traceback (most recent call last):", '  File "train.py", line 9, in <module>',
           "RuntimeError: out of memory in the first step",
           "error: python -m x.train stopped on an unexpected RuntimeError (a bug, not your input). "
           "Please report it with the traceback above and the run's config.json."]
    assert runner.failure_line(bug, 1) == ("error: RuntimeError: out of memory in the first step "
                                           "(a bug: its traceback is in the log)")
    assert runner.failure_line(["epoch 1", "error: --data-dir: no such folder"], 1) == (
        "error: --data-dir: no such folder")
    assert runner.failure_line(["loading", "epoch 1/3:  10%", "epoch 1/3:  20%"], -signal.SIGKILL) == (
        "killed by SIGKILL; its last line: epoch 1/3:  20%")
    advice = "--init-encoder /a/long/path/encoder.safetensors: no such file. " + "Every chapter ... " * 20
    usage = ["usage: python -m pytorch_simclr.train [-h] [--recipe {quick,cifar10,stl10}] ...",
             f"python -m pytorch_simclr.train: error: {advice}"]  # argparse's usage error, exit code 2
    assert runner.failure_line(usage, 2) == f"error: {advice}"  # all of it, not cut at 200 characters
    assert runner.failure_line([], 3) == "exit code 3"


def test_a_stage_s_output_reaches_the_log_even_if_it_is_killed(tmp_path, monkeypatch):
    """The child's prints are unbuffered: a chapter killed outright (the kernel's out-of-memory
    SIGKILL) has still logged every line it printed, and the report names the signal."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    child = "import os, signal; print('epoch 1: loss 5.0'); os.kill(os.getpid(), signal.SIGKILL)"
    code, last = runner.run_stage([sys.executable, "-c", child], tmp_path / "stage.log")
    assert code == -signal.SIGKILL
    assert last == "killed by SIGKILL; its last line: epoch 1: loss 5.0"
    assert "epoch 1: loss 5.0" in (tmp_path / "stage.log").read_text()


def test_a_ctrl_c_lets_the_chapter_save_and_shows_what_it_says_meanwhile(tmp_path, capsys):
    """Ctrl-C reaches the chapter and the comparison alike. The comparison stops only once the
    chapter has saved and exited; the chapter's last words (how to continue) are shown and logged
    like its other lines."""
    child = ("import os, signal, time; os.kill(os.getppid(), signal.SIGINT); time.sleep(0.5); "
             "print('interrupted: continue with --resume RUN'); raise SystemExit(130)")
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        runner.run_stage([sys.executable, "-c", child], tmp_path / "stage.log")
    assert time.perf_counter() - started >= 0.5  # it waited for the chapter
    assert "interrupted: continue with --resume RUN" in (tmp_path / "stage.log").read_text()
    assert "interrupted: continue with --resume RUN" in capsys.readouterr().out


def test_a_damaged_comparison_state_says_what_to_do_not_that_it_is_a_bug(tmp_path, capsys):
    for text, message in (('{"entries": {},}', "compare.json cannot be read"),
                          ('[1, 2]', 'compare.json holds no comparison')):
        (tmp_path / runner.STATE_FILE).write_text(text)
        assert compare_main.main(["--epochs", "1", "--output-dir", str(tmp_path)]) == 1
        said = capsys.readouterr().err
        assert message in said and "give another --output-dir" in said and "a bug" not in said


def test_a_second_ctrl_c_stops_waiting_for_the_chapter(tmp_path):
    child = ("import os, signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "[os.kill(os.getppid(), signal.SIGINT) or time.sleep(0.2) for _ in range(2)]; time.sleep(10)")
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        runner.run_stage([sys.executable, "-c", child], tmp_path / "stage.log")
    assert time.perf_counter() - started < 8  # not the child's 10 s: the comparison stopped waiting


def test_other_evaluation_caps_evaluate_again_without_training(comparison):
    trained_before = [call for call in calls(comparison) if not call.startswith("evaluate")]
    with pytest.MonkeyPatch.context() as patch:
        use_fake_chapters(comparison.parent / "packages", patch)
        patch.setattr(compare_main, "write_report", lambda *args: None)  # not what is tested here
        for caps in (["--eval-max-train", "50"], []):  # and back: each evaluation follows the flags
            calls_before = len(calls(comparison))
            assert compare_main.main(["--epochs", "3", "--output-dir", str(comparison), *caps]) == 0
            assert len(calls(comparison)) - calls_before == 5  # 2 entries and 3 baselines, evaluated
            state = json.loads((comparison / runner.STATE_FILE).read_text())
            sizes = {json.loads(Path(record["evaluation"]).read_text())["train_images"]
                     for record in state["entries"].values()}
            assert sizes == {50 if caps else 1442}
    assert [call for call in calls(comparison) if not call.startswith("evaluate")] == trained_before


def test_a_report_of_runs_evaluated_on_other_data_is_refused(comparison, tmp_path, capsys):
    runs_copy = tmp_path / "runs"
    shutil.copytree(comparison / "runs", runs_copy)
    evaluation = runs_copy / "beta-run" / "evaluation.json"
    evaluation.write_text(json.dumps({**json.loads(evaluation.read_text()), "train_images": 100}))
    code = compare_main.main(["--runs", str(runs_copy / "alpha-run"), str(runs_copy / "beta-run"),
                              "--output-dir", str(tmp_path / "report")])
    message = capsys.readouterr().err
    assert code == 1 and "evaluated on different data" in message
    assert "digits, 100 training and 355 test images: beta / pytorch" in message
    assert not (tmp_path / "report").exists()


def test_a_report_of_runs_evaluated_on_as_many_but_other_images_is_refused(comparison, tmp_path, capsys):
    """Two seeds' runs evaluated with the same caps hold as many images, drawn differently: the
    evaluations' images_digest tells them apart (an evaluation without one is compared by counts)."""
    runs_copy = tmp_path / "runs"
    shutil.copytree(comparison / "runs", runs_copy)
    pair = [str(runs_copy / "alpha-run"), str(runs_copy / "beta-run")]

    def set_digests(alpha: str | None, beta: str | None) -> None:
        for name, digest in (("alpha-run", alpha), ("beta-run", beta)):
            path = runs_copy / name / "evaluation.json"
            evaluation = {k: v for k, v in json.loads(path.read_text()).items() if k != "images_digest"}
            path.write_text(json.dumps({**evaluation, **({"images_digest": digest} if digest else {})}))

    set_digests("0123456789abcdef", "fedcba9876543210")
    code = compare_main.main(["--runs", *pair, "--output-dir", str(tmp_path / "refused")])
    message = capsys.readouterr().err
    assert code == 1 and "evaluated on as many images but not the same ones" in message
    assert "drawn from each run's seed" in message and not (tmp_path / "refused").exists()
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        set_digests("0123456789abcdef", "0123456789abcdef")
        assert compare_main.main(["--runs", *pair, "--output-dir", str(tmp_path / "same")]) == 0
        set_digests("0123456789abcdef", None)  # evaluated before the digest existed
        assert compare_main.main(["--runs", *pair, "--output-dir", str(tmp_path / "older")]) == 0


def test_a_report_of_runs_evaluated_with_other_knn_or_probe_settings_is_refused(comparison, tmp_path,
                                                                                capsys):
    """The same images, another kNN k or T (another recipe) or probe preprocessing (``evaluate
    --probe-features raw --output evaluation.json``): not one protocol. An evaluation.json written
    before k and T were recorded lacks them: unknown, so not refused."""
    runs_copy = tmp_path / "runs"
    shutil.copytree(comparison / "runs", runs_copy)
    pair = [str(runs_copy / "alpha-run"), str(runs_copy / "beta-run")]
    path = runs_copy / "beta-run" / "evaluation.json"
    evaluation = json.loads(path.read_text())
    for section, key, value, name in (("knn", "k", 200, "kNN k"),
                                      ("knn", "temperature", 0.5, "kNN temperature"),
                                      ("linear_probe", "preprocessing", "raw", "probe preprocessing")):
        path.write_text(json.dumps({**evaluation, section: {**evaluation[section], key: value}}))
        assert compare_main.main(["--runs", *pair, "--output-dir", str(tmp_path / "refused")]) == 1
        message = capsys.readouterr().err
        assert f"evaluated with different {name} ({evaluation[section][key]}: alpha / pytorch, " in message
        assert f"; {value}: beta / pytorch), so their numbers do not compare" in message
    assert not (tmp_path / "refused").exists()
    path.write_text(json.dumps({**evaluation, "knn": {"top1": evaluation["knn"]["top1"]}}))  # older
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        assert compare_main.main(["--runs", *pair, "--output-dir", str(tmp_path / "older")]) == 0


def test_a_chapter_whose_speed_cannot_be_measured_is_a_failed_row_and_the_others_still_run(tmp_path):
    report_dir = tmp_path / "report"

    def calibrated_epochs(entry, flags, seconds, folder):
        if entry.name == "alpha":
            raise ConfigError("could not measure the speed of Alpha / fake: error: block must be "
                              "basic|bottleneck")
        return 2, 25.0

    with pytest.MonkeyPatch.context() as patch:
        fake_chapters(tmp_path, patch)
        without_embeddings(patch)
        patch.setattr(compare_main, "calibrated_epochs", calibrated_epochs)
        assert compare_main.main(["--budget", "60", "--output-dir", str(report_dir)]) == 1
    assert [call for call in calls(report_dir) if call.startswith("train")] == ["train beta 2 epochs"]
    table = accuracy_rows((report_dir / "report.md").read_text())
    assert table["Alpha / fake"][0] == ("failed: could not measure the speed of Alpha / fake: error: "
                                        "block must be basic\\|bottleneck")  # escaped: one cell
    assert table["Beta / fake"][0] == "0.500" and len(table["Alpha / fake"]) == len(table["Beta / fake"])


def test_a_partial_report_never_mixes_two_evaluation_protocols(comparison, tmp_path):
    """Ctrl-C while the encoders are evaluated again with other caps: the report shows those done
    with the new caps, and the others as waiting for them, not their old numbers beside the new."""
    folder = tmp_path / "report"
    shutil.copytree(comparison, folder)
    state = runner.State(folder)
    state.entry("beta")["eval_flags"] = ["--max-train", "50"]  # re-evaluated before the Ctrl-C
    entries = [runner.Entry("alpha", "Alpha / fake", "alpha"), runner.Entry("beta", "Beta / fake", "beta")]
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        compare_main.write_report(folder, entries, state,
                                  compare_main.parse(["--epochs", "3", "--eval-max-train", "50"]))
    table = accuracy_rows((folder / "report.md").read_text())
    assert table["Beta / fake"][:2] == ["0.500", "–"]  # no lift over a baseline of the old protocol
    for title in ("Alpha / fake", "random-init encoder", "the pixels themselves (no encoder)"):
        assert table[title][0].startswith("evaluated with other --eval-max-train/--eval-max-test")


def test_a_partial_report_withholds_every_evaluation_the_rerun_would_make_again(comparison, tmp_path):
    """Ctrl-C before the rerun evaluated again what it would not reuse (runner.stale): alpha's
    evaluation.json rewritten by hand, beta trained on by hand after its evaluation. Their old
    numbers are withheld, with the reason; the report also says that the diagnostics use each run's
    own views."""
    folder = tmp_path / "report"
    shutil.copytree(comparison, folder)
    state_file = folder / runner.STATE_FILE  # the copy's state names the copy's runs
    state_file.write_text(state_file.read_text().replace(str(comparison), str(folder)))
    evaluation = folder / "runs" / "alpha-run" / "evaluation.json"
    evaluation.write_text(json.dumps({**json.loads(evaluation.read_text()), "train_images": 7}))
    summary = folder / "runs" / "beta-run" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps": 40, "epochs": 4}))
    entries = [runner.Entry("alpha", "Alpha / fake", "alpha"), runner.Entry("beta", "Beta / fake", "beta")]
    with pytest.MonkeyPatch.context() as patch:
        without_embeddings(patch)
        compare_main.write_report(folder, entries, runner.State(folder),
                                  compare_main.parse(["--epochs", "3"]))
    markdown = (folder / "report.md").read_text()
    table = accuracy_rows(markdown)
    assert table["Alpha / fake"][0] == (f"{evaluation} was rewritten since the comparison evaluated it "
                                        "(by hand?): run the same command again to evaluate it again")
    assert table["Beta / fake"][0].startswith("evaluated from an earlier checkpoint than the run's last")
    assert table["random-init encoder"][0] == "0.100"  # the baselines are still the comparison's
    assert "drawn with each run's own augmentation" in markdown and report.VIEWS_NOTE in markdown


def test_a_sigterm_that_arrives_while_the_chapter_is_being_started_reaches_it(tmp_path, monkeypatch):
    """A SIGTERM after the child exists but before Popen has returned it is passed on all the same:
    the chapter saves and stops instead of training to its end unrecorded."""
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM'), sys.exit(130)))\n"
             "print('ready', flush=True)\ntime.sleep(30)")
    popen = subprocess.Popen

    def popen_then_sigterm(*args, **kwargs):
        process = popen(*args, **kwargs)
        assert process.stdout.readline() == "ready\n"  # its handler is set
        os.kill(os.getpid(), signal.SIGTERM)  # run_stage's handler runs here, with no child yet
        return process

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigterm)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        runner.run_stage([sys.executable, "-c", child], tmp_path / "stage.log")
    assert time.perf_counter() - started < 20  # not the child's 30 s
    assert "got SIGTERM" in (tmp_path / "stage.log").read_text()


def test_every_figure_gives_each_encoder_one_colour_and_copes_with_small_data(tmp_path):
    rng = np.random.default_rng(0)
    evaluation = {"label_efficiency": {"0.01": {"top1": 0.2}, "1.0": {"top1": 0.6}}}
    labels = np.repeat(np.arange(2), 6)
    features = {"features": rng.normal(size=(12, 4)) + labels[:, None], "labels": labels}
    lines = [report.Line("a", "A", None, None, None, "failed: x"),
             report.Line("b", "B", None, evaluation, features)]
    figure = report.label_efficiency_figure(lines)
    (plotted,) = figure.axes[0].get_lines()
    assert to_hex(plotted.get_color()) == to_hex("C1")  # B's colour, although A draws no curve
    figure = report.embedding_figure(lines)  # 12 test images: fewer than t-SNE's default perplexity
    assert figure.axes[0].get_title() == "B" and len(figure.axes[0].collections[0].get_offsets()) == 12
    for label in ("cat", "dog"):  # a data set of two classes: the views of two images per method
        folder = tmp_path / "pets" / "test" / label
        folder.mkdir(parents=True)
        for n in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * n, np.uint8)).save(folder / f"{n}.png")
    config = {"dataset": "imagefolder", "knn_test_split": "test", "data_dir": str(tmp_path / "pets"),
              "image_size": 8}
    figure = report.views_figure(config, ["simclr"])
    assert figure.axes[0].get_title(loc="left") == "simclr: 4 views of each of 2 test images"


def test_the_t_sne_gives_each_of_up_to_20_classes_its_own_colour():
    labels = np.repeat(np.arange(15), 4)
    features = {"features": np.random.default_rng(0).normal(size=(60, 4)) + labels[:, None],
                "labels": labels}
    figure = report.embedding_figure([report.Line("a", "A", None, {}, features)])
    points = figure.axes[0].collections[0]
    assert len(np.unique(points.to_rgba(points.get_array()), axis=0)) == 15


def test_an_evaluation_rewritten_by_hand_is_made_again(comparison):
    """``evaluate RUN_DIR --max-train 7`` by hand rewrites the file the comparison recorded: the next
    call evaluates that encoder again rather than report a capped evaluation as the comparison's."""
    state = json.loads((comparison / runner.STATE_FILE).read_text())
    path = Path(state["entries"]["alpha"]["evaluation"])
    rewritten = json.loads(path.read_text())
    rewritten["train_images"] = 7
    path.write_text(json.dumps(rewritten))
    before = len(calls(comparison))
    with pytest.MonkeyPatch.context() as patch:
        use_fake_chapters(comparison.parent / "packages", patch)
        patch.setattr(compare_main, "write_report", lambda *args: None)  # not what is tested here
        assert compare_main.main(["--epochs", "3", "--output-dir", str(comparison)]) == 0
    assert calls(comparison)[before:] == ["evaluate alpha"]
    assert json.loads(path.read_text())["train_images"] == 1442
