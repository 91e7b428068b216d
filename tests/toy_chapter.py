"""A tiny chapter in plain NumPy, to test the run policy of common/session.py without any framework.

Its "model" is a linear map W with a BatchNorm-like running mean that the forward pass updates (so
an interrupt in the middle of a step would be visible in the saved state); its step is one gradient
step on ``mean((x W)^2) + mean((x W - 1)^2)`` with the session's learning rate; its views flip the
images the stream's view parameters say to flip. It follows the contract exactly as the real
chapters do, so every guarantee tested here holds for them too.

    python tests/toy_chapter.py [train flags...]      (a real entry point, for subprocess tests)

``TOY_STEP_SECONDS`` (environment) makes every step sleep that long, so that a test can signal a
real process in the middle of its run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import augment, cli  # noqa: E402
from common.chapter import Chapter  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.session import TrainingSession  # noqa: E402

CHAPTER = Chapter("numpy", "simclr", "tests", "Toy / NumPy", train_module="toy_chapter")
NUM_IMAGES, SIDE = 96, 4


def toy_images(seed: int = 0, num_images: int = NUM_IMAGES) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_images, SIDE, SIDE, 3), dtype=np.uint8)


def parse(argv: list[str]) -> cli.RunRequest:
    return cli.parse(cli.build_parser(CHAPTER, "toy chapter"), CHAPTER, argv)


class ToyTrainer:
    """The chapter side of the contract: a model, one step, the loop, native checkpoints."""

    hooks: dict = {}  # tests put callables here: "before_step"(trainer, step) and "loss"(value)
    layout: dict = {}  # tests put TrainingSession's rank, world_size and replicas here

    def __init__(self, request: cli.RunRequest, images: np.ndarray | None = None):
        self.images = toy_images() if images is None else images
        self.session = TrainingSession(CHAPTER, request, images=self.images,
                                       pair_spec=augment.preset("simclr", SIDE * 8), **ToyTrainer.layout)
        rng = np.random.default_rng(request.config["seed"])
        self.weights = rng.normal(size=(SIDE * SIDE * 3, 5)) * 0.1
        self.running_mean = np.zeros(SIDE * SIDE * 3)
        self.session.restore(self.load_state)

    def save_state(self, folder: Path) -> None:
        np.savez(folder / "toy.npz", weights=self.weights, running_mean=self.running_mean)

    def load_state(self, folder: Path) -> None:
        with np.load(folder / "toy.npz") as state:
            self.weights, self.running_mean = state["weights"], state["running_mean"]

    def weights_finite(self) -> bool:
        return bool(np.isfinite(self.weights).all() and np.isfinite(self.running_mean).all())

    def features(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float64) / 255.0 @ self.weights

    def knn(self) -> float:
        return float(np.mean(self.features(self.images[:16]) > 0))

    def train_step(self, images: np.ndarray, flips: np.ndarray, lr: float) -> float:
        x = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
        x = x.reshape(len(x), -1).astype(np.float64) / 255.0
        self.running_mean = 0.9 * self.running_mean + 0.1 * x.mean(axis=0)  # "BN statistics"
        hooks = ToyTrainer.hooks
        if "during_step" in hooks:
            hooks["during_step"](self)
        y = x @ self.weights
        loss = float(np.mean(y ** 2) + np.mean((y - 1) ** 2))
        if "loss" in hooks:
            loss = hooks["loss"](loss)
        time.sleep(float(os.environ.get("TOY_STEP_SECONDS", 0)))
        gradient = x.T @ (2 * y + 2 * (y - 1)) / y.size
        self.weights = self.weights - lr * gradient
        return loss

    def fit(self) -> dict:
        session = self.session
        with session.training(self.save_state, self.weights_finite, self.weights.size, detail="numpy"):
            session.initial_knn(self.knn)
            for epoch in session.epochs():
                for _, batch in session.steps(epoch):
                    if "before_step" in ToyTrainer.hooks:
                        ToyTrainer.hooks["before_step"](self)
                    lr = session.schedule.rate(session.position.global_step)
                    loss = self.train_step(self.images[batch.indices], batch.view1.flip, lr)
                    session.step_done(loss, lr)
                session.end_epoch(self.knn, representation=lambda: self.features(self.images[:32]))
            return session.finish()


def main(argv: list[str] | None = None) -> int:
    def train() -> int:
        ToyTrainer(parse(sys.argv[1:] if argv is None else argv)).fit()
        return 0

    return run_main(CHAPTER.train_command, train)


if __name__ == "__main__":
    sys.exit(main())
