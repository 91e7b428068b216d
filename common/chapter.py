"""Who a chapter is: the few names common/ needs to speak about it (in messages, run directories,
metrics rows and the commands it prints)."""

from __future__ import annotations

import shlex
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
    # How one process of several is started: "{processes}" and "{module}" are filled in. The
    # default fits a launch where every process runs the same command (TF_CONFIG on each worker).
    multi_process_launch: str = "python -m {module}"

    @property
    def train_command(self) -> str:
        return f"python -m {self.package}.{self.train_module}"

    @property
    def evaluate_command(self) -> str:
        return f"python -m {self.package}.evaluate"

    def resume_command(self, run_dir, processes: int = 1) -> str:
        """The command that continues ``run_dir``, launched as the run was (``processes`` of them),
        ready to paste into a shell (a path with spaces is quoted)."""
        launch = self.train_command if processes == 1 else self.multi_process_launch.format(
            processes=processes, module=f"{self.package}.{self.train_module}")
        return f"{launch} --resume {shlex.quote(str(run_dir))}"
