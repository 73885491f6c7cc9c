"""Reads safetensors checkpoints (single file or sharded) tensor by tensor, without torch.

The format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw
little-endian bytes. Tensors are memory-mapped, so reading one costs its own size and nothing more.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import ml_dtypes
import numpy as np
from jdlm.errors import SourceCheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}



MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit: a larger header is a corrupt file


def _check_entries(path: Path, header: dict) -> None:
    """Every tensor entry well-formed ({dtype, shape, data_offsets}, sizes matching), none overlapping another."""
    spans = []
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str)
              and isinstance(info.get("shape"), list) and all(isinstance(d, int) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) for o in info["data_offsets"])
              and 0 <= info["data_offsets"][0] <= info["data_offsets"][1])
        if not ok:
            raise SourceCheckpointError(f"{path}: the header entry of tensor {name!r} is malformed; the file is "
                                        "corrupt, download or copy it again")
        begin, end = info["data_offsets"]
        if info["dtype"] in _DTYPES:
            count = int(np.prod(info["shape"], dtype=np.int64))
            if end - begin != count * np.dtype(_DTYPES[info["dtype"]]).itemsize:
                raise SourceCheckpointError(f"{path}: tensor {name} has {end - begin} bytes for shape {info['shape']} "
                                            f"of {info['dtype']}; the file is corrupt")
        spans.append((begin, end, name))
    spans.sort()
    for (_, prev_end, prev), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise SourceCheckpointError(f"{path}: tensors {prev} and {name} overlap (their data_offsets share bytes); "
                                        "the file is corrupt, download or copy it again")


class SafetensorsFile:
    """One .safetensors file: its header, and its tensors as read-only numpy views."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise SourceCheckpointError(f"{self.path} is missing")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SourceCheckpointError(f"{self.path} is truncated ({size} bytes): not a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES:
                raise SourceCheckpointError(f"{self.path} claims a header of {n} bytes, more than the 100 MB the "
                                            "safetensors format allows: the file is corrupt or not a safetensors file")
            if 8 + n > size:
                raise SourceCheckpointError(f"{self.path} is truncated: its header needs {n} bytes, the file has {size}")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, nesting too deep
                raise SourceCheckpointError(f"{self.path} has a corrupt header: not a safetensors file") from None
        if not isinstance(header, dict):
            raise SourceCheckpointError(f"{self.path} has a corrupt header (not a JSON object): not a safetensors file")
        header.pop("__metadata__", None)
        _check_entries(self.path, header)
        self.header = header
        self.data_start = 8 + n
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if self.data_start + end > size:
            raise SourceCheckpointError(f"{self.path} is truncated: its tensors need {self.data_start + end} bytes, the "
                                  f"file has {size}; download or copy it again")

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise SourceCheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        return np.dtype(_DTYPES[info["dtype"]])

    def get(self, name: str) -> np.ndarray:
        """Reads the tensor `name` into a fresh numpy array (its memory is freed with the array: reading a whole
        checkpoint this way never holds more than the tensors still referenced)."""
        info = self.header[name]
        dtype = self.dtype(name)  # sizes were checked with the header
        begin = info["data_offsets"][0]
        count = int(np.prod(info["shape"], dtype=np.int64))
        flat = np.fromfile(self.path, dtype=dtype, count=count, offset=self.data_start + begin)
        return flat.reshape(info["shape"])


def _read_weight_map(index: Path) -> dict[str, str]:
    """The {tensor: shard file} table of model.safetensors.index.json; shards must lie in its directory."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise SourceCheckpointError(f"{index} is corrupt: expected JSON with a 'weight_map'") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SourceCheckpointError(f"{index} is corrupt: 'weight_map' must map tensor names to shard file names")
    for shard in weight_map.values():
        if Path(shard).is_absolute() or ".." in Path(shard).parts or not shard:
            raise SourceCheckpointError(f"{index} lists shard {shard!r}, a path outside {index.parent}; shards must be "
                                        "file names in the checkpoint directory: fix the index")
    return weight_map


class SafetensorsCheckpoint:
    """All tensors of a Hugging Face checkpoint directory: `model.safetensors` or the shards listed in
    `model.safetensors.index.json`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.exists():
            weight_map = _read_weight_map(index)
            shard_names = sorted(set(weight_map.values()))
            missing = [s for s in shard_names if not (self.directory / s).exists()]
            if missing:
                raise SourceCheckpointError(f"{self.directory}: shard(s) {missing} listed in {index.name} are missing")
            self.files = {s: SafetensorsFile(self.directory / s) for s in shard_names}
            self.location = dict(weight_map)
            for name, shard in self.location.items():
                if name not in self.files[shard].header:
                    raise SourceCheckpointError(f"{self.directory / shard} lacks tensor {name} that {index.name} places "
                                          "there; the shard is incomplete")
        elif single.exists():
            self.files = {single.name: SafetensorsFile(single)}
            self.location = {name: single.name for name in self.files[single.name].keys()}
        else:
            raise SourceCheckpointError(f"{self.directory} has neither model.safetensors nor model.safetensors.index.json;"
                                  " point to a Hugging Face checkpoint directory with safetensors weights")

    def keys(self) -> list[str]:
        return list(self.location)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.files[self.location[name]].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.files[self.location[name]].get(name)

    def dtype(self, name: str) -> np.dtype:
        return self.files[self.location[name]].dtype(name)

    def source_files(self) -> Iterator[Path]:
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            yield index
        for f in self.files.values():
            yield f.path


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes numpy arrays as one .safetensors file (used for test fixtures and exports)."""
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        blob = array.tobytes()
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)
