"""Check that a file is a complete GGUF before llama.cpp sees it.

llama.cpp reports a bad file as a NULL model and a log line on stderr; a half-downloaded
file, an HTML error page or a Git LFS pointer saved as ".gguf" deserve a sentence that says
which. This reads the header, metadata and tensor table (via mmap, no copies) and checks
that every tensor's data lies inside the file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from llm.base import ModelError

# GGUF metadata value types -> struct format of a scalar (8: string, 9: array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}

# ggml tensor types -> (elements per block, bytes per block).
_TYPE_SIZES = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    version: int
    tensors: int
    architecture: str
    name: str
    size: int


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int | float | bool:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise _Truncated
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value  # type: ignore[no-any-return]

    def count(self) -> int:
        return int(self.take("Q"))

    def string(self) -> str:
        size = self.count()
        if self.pos + size > len(self.data):
            raise _Truncated
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw.decode("utf-8", "replace")

    def skip_value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, length = int(self.take("I")), self.count()
            if inner in _SCALARS:
                self.pos += length * struct.calcsize("<" + _SCALARS[inner])
                if self.pos > len(self.data):
                    raise _Truncated
            else:
                for _ in range(length):
                    self.skip_value(inner)
            return None
        raise ValueError(f"unknown metadata type {kind}")


def check_gguf(path: str | Path) -> GGUFInfo:
    """Raise ModelError (one line, naming the file) unless `path` is a complete GGUF."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size < 24:
            raise ModelError(f"{path} is not a GGUF model file ({size} bytes)")
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(path, data, size)
    except OSError as exc:
        raise ModelError(f"cannot read the model file {path}: {exc.strerror or exc}") from None


def _parse(path: Path, data: mmap.mmap, size: int) -> GGUFInfo:
    head = bytes(data[:4])
    if head != b"GGUF":
        hint = ""
        if data[:40].startswith(b"version https://git-lfs"):
            hint = " (it is a Git LFS pointer; download the real file)"
        elif data[:1] in (b"<", b"{"):
            hint = " (it looks like a web page or JSON; the download probably failed)"
        raise ModelError(f"{path} is not a GGUF model file{hint}")
    reader = _Reader(data)
    reader.pos = 4
    try:
        version = int(reader.take("I"))
        if version not in (2, 3):
            raise ModelError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
        n_tensors, n_kv = reader.count(), reader.count()
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelError(f"{path} is damaged (implausible GGUF header)")
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = reader.string()
            kind = int(reader.take("I"))
            meta[key] = reader.skip_value(kind)
        end = 0
        for _ in range(n_tensors):
            reader.string()
            dims = [reader.count() for _ in range(int(reader.take("I")))]
            kind, offset = int(reader.take("I")), reader.count()
            block, block_bytes = _TYPE_SIZES.get(kind, (1, 0))
            elements = 1
            for dim in dims:
                elements *= dim
            end = max(end, offset + max(elements // block * block_bytes, 1))
    except _Truncated:
        raise ModelError(
            f"{path} is truncated ({size:,} bytes; its header is incomplete); download it again"
        ) from None
    except (ValueError, UnicodeDecodeError, struct.error):
        raise ModelError(f"{path} is damaged (unreadable GGUF metadata)") from None
    if n_tensors == 0:
        raise ModelError(f"{path} contains no weights (a vocabulary-only GGUF?)")
    alignment = meta.get("general.alignment")
    align = alignment if isinstance(alignment, int) and alignment > 0 else 32
    data_start = (reader.pos + align - 1) // align * align
    expected = data_start + end
    if size < expected:
        raise ModelError(f"{path} is truncated ({size:,} of {expected:,} bytes); download it again")
    arch, name = meta.get("general.architecture"), meta.get("general.name")
    return GGUFInfo(
        version=version,
        tensors=n_tensors,
        architecture=arch if isinstance(arch, str) else "",
        name=name if isinstance(name, str) else "",
        size=size,
    )
