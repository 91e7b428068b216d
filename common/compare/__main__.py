"""``python -m common.compare``: SimCLR (PyTorch), MoCo v2 (TensorFlow) and BYOL (Keras) side by side.

    python -m common.compare                                  # quick recipe, built-in data, offline
    python -m common.compare --keras-backend all              # BYOL on TensorFlow, JAX and PyTorch
    python -m common.compare --epochs 3 --seed 1 --output-dir reports/demo-seed1  # the noise
    python -m common.compare --recipe cifar10 --dataset imagefolder --data-dir PATH/cifar10-jpeg.zip \\
        --arch resnet18_small --budget 1200 --eval-max-train 10000 --eval-max-test 2000
                                                              # about 20 minutes of training each
    python -m common.compare --epochs 3 --no-zero-init-residual  # residual branches' BN gamma at 1
    python -m common.compare --dataset placeddigits --image-size 16 --epochs 20  # crops' invariance
    python -m common.compare --runs runs/a runs/b             # a report of existing runs only

Each method is trained by its chapter, as a subprocess, on the same data with the same encoder and
the same budget, from the same initial weights (the first method's starting encoder, exported by its
random-init evaluation, is every later one's ``--init-encoder``); then every encoder -- and the
baselines: the random-init encoder (with its initial BatchNorm statistics, and with statistics
re-estimated on the training images), the normalised pixels themselves with no encoder, and a
supervised encoder trained on the labels with the same budget -- is evaluated by the same
``common/evaluate`` (kNN, logistic-regression probe, label efficiency, diagnostics). The report
(``report.md``, ``report.html``, the PNGs) goes into ``--output-dir``. Running the command again
with the same flags continues an interrupted or partly failed comparison (a run stopped by Ctrl-C,
or by a SIGTERM to the comparison, is resumed from its checkpoint, one that failed before its first
checkpoint trains again, with the epochs its ``--budget`` was measured at); a folder that holds a
comparison trained with other flags (another budget, seed or data set) or by other code (a changed
file in ``common/`` or a chapter) is refused rather than mixed into one table, and other evaluation
caps (``--eval-max-train``, ``--eval-max-test``) evaluate every encoder again without training. A
report of existing runs (``--runs``) is refused if they were evaluated on different images or with
different kNN or probe settings, and never written into a folder that holds a trained comparison.
A lift over the random-init lines is shown only for a run that started from that encoder.

A comparison that trains exits with 0 when every line of its table worked, 1 when one failed (after
writing the report, which shows its error), 130 when interrupted; ``--runs`` reports what it finds
(an outdated evaluation is a line with its reason) and exits with 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import cli, recipes, runs
from common.checkpoints import CheckpointStore
from common.compare import report, runner
from common.errors import ConfigError, run_main
from common.evaluate.flow import cap_problems
from common.session import COMPILE_STEPS


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", default="quick", choices=recipes.recipe_names("simclr"),
                        help="the recipe every method trains with (each method's own values)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None,
                        help="the shared budget in epochs (default: the recipes' own)")
    budget.add_argument("--budget", "--time-budget", dest="time_budget", type=float, default=None,
                        metavar="SECONDS",
                        help="the shared budget in training seconds per method: each chapter's "
                             "throughput is measured in a few steps first, and its epochs set to fit")
    parser.add_argument("--dataset", default=None, help="override the recipes' dataset")
    parser.add_argument("--data-dir", default=None, help="where the dataset lives")
    parser.add_argument("--arch", default=None, help="override the recipes' encoder")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override the recipes' view size (e.g. 16 for placeddigits' native size)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipes' batch")
    parser.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=None,
                        help="override the encoders' initialisation: --no-zero-init-residual starts "
                             "every residual branch's last BatchNorm gamma at 1 instead of 0, for "
                             "every method and the random-init baselines")
    parser.add_argument("--seed", type=int, default=None,
                        help="every chapter's seed (default: the recipes' own, 0): rerun with "
                             "another to see how much of a difference is noise")
    parser.add_argument("--keras-backend", default="tensorflow",
                        choices=(*runner.KERAS_BACKENDS, "all"), help="where BYOL runs")
    parser.add_argument("--no-supervised", action="store_true", help="skip the supervised baseline")
    parser.add_argument("--eval-max-train", type=int, default=None,
                        help="cap the labelled training images of the evaluation (faster probes)")
    parser.add_argument("--eval-max-test", type=int, default=None, help="cap the test images")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="the report folder (default: reports/compare-RECIPE; with --runs, "
                             "reports/compare-runs)")
    parser.add_argument("--runs", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                        help="make the report from these run directories instead of training")
    args = parser.parse_args(argv)
    if args.time_budget is not None and not args.time_budget > 0:
        parser.error(f"--budget must be a positive number of seconds (got {args.time_budget:g})")
    if args.runs is None:  # before anything trains: every chapter would refuse them
        for method in recipes.RECIPES:
            try:
                cli.new_run_config(method, args.recipe, shared_settings(args))
            except ConfigError as error:
                parser.error(f"{error} (with {method}'s {args.recipe!r} recipe)")
    # before anything trains: every evaluation would refuse them
    for problem in cap_problems("--eval-max-train", args.eval_max_train, "--eval-max-test",
                                args.eval_max_test):
        parser.error(problem)
    return args


SHARED_SETTINGS = ("dataset", "data_dir", "arch", "image_size", "batch_size", "epochs", "seed",
                   "zero_init_residual")
"""The settings the comparison passes on to every chapter."""


def shared_settings(args: argparse.Namespace) -> dict:
    return {key: value for key in SHARED_SETTINGS if (value := getattr(args, key)) is not None}


def train_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--recipe", args.recipe, "--knn-every", "1"]
    for key, value in shared_settings(args).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # --zero-init-residual / --no-zero-init-residual
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags += [flag, str(value)]
    return flags


def eval_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    if args.eval_max_train is not None:
        flags += ["--max-train", str(args.eval_max_train)]
    if args.eval_max_test is not None:
        flags += ["--max-test", str(args.eval_max_test)]
    return flags


CALIBRATION_KNN_IMAGES = 100
"""The probe's kNN monitor (at its start and end, as in every run) on this many images of each
split: its accuracy is thrown away. On CIFAR-10 (the `cifar10` recipe, `resnet18_small`) SimCLR's
probe took 53 s with these caps, 3 min 32 s with both passes over all 60,000 images (2026-12-02)."""


def calibrated_epochs(entry: runner.Entry, flags: list[str], seconds: float,
                      folder: Path) -> tuple[int, float]:
    """Epochs of ``entry`` whose training steps fit in ``seconds`` (at least 1), and the seconds
    of one epoch's steps: the median of its images/s over 6 steps, the first two (which include
    compilation) left out."""
    probe_root = folder / "calibration" / entry.name
    before = set(probe_root.glob("*")) if probe_root.is_dir() else set()
    knn_caps = ["--knn-max-train", str(CALIBRATION_KNN_IMAGES), "--knn-max-test", str(CALIBRATION_KNN_IMAGES)]
    command = entry.train_command(*flags, "--epochs", "1", "--warmup-epochs", "0",
                                  "--max-steps-per-epoch", "6", "--knn-every", "0", *knn_caps,
                                  "--log-every", "1", "--output-dir", str(probe_root))
    code, last = runner.run_stage(command, folder / "logs" / f"{entry.name}-calibration.log")
    run_dir = runner.new_run_dir(before, probe_root)
    if code != 0 or run_dir is None:
        raise ConfigError(f"could not measure the speed of {entry.title}: {last}")
    run = runs.read_run(run_dir)
    images = CheckpointStore(run_dir).position()["data"]["num_images"]
    batch = run.config["batch_size"]
    seconds_per_epoch = (images // batch) * batch / steady_speed(run.metrics, entry.title)
    return max(1, int(seconds // seconds_per_epoch)), seconds_per_epoch


def budget_line(record: dict, budget: float) -> str:
    """What the calibration of one entry found, said plainly when not even one epoch fits."""
    epochs, epoch_seconds = record["budget_epochs"], record.get("epoch_seconds")
    if epoch_seconds is not None and epoch_seconds > budget:
        return (f"one epoch takes about {epoch_seconds:.0f} s, over the budget of {budget:.0f} s: "
                "it trains 1 epoch anyway, the least a run trains (a larger --budget, or a "
                "smaller data set, keeps the methods on the same budget)")
    each = "" if epoch_seconds is None else f" of about {epoch_seconds:.0f} s"  # (older compare.json)
    return f"{epochs} epoch(s){each} fit in {budget:.0f} s"


def steady_speed(metrics: list[dict], title: str) -> float:
    """The median images/s of the step rows after the first ``session.COMPILE_STEPS`` (which
    include compilation), as the run's own ``images_per_sec`` counts them."""
    rates = [row["images_per_sec"] for row in metrics if row.get("kind") == "step"]
    if len(rates) <= COMPILE_STEPS:
        raise ConfigError(f"could not measure the speed of {title}: an epoch holds only {len(rates)} "
                          f"step(s) of this batch, and the first {COMPILE_STEPS} compile: give "
                          "--epochs instead of --budget, or a smaller --batch-size")
    return statistics.median(rates[COMPILE_STEPS:])


