"""Who a chapter is: the few names common/ needs to speak about it (in messages, run directories,
metrics rows and the commands it prints)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chapter:
    """``Chapter("pytorch", "simclr", "pytorch_simclr", "SimCLR / PyTorch")``."""

    framework: str  # "pytorch" | "tensorflow" | "keras"
    method: str  # "simclr" | "mocov2" | "byol" | "supervised": its recipes and augmentation preset
    package: str  # the chapter's Python package, e.g. "pytorch_simclr"
    title: str  # for people: "SimCLR / PyTorch"
    train_module: str = "train"  # the package's training program
    unused_flags: tuple[tuple[str, str], ...] = ()  # (shared setting, why it has no effect here)

    @property
    def train_command(self) -> str:
        return f"python -m {self.package}.{self.train_module}"

    @property
    def evaluate_command(self) -> str:
        return f"python -m {self.package}.evaluate"

    def resume_command(self, run_dir) -> str:
        return f"{self.train_command} --resume {run_dir}"
