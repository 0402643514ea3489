"""Output paths that can never destroy an input: overlap checks, and files written beside then renamed.

`check_outputs` refuses an output path that is an input (or another output) under any spelling: the same path,
a symbolic link to it, a hard link (same device and inode), a `..` detour. `replace_from_part` is the one way the
client publishes a finished output: it was written to `PATH.part` beside PATH and is renamed over it, so an
interrupted run never leaves a half-written PATH and an old PATH stays intact until the new one is complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PART_SUFFIX = ".part"


class OutputPathError(ValueError):
    """An output path would overwrite an input or another output, or cannot be created."""


def part_path(path: str | os.PathLike[str]) -> Path:
    """Where PATH is written before it is renamed into place."""
    p = Path(path)
    return p.with_name(p.name + PART_SUFFIX)


def _spelled(label: str, path: Path) -> str:
    resolved = path.resolve()
    return f"{label} {path}" + (f" (→ {resolved})" if resolved != path.absolute() else "")


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_outputs(inputs: Mapping[str, Path], outputs: Mapping[str, Path]) -> None:
    """Raise OutputPathError when an output is, or links to, an input or another output, or its folder is missing.

    Keys are what the user calls each path ("input", "output", "errors file", ...)."""
    for out_label, out in outputs.items():
        for in_label, src in inputs.items():
            if _same(out, src):
                raise OutputPathError(
                    f"{_spelled(out_label, out)} is the same file as {_spelled(in_label, src)}: refusing to write "
                    f"over the {in_label}; choose another {out_label} path"
                )
    items = list(outputs.items())
    for i, (label_a, a) in enumerate(items):
        for label_b, b in items[i + 1 :]:
            if _same(a, b):
                raise OutputPathError(
                    f"{_spelled(label_a, a)} and {_spelled(label_b, b)} are the same file; give them different paths"
                )
    for label, out in outputs.items():
        parent = out.absolute().parent
        if not parent.is_dir():
            raise OutputPathError(f"the {label}'s folder {parent} does not exist (create it first)")
        if out.is_dir():
            raise OutputPathError(f"{label} {out} is a folder; give a file path")


def replace_from_part(path: str | os.PathLike[str]) -> None:
    """Rename PATH.part over PATH (atomic on one filesystem), then fsync the folder."""
    target = Path(path)
    os.replace(part_path(target), target)
    fsync_dir(target.absolute().parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_beside(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to PATH.part, fsync, and rename it over PATH."""
    part = part_path(path)
    with open(part, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    replace_from_part(path)