def share_initial_encoder(entry: runner.Entry, state: runner.State, flags: list[str], logs: Path) -> None:
    """Make the first trained entry's starting encoder everyone's: its random-init baseline, whose
    evaluation writes that encoder in the portable format, becomes ``--init-encoder`` of every
    entry trained after it. So each method starts from the very same weights, and its lift over
    the random-init line is exactly what its training did (the chapters' own draws differ: on
    ``placeddigits`` the PyTorch one scores kNN 0.377 and the TensorFlow one 0.313)."""
    title = runner.BASELINES["random-init"][0]
    print(f"{title}: evaluating, and sharing it as every other method's starting encoder", flush=True)
    record = runner.evaluate(entry, state, flags, logs, baseline="random-init")
    exported = Path(state.entry(entry.name)["run_dir"]) / runs.RANDOM_INIT_ENCODER_FILE
    if record.get("status") != "failed" and exported.is_file():
        state.data["initial_encoder"] = str(exported)
        state.save()


def baseline_source(entries: list[runner.Entry], state: runner.State) -> runner.Entry | None:
    """The entry whose run the baselines are evaluated on: the one whose starting encoder every
    later method shared (even if its own evaluation failed: the others' lifts are over its lines),
    else the first one evaluated."""
    initial = state.data.get("initial_encoder")
    records = {entry.name: state.data["entries"].get(entry.name, {}) for entry in entries}
    shared = next((entry for entry in entries if initial and records[entry.name].get("run_dir")
                   and Path(records[entry.name]["run_dir"]) == Path(initial).parent), None)
    return shared or next((e for e in entries if records[e.name].get("status") == "evaluated"), None)


