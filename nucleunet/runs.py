"""Run folders, and files written so that no reader ever sees half of one.

Every command that writes results makes one new folder, ``<out>/<timestamp>-<what>/`` (``--out``
defaults to ``runs/``). A file is written under a temporary name beside its target and renamed
over it, so a run killed at any moment leaves the previous complete file or the new one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from nucleunet.errors import UserError

DEFAULT_RUNS_DIR = Path("runs")  # in the folder a command runs in
# The mark of a file being written (``atomic_path``): what a killed run leaves behind.
PARTIAL = ".partial"
_counter = itertools.count()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds.

    The temporary name is short whatever the target's (a name near the file system's 255-byte limit still gets one),
    keeps the suffix (Keras picks its format by it), is hidden, and ends in ``PARTIAL`` plus the suffix, so that
    ``remove_partial_files`` finds what a killed run left. On an error the temporary file or folder is removed and
    ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "numbers.txt"
    >>> with atomic_path(target) as temporary:
    ...     _ = temporary.write_text("1 2 3")
    >>> target.read_text()
    '1 2 3'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{os.getpid()}-{next(_counter)}{PARTIAL}{path.suffix[:16]}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_json(path: str | os.PathLike, value) -> None:
    """Write ``value`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file; a missing or broken file is a ``UserError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from error


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table as CSV without its index, atomically."""
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def new_run_dir(out: str | os.PathLike, what: str) -> Path:
    """Create a fresh folder ``out/<timestamp>-<what>`` (a suffix ``-1``, ``-2``, ... if taken); never reuses one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = Path(out) / (f"{stamp}-{what}" if attempt == 0 else f"{stamp}-{what}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            if not Path(out).is_dir():
                break
        except OSError as error:
            raise UserError(f"cannot create a run folder in {out}: {error}") from error
    raise UserError(f"cannot create a run folder in {out}: it is not a writable folder")


def remove_partial_files(folder: str | os.PathLike) -> int:
    """Delete the half-written files and folders (``atomic_path``'s temporary names) that a killed run left anywhere
    in ``folder``; returns how many. Only for a folder no other process is writing into."""
    removed = 0
    for path in sorted(Path(folder).rglob(f".*{PARTIAL}*"), reverse=True):
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed += 1
    return removed
