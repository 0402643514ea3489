"""Atomic outputs: a directory or file under its final name is always complete.

Work goes into a hidden sibling (`.NAME.partial-*`) that replaces `NAME` by rename once it is finished; a run that
fails removes it, a run that is killed leaves only the hidden sibling, never something that looks finished.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(output: Path) -> Path:
    """A fresh hidden sibling name `.NAME.partial-XXXXXXXX` of `output` (nothing is created)."""
    return output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"


def partial_directory(output: Path) -> Path:
    """Create and return a fresh hidden sibling directory of `output` to build into."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(output)
    tmp.mkdir()
    return tmp


def commit_directory(tmp: Path, output: Path) -> None:
    """Put the finished `tmp` in place of `output` (an existing `output` is moved aside, then removed)."""
    output = Path(output)
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output, old)
        os.replace(tmp, output)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, output)


@contextmanager
def atomic_directory(output: Path) -> Iterator[Path]:
    """Yield a hidden sibling directory; on success it replaces `output`, on failure it is removed."""
    tmp = partial_directory(Path(output))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, Path(output))


@contextmanager
def atomic_file(output: Path) -> Iterator[Path]:
    """Yield a hidden sibling file path; on success it replaces `output`, on failure it is removed."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(output)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