def compare(args: argparse.Namespace) -> int:
    keras = list(runner.KERAS_BACKENDS) if args.keras_backend == "all" else [args.keras_backend]
    folder = (args.output_dir or Path("reports") / ("compare-runs" if args.runs else f"compare-{args.recipe}")
              ).resolve()  # compare.json's paths then hold from any working directory
    if args.runs:
        if (folder / runner.STATE_FILE).is_file():
            raise ConfigError(f"{folder} holds a comparison that trained its own runs: its report "
                              "would be replaced by this one; give another --output-dir")
        titles = [_title(path) for path in args.runs]
        titles = [f"{title} ({path.name})" if titles.count(title) > 1 else title  # two of a chapter
                  for title, path in zip(titles, args.runs, strict=True)]
        lines = [report.load_line(path.name, title, str(path), str(path / runs.EVALUATION_FILE))
                 for title, path in zip(titles, args.runs, strict=True)]
        for line in lines:
            line.error = outdated(line)
            if line.error:
                line.evaluation = line.features = None
        notes = [f"Report of the existing runs {', '.join(map(str, args.runs))}.", report.VIEWS_NOTE]
        unfinished = [f"{line.title} (evaluated at step {step})" for line in lines
                      if line.run is not None and line.run.summary is None and line.evaluation
                      and (step := (line.evaluation.get("checkpoint") or {}).get("global_step")) is not None]
        if unfinished:
            notes.append("Not finished training (no summary.json; evaluated from a checkpoint on "
                         f"the way, and no Cost row): {', '.join(unfinished)}.")
        for name, (title, flags, file, _) in runner.BASELINES.items():
            source = next((path for path in args.runs if (path / file).is_file()), None)
            if source is not None:  # written by `<chapter>.evaluate RUN_DIR <flags>`
                lines.append(report.load_line(name, title, None, str(source / file), source=str(source)))
                notes.append(f"The {title} line: `evaluate {' '.join(flags)}` of {source.name}.")
        notes.append("A lift over a random-init line is shown only for the run it was evaluated on "
                     "and for runs that started from that run's encoder (`--init-encoder`): the "
                     "lift of a run from another draw would count the two draws' difference.")
        check_one_protocol(lines)
        publish(folder, lines, "Comparison of existing runs", notes)
        return 0
    state = runner.State(folder)
    entries = runner.entries(keras, supervised=not args.no_supervised)
    logs, runs_root = folder / "logs", folder / "runs"
    flags = train_flags(args)
    state.claim(flags if args.time_budget is None else [*flags, "--budget", f"{args.time_budget:g}"],
                runner.code_digest(entries))
    durations, entry_started = [], time.perf_counter()
    try:
        for number, entry in enumerate(entries, start=1):
            if number > 1:
                durations.append(time.perf_counter() - entry_started)
            entry_started = time.perf_counter()
            left = seconds_left(durations, len(entries) - number + 1)
            eta = "" if left is None else f", about {left:.0f} s left"
            print(f"[{number}/{len(entries)}] {entry.title}: training{eta}", flush=True)
            entry_flags = flags
            if args.time_budget is not None:  # measured once: a retry trains the same epochs
                record = state.entry(entry.name)
                if "budget_epochs" not in record:
                    try:
                        record["budget_epochs"], record["epoch_seconds"] = calibrated_epochs(
                            entry, flags, args.time_budget, folder)
                    except ConfigError as error:  # a row of the table, as a failed training is
                        record.update(status="failed", error=str(error))
                        state.save()
                        print(f"    failed: {error}", flush=True)
                        continue
                    state.save()
                    print(f"    {budget_line(record, args.time_budget)}", flush=True)
                entry_flags = [*flags, "--epochs", str(record["budget_epochs"])]
            initial = state.data.get("initial_encoder")
            if initial is not None:
                entry_flags = [*entry_flags, "--init-encoder", initial]
            record = runner.train(entry, state, runs_root, entry_flags, logs)
            if record["status"] != "failed":
                print(f"[{number}/{len(entries)}] {entry.title}: evaluating", flush=True)
                runner.evaluate(entry, state, eval_flags(args), logs)
                if initial is None:
                    share_initial_encoder(entry, state, eval_flags(args), logs)
            else:
                print(f"    failed: {record['error']}", flush=True)
        first = baseline_source(entries, state)
        if first is not None:
            for baseline, (title, *_) in runner.BASELINES.items():
                print(f"{title}: evaluating", flush=True)
                runner.evaluate(first, state, eval_flags(args), logs, baseline=baseline)
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; the report below is partial. Run the same "
              "command again to continue.", file=sys.stderr)
        write_report(folder, entries, state, args)
        return 130
    write_report(folder, entries, state, args)
    failed = [name for name in [*(e.name for e in entries), *runner.BASELINES]
              if state.data["entries"].get(name, {}).get("status") == "failed"]
    if failed:
        print(f"{len(failed)} line(s) of the comparison failed ({', '.join(failed)}): the report "
              f"shows each error, and {logs} holds the logs. Run the same command again to retry "
              "them (the lines that worked are kept).", file=sys.stderr)
        return 1
    return 0


