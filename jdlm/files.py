"""Writing files so that a reader never sees half of one: the one helper every writer in jdlm uses (the CLI's
outputs, the store of compiled programs, training's data pools, trajectories and metrics)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: str | Path, write) -> Path:
    """Calls `write(tmp)` on a temporary file beside `path` (same suffix), then renames it over `path`.

    A reader never sees half a file, an interrupted write leaves the old file as it was, concurrent writers each
    use their own temporary file, and the rename replaces a link itself instead of writing through it.
    """
    path = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the permissions a plain write would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
