"""Writing files so that a reader never sees half of one (the CLI's outputs, the store of compiled programs,
training's data pools, trajectories and metrics, a sampler head's head.json, a manifest's refresh)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _process_umask() -> int:
    """The umask, read once at import: reading it means setting it, which is not safe while other threads create
    files (the store of compiled programs writes from the CLI's decode thread)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


UMASK = _process_umask()


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
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private; give it the permissions a plain write would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
