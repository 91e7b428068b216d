"""The failures a user can meet, and the one boundary every entry point runs behind.

A *known* failure (a wrong path, an impossible configuration, a damaged checkpoint, a full disk, a
diverged loss) is one line on stderr that says what happened and what to do, and exit code 1. An
interrupt (Ctrl-C, SIGTERM) is exit code 130 after the run saved what it could. Anything else is a
bug: its traceback is kept and the last line says how to report it.

Exit codes: 0 done, 1 error, 2 a command line argparse refused (its own convention), 130 interrupted.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A known failure; its message says what happened and what to do next."""


class ConfigError(UserError, ValueError):
    """An impossible configuration or command line (which setting, and what to do)."""


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (a diverged loss, a checkpoint that cannot be written or read)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM ended the run; the message says what was saved and how to continue."""


def brief(error: BaseException, limit: int = 160) -> str:
    """``Type: the first line of the message``, at most ``limit`` characters: how a library's error
    is quoted inside one of our one-line messages (some libraries' messages run for paragraphs and
    end in advice that does not apply)."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _known_os_error(error: OSError) -> str | None:
    """One line for the OS errors a user can fix (a path, the disk, permissions), else None."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}: free some space or write elsewhere"
    if error.errno == errno.EROFS:
        return f"read-only file system{where}: pick a folder you can write to"
    if isinstance(error, PermissionError):  # a read as well as a write
        return (f"permission denied{where}: give this user access to it (read access to an input, "
                "write access to an output folder), or pick another path")
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return f"{error.strerror or error}{where}: check the path"
    return None


def known_message(error: BaseException) -> str | None:
    """The one-line message of a known failure, or None for a bug.

    Known: :class:`UserError`, every ``common.datasets`` error (their classes live in
    ``common/datasets/errors.py`` and say what to do), a portable-weights error, and the OS errors of
    :func:`_known_os_error`.
    """
    from common.datasets.errors import DatasetError
    from common.weights import EncoderWeightsError

    if isinstance(error, UserError | DatasetError | EncoderWeightsError):
        return str(error)
    if isinstance(error, OSError):
        return _known_os_error(error)
    return None


def run_main(command: str, main: Callable[[], int]) -> int:
    """Run an entry point's ``main`` behind the boundary and return its exit code.

    ``command`` (e.g. ``python -m pytorch_simclr.train``) names the program in the bug report line.
    """
    try:
        return main()
    except Interrupted as interrupt:
        print(f"\ninterrupted: {interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the boundary: every exception ends here, known or not
        message = known_message(error)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return EXIT_ERROR
        traceback.print_exc()
        print(f"error: {command} stopped on an unexpected {type(error).__name__} (a bug, not your "
              "input). Please report it with the traceback above and the run's config.json.",
              file=sys.stderr)
        return EXIT_ERROR
