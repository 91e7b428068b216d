"""Regenerate tests/cross_framework/REPORT.md: ``python -m tests.cross_framework.report``.

Runs ``pytest tests/cross_framework`` (one process, no xdist) with ``XF_REPORT`` naming the report:
every check records its cells as it runs (``table.record``) and the session's end writes them here
through :func:`render`. The command exits with pytest's status; a failed check is in the report too,
marked **FAIL**. Nothing in the report depends on the machine's speed or the clock: the inputs are
seeded, so a second run writes the same file, up to a last digit of rounding-level errors where a
library sums in another order on another machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REPORT = HERE / "REPORT.md"
PACKAGES = ("numpy", "torch", "torchvision", "tensorflow", "keras", "jax", "jaxlib", "safetensors")

TITLES = {
    "losses": "Losses: value and gradient against common/losses.py",
    "distributed": "Distributed losses against the single-device reference on the global batch",
    "augment": "Augmentations: ops against common/augment, sampled parameters against the spec",
    "encoders": "Encoders: the same portable weights in every framework (PyTorch is the reference)",
    "optim": "Optimisers and the schedule against common/optim.py and common/schedules.py",
    "step": "One whole SimCLR step, float32, against the same step in float64",
}

INTRODUCTION = """\
The checks call the chapters' own functions (`pytorch_simclr`, `tensorflow_moco`, `keras_byol` on
each Keras backend) on the same inputs: losses, optimisers and schedules, augmentation ops and
samplers, the shared stream's views, encoders and their weight files, kNN evaluation. What no
chapter has as one function is assembled in the test from the chapters' pieces: the whole SimCLR
step (each chapter's encoder, views, NT-Xent and LARS, both views in one forward pass, as
`pytorch_simclr`'s trainer does; PyTorch's with the chapter's SimCLR head, TensorFlow's and Keras'
with a SimCLR head built in the test from Keras layers, since those chapters have MoCo's and BYOL's
heads), and TensorFlow's division of each replica's loss by the replica count in the distributed
check. Each result is compared with a framework-free reference: the NumPy definitions in `common/`
where there is one, PyTorch otherwise (encoders), and the assembled PyTorch step run in float64 for
the whole step. A numeric cell is `max abs error / max relative error`; the relative
error is the absolute error divided by the scale of the reference (its largest entry, per tensor,
unless a section says otherwise), and a check passes when it is within the tolerance in the last
column. A cell marked **FAIL** is outside it. An empty cell: the check does not apply to that
implementation (the column "between implementations" compares all of them pairwise)."""

# Why each tolerance is what it is (the tests' docstrings say the same at more length).
JUSTIFICATIONS = {
    "losses": [
        "**float64, 1e-9**: the references and the implementations compute the same formulas in "
        "double precision; what remains is rounding in a different summation order (measured: "
        "~1e-14). The value is relative to max(1, |L|); each gradient row to the largest entry of "
        "its reference row (rows of norm 1e-6 to 1e6 have gradients of 1e6 to 1e-6), and at least "
        "1 / (N x the largest row norm), the order of these losses' gradients, for the rows whose "
        "exact gradient is 0 (BYOL's predictions on their targets, identical embeddings). Between "
        "two implementations, the case's largest reference gradient entry.",
        "**float32, 1e-5**: the issue's bound. Cosine similarities divided by a temperature of 0.01 "
        "are up to 100, so float32's 6e-8 relative rounding of the logits is ~6e-6 absolute in the "
        "log-sum-exp; measured: a few 1e-6.",
        "The grid: every pair of levels of N, D in {8, 256} and T in {0.01, 1} occurs in some case "
        "(N in {2, 256} for NT-Xent; N in {1, 2, 256} with K = 4096 for InfoNCE). NT-Xent with "
        "N = 1 and InfoNCE with K = 0 come on top: there the "
        "positive is the only candidate, so the loss and gradient are exactly 0. These cases catch "
        "an unmasked self-similarity or an empty queue, but they check no arithmetic. "
        "The edge cases: every input the same embeddings, row norms from "
        "1e-6 to 1e6, an all-zero row, every row one point (NT-Xent's closed form log(2N - 1)). The "
        "gradient at an all-zero row is ~1e12 (the norm is clamped at 1e-12), so that case sets the "
        "absolute errors.",
    ],
    "distributed": [
        "**1e-9 (float64)**: the distributed loss is the single-device loss on the same global batch, "
        "split over 2 gloo processes / 2 logical CPUs / 2 JAX host devices; only the summation order "
        "differs. The JAX DataParallel check equals one device by construction (`jax.jit` of a "
        "global-batch function keeps its single-device meaning however the inputs are sharded), so "
        "it can only catch an XLA partitioning bug or a loss JAX cannot trace; the TensorFlow "
        "check's reduction (each replica's loss divided by the replica count, then summed) is "
        "written by the test, not taken from the chapter (tests/test_tf_distributed.py checks the "
        "chapter's step with it).",
    ],
    "augment": [
        "**1/255 (0.0039)** on the 0..1 scale: one step of the uint8 images the ops start from. The "
        "ops are float32 in every framework; interpolation, colour-space round trips and blur "
        "kernels differ in rounding only. The shared stream's views are compared after undoing the "
        "normalisation (dividing by std ~0.25 would stretch the same error four times); the "
        "`op: normalise` cell is compared on the normalised scale, where 1/255 is a quarter of a "
        "uint8 step (a stricter check).",
        "**Sampled parameters**: 4000 draws per sampler with fixed seeds. Crop area fraction and "
        "log aspect ratio: a chi-square test against the exact distribution of torchvision's "
        "algorithm (10 attempts, then the central fallback), 10 bins of about equal mass; the cell "
        "shows X^2 / the critical value at level 1e-4. Crop position given its size (top uniform on "
        "{0..H-h}, left on {0..W-w}, as torchvision draws them): chi-square of top / (H - h) in 10 "
        "equal bins against each draw's own U{0..H-h}, over the draws with room, the central "
        "fallback's size left out. Application frequencies: within 4 binomial "
        "standard deviations of each p. Jitter factors, hue and blur sigma: Kolmogorov-Smirnov "
        "against their uniform ranges; jitter order: chi-square on the 24 permutations; a p-value "
        "below 1e-4 fails. A correct sampler fails any one of these with probability ~1e-4; the "
        "negative controls show wrong samplers failing them. The TensorFlow chapter draws no "
        "parameters itself (it applies the shared stream's), hence no sampler cells.",
    ],
    "encoders": [
        "**Eval features, 1e-4 relative** (the issue's bound): float32 convolutions in another "
        "order; measured ~1e-6. **Train mode, 1e-4**: batch statistics over 4 images and the "
        "gradient of sum(h * R) with respect to every weight, each tensor relative to its own "
        "largest entry; the BN running statistics after that pass too, PyTorch's variance turned "
        "into Keras' biased one (n / (n - 1), docs/encoders.md; without it they differ by 4e-3). "
        "**Parameter counts and file round trips**: exact. **kNN top-1, 1e-3**: "
        "the issue's bound (64 test images: any disagreement on one image would be 1.6e-2).",
        "Encoders run on the ImageNet stem at 64 px for every architecture name but resnet10_small "
        "(one block per stage, no code path of its own; the kNN check runs it), and on the CIFAR "
        "stem for resnet18_small, at 16 px (the same code for every architecture; larger inputs "
        "add time, not code paths).",
    ],
    "optim": [
        "**float64, 1e-9**: 10 steps from the same float64 parameters and gradients, each "
        "implementation under the rates its own schedule gives (checked separately); relative to "
        "max(1, the largest entry of the reference tensor). **Schedule**: float64 rates within "
        "1e-9; Keras' `TableSchedule` holds float32 rates (the chapter's choice, one dtype on every "
        "backend), within 1e-5.",
        "The hyper-parameters are exact in binary (momentum 0.875, weight decay 1/16, eta 2^-6): "
        "Keras casts them through float32, which would move float64 weights by ~1e-8, a property "
        "of Keras' optimizer base class rather than of the update rule.",
        "**AdamW**: each chapter's own, with the usual betas 0.9 and 0.999, against "
        "`common.optim.adamw_step` with the framework's epsilon placement (PyTorch after the bias "
        "correction, Keras before it). Keras' Adam casts the betas through float32 on TensorFlow "
        "(0.999 -> 0.99900001, so 1 - 0.999^t is off by 1.3e-5 at the first step): 3e-5 there "
        "(the TensorFlow chapter's AdamW does Keras' update step op for op), 1e-7 on Keras' "
        "PyTorch backend, 1e-9 elsewhere. A tensor "
        "with gradients of 1e-8, where the epsilon decides the step, makes the other placement "
        "miss by more than 0.5 (the cell's note gives the miss; under 1e-3 the cell fails).",
    ],
    "step": [
        "**Reference**: PyTorch's step in float64 from the same float32 weights and views. Every "
        "float32 implementation is compared with it, PyTorch's own included.",
        "**Loss, 1e-5 relative**: a mean of log-sum-exps of cosine similarities; float32 rounding "
        "through the network moves it by ~1e-6.",
        "**Gradients and updated weights, 1e-4 relative to each tensor's largest entry**: the "
        "gradient of a BN parameter sums thousands of float32 products per channel through every "
        "later layer. Measured against float64: PyTorch's float32 step ~6e-6, TensorFlow's and "
        "Keras' ~2e-5 (other summation orders). BN parameters are outside LARS's adaptation, so "
        "their update is lr x gradient and carries the gradient's error into the weights.",
        "**Update (new - old weights), 1e-3**, of the encoder and of the head's kernels: LARS "
        "scales a kernel's update to ~1e-3 of its norm (~1e-4 on weights ~0.3); the float32 weights "
        "it is read from resolve it to one ulp of the weights (3e-8), ~1e-4 of the update.",
        "**Weight decay 5e-2**, far above a real run's: the gradients here are 1.2 to 34 times the "
        "kernels' norms, so at 1e-4 a forgotten decay or a trust ratio over ||g|| + wd ||w|| "
        "instead of ||d|| moved the update by 0.03 and 0.08 of its tolerance, less than float32 "
        "rounding (0.1). At 5e-2 the decay is still <= 4 % of the decayed gradient and float32's "
        "error is unchanged.",
        "**Negative controls**, each the float64 step with one bug planted: BN epsilon 1e-3 "
        "(Keras' default, where PyTorch's 1e-5 is meant) misses the loss, gradient and weight "
        "tolerances by orders of magnitude; weight decay 0, and the trust ratio over ||g|| + wd "
        "||w|| (the LARS paper's, solo-learn's), miss the update tolerances by 10 times and more "
        "while staying within the weights' (the cells give the multiples).",
    ],
}


def versions() -> str:
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found) + "; CPU."


def render(rows) -> str:
    from tests.cross_framework import table

    failed = [r for r in rows if not r.ok]
    numeric = [r for r in rows if r.rel_err is not None]
    lines = ["# Cross-framework agreement", "",
             "Generated by `python -m tests.cross_framework.report`, which runs `pytest "
             "tests/cross_framework` and writes this file; do not edit it by hand.", "",
             f"Environment: {versions()}", "", INTRODUCTION, "",
             f"**{len(rows)} cells, " + (f"{len(failed)} outside their tolerance.**" if failed
                                         else "all within their tolerance.**")
             + (f" Largest relative error of a numeric cell against its tolerance: "
                f"{max(r.rel_err / r.tolerance for r in numeric if r.tolerance):.2g} of it."
                if numeric else ""), ""]
    for section in table.SECTIONS:
        if not any(r.section == section for r in rows):
            continue
        lines += [f"## {TITLES[section]}", "", table.table(section), "", "Tolerances:", ""]
        lines += [f"- {text}" for text in JUSTIFICATIONS[section]]
        worst = table.notes(section)
        if worst:
            lines += ["", "<details><summary>Worst cases</summary>", ""]
            lines += [f"- {note}" for note in worst]
            lines += ["", "</details>"]
        lines.append("")
    if failed:
        lines += ["## Outside the tolerance", ""]
        lines += [f"- {r.check} / {r.implementation}: {table.cell(r)} (tolerance {r.tolerance})"
                  for r in failed]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # --help, and no others
    env = {**os.environ, "XF_REPORT": str(REPORT)}
    command = [sys.executable, "-m", "pytest", "tests/cross_framework", "-q", "-n", "0", "-p", "no:randomly",
               "-p", "no:cacheprovider"]
    return subprocess.call(command, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
