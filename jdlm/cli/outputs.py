"""Files the commands write (--trace, --json, --plot): checked before any work, never over a file by accident,
never through a link, and written atomically."""

from __future__ import annotations

from pathlib import Path

from jdlm.errors import UsageError


def check_output(path: str | None, flag: str, suffixes: tuple[str, ...], *, force: bool = False) -> None:
    """Checked before any work: the suffix, the folder, and no file in the way (unless --force) nor a link."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: give a file ending in {' or '.join(suffixes)}")
    if not p.parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {p.parent} does not exist; create it or choose another path")
    if p.is_symlink():
        raise UsageError(f"{flag} {path} is a symbolic link; jdlm does not write through links: give the real path")
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    if p.exists() and not force:
        raise UsageError(f"{flag} {path} already exists; pass --force to overwrite it, or choose another name")
