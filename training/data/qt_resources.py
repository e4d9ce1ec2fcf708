"""Read files out of a compiled Qt resource file (`.rcc`, format versions 1–3).

Debian's `gcompris-qt-data` keeps its real photographs inside such files.
Layout (Qt's rcc.cpp): a 20-byte header `qres`, version, then offsets of the
node tree, the data and the names. A tree node is name offset (u32), flags
(u16) and either child count + first child (directories, flag 2) or
country/language + data offset (files); version ≥ 2 adds a u64 timestamp.
A name is u16 length, u32 hash, UTF-16BE text. File data is u32 size + bytes,
qCompress-ed (u32 length + zlib) when flag 1 is set, zstd when flag 4 is.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 1, 2, 4


class ResourceError(ValueError):
    pass


def rcc_files(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, content) for every file in the resource; zstd-compressed files are skipped."""
    if buf[:4] != b"qres" or len(buf) < 20:
        raise ResourceError("not a Qt resource file (no 'qres' header)")
    version, tree, data, names = struct.unpack(">IIII", buf[4:20])
    if version not in (1, 2, 3):
        raise ResourceError(f"unsupported Qt resource version {version}")
    node_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack_from(">H", buf, names + offset)
        start = names + offset + 6
        return buf[start : start + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        at = tree + index * node_size
        name_offset, flags = struct.unpack_from(">IH", buf, at)
        path = f"{prefix}/{name_at(name_offset)}" if index else ""
        if flags & DIRECTORY:
            count, first = struct.unpack_from(">II", buf, at + 6)
            for child in range(first, first + count):
                yield from walk(child, path)
            return
        (offset,) = struct.unpack_from(">I", buf, at + 10)
        (size,) = struct.unpack_from(">I", buf, data + offset)
        content = buf[data + offset + 4 : data + offset + 4 + size]
        if flags & COMPRESSED_ZSTD:
            return
        if flags & COMPRESSED:
            content = zlib.decompress(content[4:])
        yield path.lstrip("/"), content

    yield from walk(0, "")