REUSED_SECONDS = 1.0
"""An entry done in less reused its earlier training and evaluation (a rerun): no subprocess ran."""


def seconds_left(durations: list[float], remaining: int) -> float | None:
    """The time ``remaining`` entries should take, at the mean of the entries done so far that
    trained or evaluated (None before the first): in a rerun, the entries it skips take no time and
    would make the rest look free."""
    worked = [seconds for seconds in durations if seconds >= REUSED_SECONDS]
    return statistics.fmean(worked) * remaining if worked else None


def outdated(line: report.Line) -> str | None:
    """Why a run's ``evaluation.json`` is not its final encoder's, or None: it was made of an
    earlier checkpoint (the run was evaluated while training, then trained on)."""
    if line.run is None or line.evaluation is None or \
            runner.scored_last_step(line.evaluation, line.run.summary):
        return None
    chapter = report.package_of(line.run.config) or "<chapter>"
    return (f"its {runs.EVALUATION_FILE} is of step {line.evaluation['checkpoint'].get('global_step')}, "
            f"the run ended at step {line.run.summary['steps']}: evaluate it again "
            f"(python -m {chapter}.evaluate {line.run.path})")


KNN_SETTING = ("the kNN k and T are each run's recipe's (knn_k, knn_temperature in its config.json): "
               "report runs of the same kNN settings together")
