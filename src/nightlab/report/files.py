"""Writing a report file whole or not at all: a temporary file beside it, synced, then renamed.

A crash, a full disk or Ctrl-C while a figure or page is written must leave the previous file
(or none), never a torn one: a half-written ``progress.png`` opens as a broken image in the
morning and is embedded broken into ``report.html``. The rename is atomic within a folder.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path`` and rename it over ``path`` once it is
    complete and synced; on any failure (an interrupt included) the temporary file goes and
    ``path`` is as it was."""
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):  # a file where a folder should be
        if folder.exists():
            if not folder.is_dir():  # mkdir said "File exists", which reads as the report's own
                raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder", str(folder))
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp's 0600 would hide a report others read: keep the old file's mode, else 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """``fig.savefig(path)`` through :func:`write_atomically`; the format is the path's suffix
    (the temporary file's name would not tell matplotlib), PNG by default."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return write_atomically(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi))
