"""jdlm.files.write_atomically (every writer's temp-and-rename) and checkpoint.refresh_file_table."""

from __future__ import annotations

import json
import os
import stat

import pytest

from jdlm import checkpoint
from jdlm.errors import CheckpointError
from jdlm.files import write_atomically


def test_write_atomically_replaces_the_file_whole(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    assert write_atomically(path, lambda tmp: tmp.write_text("new")) == path
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as a plain write, not mkstemp's private 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.npz"
    path.write_text("old")

    def half(tmp):
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path  # beside the target, its suffix kept (np.savez)
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.npz"]


def test_a_link_is_replaced_not_written_through(tmp_path):
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    write_atomically(tmp_path / "link", lambda tmp: tmp.write_text("new"))
    assert (tmp_path / "target").read_text() == "keep"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_text() == "new"


def test_refresh_file_table_covers_files_added_later(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    digests, sizes = checkpoint.file_table(tmp_path)
    manifest = {"format_version": 2, "dtype": "float32", "params": {"embed": [4, 2]}, "files": digests,
                "bytes": sizes, "note": "kept"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "head.json").write_text('{"storage": "int8"}')
    (tmp_path / "config.json").write_text('{"edited": true}')
    with pytest.raises(CheckpointError):
        checkpoint.verify_files(tmp_path, checkpoint.read_manifest(tmp_path), hashes=True)
    checkpoint.refresh_file_table(tmp_path)
    refreshed = checkpoint.read_manifest(tmp_path)
    assert set(refreshed["files"]) == {"config.json", "head/head.json"}
    assert refreshed["bytes"]["head/head.json"] == len('{"storage": "int8"}')
    assert {k: refreshed[k] for k in ("format_version", "dtype", "params", "note")} == {
        k: manifest[k] for k in ("format_version", "dtype", "params", "note")}
    checkpoint.verify_files(tmp_path, refreshed, hashes=True)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "head", "manifest.json"]  # no temporary left