PROTOCOL_SETTINGS = (  # (name, evaluation.json's section and key, how to make them alike)
    ("kNN k", "knn", "k", KNN_SETTING),
    ("kNN temperature", "knn", "temperature", KNN_SETTING),
    ("probe preprocessing", "linear_probe", "preprocessing",
     "evaluate the runs whose evaluation.json is not standardized again with <chapter>.evaluate "
     "RUN_DIR (--probe-features raw writes evaluation-raw-probe.json, which --runs does not read)"),
)


def check_one_protocol(lines: list[report.Line]) -> None:
    """Refuse a report of runs evaluated on different data or with different settings (kNN k and
    temperature, the probe's feature preprocessing): their numbers would not compare.

    Runs with the same image counts can still have been evaluated on different images (a capped
    subset is drawn from each run's seed): their ``images_digest`` tells. An evaluation written
    before a value was recorded (``images_digest``; kNN k and temperature) lacks it: that value is
    unknown, and compared only among the evaluations that hold it (the counts still are)."""
    protocols = _titles_by(lines, lambda evaluation: tuple(
        evaluation.get(k) for k in ("dataset", "train_images", "test_images")))
    if len(protocols) > 1:
        described = "; ".join(f"{dataset}, {train} training and {test} test images: {', '.join(titles)}"
                              for (dataset, train, test), titles in protocols.items())
        raise ConfigError(f"these runs were evaluated on different data ({described}), so their "
                          "numbers do not compare: evaluate them on the same images "
                          "(`python -m <chapter>.evaluate RUN_DIR --max-train N --max-test M`) or "
                          "report them separately")
    digests = _titles_by(lines, lambda evaluation: evaluation.get("images_digest") or None)
    if len(digests) > 1:
        described = "; ".join(", ".join(titles) for titles in digests.values())
        raise ConfigError(f"these runs were evaluated on as many images but not the same ones "
                          f"({described}): a capped subset (--max-train/--max-test, "
                          "--knn-max-train/--knn-max-test) is drawn from each run's seed, and "
                          "another --data-dir holds other images. Evaluate them without caps, or "
                          "report each seed separately")
    for name, section, key, advice in PROTOCOL_SETTINGS:
        values = _titles_by(lines, lambda evaluation, section=section, key=key:
                            (evaluation.get(section) or {}).get(key))
        if len(values) > 1:
            described = "; ".join(f"{value}: {', '.join(titles)}" for value, titles in values.items())
            raise ConfigError(f"these runs were evaluated with different {name} ({described}), so "
                              f"their numbers do not compare: {advice}")


