"""Write a safetensors file tensor by tensor (or row block by row block) with bounded memory.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
padded with spaces to a multiple of 8, then the raw little-endian data. Because every name, dtype and shape is
known before any data is read, the header is written first and each tensor is written at its offset as soon
as it is produced. The file is sized up front, so regions that must be zero (padded lm_head rows) need no
writes at all; `close()` refuses to finish a file whose declared regions were not all written or zero-filled.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from reward_triton.engine import dtypes

DTYPE_NAMES = {d.torch: d.safetensors for d in dtypes.TABLE}


@dataclass
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int
    written: int = 0

    @property
    def row_bytes(self) -> int:
        return (math.prod(self.shape[1:]) if len(self.shape) > 1 else 1) * self.dtype.itemsize


class SafetensorsWriter:
    def __init__(
        self,
        path: str | os.PathLike[str],
        tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._entries: dict[str, _Entry] = {}
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name in sorted(tensors):
            dtype, shape = tensors[name]
            if dtype not in DTYPE_NAMES:
                raise ValueError(f"{name}: unsupported dtype {dtype}")
            size = math.prod(shape) * dtype.itemsize
            self._entries[name] = _Entry(dtype, tuple(shape), offset, offset + size)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._data_start = 8 + len(raw)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._file.truncate(self._data_start + offset)  # zero-filled, sparse where never written

    def write(self, name: str, tensor: torch.Tensor, row_start: int = 0) -> int:
        """Write `tensor` as rows [row_start, row_start + len) of `name`; returns bytes written."""
        entry = self._entries[name]
        if tensor.dtype != entry.dtype:
            raise ValueError(f"{name}: dtype {tensor.dtype}, declared {entry.dtype}")
        expected_tail = entry.shape[1:]
        if row_start == 0 and tuple(tensor.shape) == entry.shape:
            pass
        elif tuple(tensor.shape[1:]) != expected_tail or row_start + tensor.shape[0] > entry.shape[0]:
            raise ValueError(f"{name}: block {tuple(tensor.shape)} at row {row_start} does not fit {entry.shape}")
        data = tensor.detach().contiguous().cpu()
        view = data.view(torch.int16) if data.dtype in (torch.bfloat16, torch.float16) else data
        buf = memoryview(view.numpy()).cast("B")
        self._file.seek(self._data_start + entry.begin + row_start * entry.row_bytes)
        self._file.write(buf)
        entry.written += len(buf)
        return len(buf)

    def mark_zero(self, name: str, nbytes: int) -> None:
        """Declare that `nbytes` of `name` are meant to stay zero (the file was sized zero-filled)."""
        self._entries[name].written += nbytes

    def abort(self) -> None:
        """Close without the completeness check (the caller is unwinding an error; the file is discarded)."""
        self._file.close()

    def close(self) -> None:
        incomplete = [n for n, e in self._entries.items() if e.written != e.end - e.begin]
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if incomplete:
            raise RuntimeError(f"{self.path}: tensors not fully written: {incomplete[:5]}")