def _titles_by(lines: list[report.Line], value_of) -> dict:
    """The titles of the evaluated lines grouped by ``value_of(evaluation)``; a line whose value is
    None (not recorded by an older evaluation) is left out."""
    groups: dict = {}
    for line in lines:
        if line.evaluation is not None and (value := value_of(line.evaluation)) is not None:
            groups.setdefault(value, []).append(line.title)
    return groups


def _title(path: Path) -> str:
    config = runs.read_run(path).config
    backend = f" ({config['backend']})" if config.get("backend") else ""  # a Keras run's backend
    return f"{config.get('method')} / {config.get('framework')}{backend}"


def write_report(folder: Path, entries: list[runner.Entry], state: runner.State,
                 args: argparse.Namespace) -> None:
    lines = []
    baselines = [runner.Entry(name, title, "") for name, (title, *_) in runner.BASELINES.items()]
    for entry in [*entries, *baselines]:
        record = state.data["entries"].get(entry.name)
        if record is None:
            continue
        baseline = entry.name in runner.BASELINES  # evaluated on a run's protocol, not trained
        evaluation = record.get("evaluation")
        problem = f"failed: {record['error']}" if record.get("error") else None
        # e.g. Ctrl-C before it was evaluated again: what runner.evaluate would not reuse
        if evaluation and (why := runner.stale(record, eval_flags(args), baseline)):
            evaluation, problem = None, f"{why}: run the same command again to evaluate it again"
        lines.append(report.load_line(entry.name, entry.title, None if baseline else record.get("run_dir"),
                                      evaluation, problem, record.get("run_dir") if baseline else None))
    source = state.data["entries"].get("random-init", {}).get("run_dir")
    notes = [f"Recipe {args.recipe!r}; training flags: {' '.join(train_flags(args))}.",
             "Every encoder's accuracies (kNN, probe, label efficiency) are measured by "
             "common/evaluate on the same splits and protocol.", report.VIEWS_NOTE]
    if args.time_budget is not None:
        measured = [f"{entry.title}: {budget_line(record, args.time_budget)}" for entry in entries
                    if "budget_epochs" in (record := state.data["entries"].get(entry.name, {}))]
        notes.append(f"A budget of {args.time_budget:g} s of training per method, in whole epochs "
                     "measured before each trained: " + "; ".join(measured) + ".")
    initial = state.data.get("initial_encoder")
    if initial:
        apart = [line.title for line in lines  # e.g. trained before that encoder could be shared
                 if line.run is not None and not report.started_from(line.run, str(Path(initial).parent))]
        exceptions = (f" (except {', '.join(apart)}: from its own seed's draw, so no lift over the "
                      "random-init lines is shown for it)") if apart else ""
        notes.append(f"Every method trained after {Path(initial).parent.name} started from that "
                     f"run's initial encoder (`--init-encoder {initial}`), so they all start from the "
                     f"same weights{exceptions}; a lift over the random-init lines is shown only for "
                     "runs that started from those lines' encoder.")
    if source:
        notes.append(f"The random-init lines are the encoder of {Path(source).name} before training "
                     "(same architecture, its seed): as initialised, and with its BatchNorm "
                     "statistics re-estimated on the training images (no labels, no training), "
                     "the fair random-features baseline: statistics alone can lift kNN a lot. "
                     "The pixels line is the same evaluation of the normalised pixels themselves, "
                     "with no encoder: what the images alone give (on easy data, more than any "
                     "encoder).")
    publish(folder, lines, f"SSL Three Ways: comparison ({args.recipe})", notes)


def publish(folder: Path, lines: list, title: str, notes: list[str]) -> None:
    """Write the report into ``folder`` and print its accuracy table and where it is."""
    paths = report.write(folder, lines, title, notes)
    print("\n" + report.markdown_table(report.accuracy_table(lines)))
    print(f"\nreport: {paths['md']} and {paths['html']}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return run_main("python -m common.compare", lambda: compare(args))


if __name__ == "__main__":
    sys.exit(main())
