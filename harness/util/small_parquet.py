"""A minimal Parquet writer for a run's own small tables, in pure Python.

Importing pyarrow (libarrow and numpy) costs a no-op ``harness run`` about 0.16 s of wall time and
0.2 s of CPU, on a 2-core machine that is starting the container at the same moment; that alone
keeps a run far from its aim of 1.5x a bare ``docker run``. The tables a run writes itself (the
metrics of a short run, system samples, a journal entry) are at most a few thousand rows of
strings, 64-bit integers and doubles, so they are written here with the standard library alone.
No well-kept pure-Python writer exists (fastparquet needs numpy, pandas and cramjam), so this one
follows the Apache Parquet format specification directly: the Thrift compact protocol for the
footer and page headers, one row group, one PLAIN, UNCOMPRESSED v1 data page per column. Reading
stays pyarrow everywhere.

This module must not import pyarrow or numpy.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

KINDS = ("string", "int64", "double")
# the rows up to which the harness writes a table of its own here rather than with pyarrow: a
# short run's metrics and system samples, a journal entry (uncompressed, at most about 300 KB)
SMALL_TABLE_ROWS = 4096
Column = tuple[str, str, Sequence[Any]]  # name, kind (one of KINDS), values (None: null)

# Thrift compact protocol field types
_BOOL_TRUE, _I32, _I64, _BINARY, _LIST, _STRUCT = 1, 5, 6, 8, 9, 12
# Parquet enums (parquet.thrift)
_PHYSICAL = {"string": 6, "int64": 2, "double": 5}  # BYTE_ARRAY, INT64, DOUBLE
_OPTIONAL = 1  # FieldRepetitionType
_UTF8 = 0  # ConvertedType
_PLAIN, _RLE = 0, 3  # Encoding
_UNCOMPRESSED = 0  # CompressionCodec
_DATA_PAGE = 0  # PageType
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_U32 = struct.Struct("<I")
_Field = tuple[int, int, bytes]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _struct(*fields: _Field | None) -> bytes:
    """A Thrift compact struct from (field id, type, encoded value) triples in increasing id order."""
    out = []
    last = 0
    for field in fields:
        if field is None:
            continue
        fid, ftype, payload = field
        delta = fid - last
        out.append(bytes([delta << 4 | ftype]) if 0 < delta <= 15 else bytes([ftype]) + _zigzag(fid))
        out.append(payload)
        last = fid
    out.append(b"\x00")
    return b"".join(out)


def _int(fid: int, n: int, ftype: int = _I64) -> _Field:
    return (fid, ftype, _zigzag(n))


def _bin(fid: int, data: bytes) -> _Field:
    return (fid, _BINARY, _varint(len(data)) + data)


def _list(fid: int, etype: int, items: Sequence[bytes]) -> _Field:
    size = len(items)
    head = bytes([size << 4 | etype]) if size < 15 else bytes([0xF0 | etype]) + _varint(size)
    return (fid, _LIST, head + b"".join(items))


def _sub(fid: int, data: bytes) -> _Field:
    return (fid, _STRUCT, data)


_EMPTY_UNION_1 = _struct(_sub(1, _struct()))  # LogicalType STRING, ColumnOrder TYPE_ORDER


def _fail(name: str, row: int, value: Any, wanted: str) -> ValueError:
    return ValueError(f"column {name!r} row {row}: {value!r} ({type(value).__name__}) is not {wanted}")


def _first_bad(name: str, values: Sequence[Any], ok: Any, wanted: str) -> ValueError:
    for row, value in enumerate(values):
        if value is not None and not ok(value):
            return _fail(name, row, value, wanted)
    return ValueError(f"column {name!r}: a value is not {wanted}")  # pragma: no cover


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def _is_number(value: Any) -> bool:
    return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool))


def _encode_values(
    name: str, kind: str, values: Sequence[Any], present: list[Any]
) -> tuple[bytes, bytes | None, bytes | None]:
    """PLAIN bytes of the non-null values and their statistics' (min_value, max_value), None when none."""
    types = set(map(type, present))
    if kind == "string":
        if any(not issubclass(t, str) for t in types):
            raise _first_bad(name, values, lambda v: isinstance(v, str), "a str")
        try:
            encoded = [v.encode("utf-8") for v in present]
        except UnicodeEncodeError as exc:
            raise ValueError(f"column {name!r}: a string is not valid UTF-8 ({exc})") from None
        pack = _U32.pack
        data = b"".join([pack(len(b)) + b for b in encoded])
        if not encoded:
            return data, None, None
        return data, min(encoded), max(encoded)  # bytes compare unsigned, as Parquet orders BYTE_ARRAY
    if kind == "int64":
        if any(not issubclass(t, int) or issubclass(t, bool) for t in types):
            raise _first_bad(name, values, _is_int, "an int (bool is not)")
        try:
            column = array("q", present)
        except OverflowError:
            raise _first_bad(name, values, _is_int, "an int within int64's range") from None
        lo, hi = (struct.pack("<q", min(column)), struct.pack("<q", max(column))) if column else (None, None)
    else:
        if any(not issubclass(t, (int, float)) or issubclass(t, bool) for t in types):
            raise _first_bad(name, values, _is_number, "a float or int")
        try:
            column = array("d", present)
        except OverflowError:
            raise ValueError(f"column {name!r}: an int is too large for a double") from None
        finite = [v for v in column if v == v]  # NaN takes no part in the order
        lo = hi = None
        if finite:
            low, high = min(finite), max(finite)
            lo = struct.pack("<d", -0.0 if low == 0 else low)  # the spec's rule for signed zeros
            hi = struct.pack("<d", 0.0 if high == 0 else high)
    if sys.byteorder == "big":
        column.byteswap()
    return column.tobytes(), lo, hi


def _definition_levels(values: Sequence[Any], nulls: int) -> bytes:
    """The RLE/bit-packed hybrid run(s) of bit width 1, after their 4-byte length."""
    n = len(values)
    if nulls == 0 or nulls == n:
        runs = _varint(n << 1) + (b"\x00" if nulls else b"\x01")
    else:
        groups = (n + 7) // 8  # one bit-packed run; its padding bits past n are ignored
        bits = int("".join(["0" if v is None else "1" for v in reversed(values)]), 2)
        runs = _varint(groups << 1 | 1) + bits.to_bytes(groups, "little")
    return _U32.pack(len(runs)) + runs


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(columns: Sequence[Column], metadata: Mapping[str, str] | None) -> None:
    if not columns:
        raise ValueError("a table needs at least one column")
    seen: set[str] = set()
    for entry in columns:
        name, kind, values = entry
        if not isinstance(name, str) or not _utf8(name):
            raise ValueError(f"column name {name!r} is not a str of valid UTF-8")
        if name in seen:
            raise ValueError(f"duplicate column name {name!r}")
        seen.add(name)
        if kind not in KINDS:
            raise ValueError(f"column {name!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"column {name!r}: values must be a sequence (list, tuple), not {type(values).__name__}")
        if len(values) != len(columns[0][2]):
            raise ValueError(
                f"ragged columns: {name!r} has {len(values)} rows, {columns[0][0]!r} has {len(columns[0][2])}"
            )
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or not _utf8(key) or not _utf8(value):
            raise ValueError(f"metadata {key!r}: {value!r}: keys and values must be str of valid UTF-8")


def encode_table(columns: Sequence[Column], metadata: Mapping[str, str] | None = None) -> bytes:
    """A whole Parquet file holding ``columns``, each ``(name, kind, values)`` with kind in `KINDS`.

    Every column is OPTIONAL (nullable, as pyarrow's default schema): a value may be None. A string
    column is BYTE_ARRAY annotated STRING/UTF8, its values ``str``; int64 is INT64, its values ``int``
    (not bool) within 64 bits; double is DOUBLE, its values ``float`` or ``int`` (not bool). All
    columns have the same length, and names are unique. The file has one row group (none when there
    are no rows, which pyarrow reads back as an empty table of the same schema), one PLAIN,
    UNCOMPRESSED v1 data page per column, and statistics per column chunk: null_count, and
    min_value/max_value where the column has a (non-NaN) value. ``metadata`` becomes the footer's
    key-value metadata. The same input gives the same bytes. Raises ValueError on bad input.
    """
    _check(columns, metadata)
    num_rows = len(columns[0][2])
    body = [b"PAR1"]
    offset = 4
    chunks: list[bytes] = []
    schema = [_struct(_bin(4, b"schema"), _int(5, len(columns), _I32))]
    for name, kind, values in columns:
        bname = name.encode("utf-8")
        string = kind == "string"
        schema.append(
            _struct(
                _int(1, _PHYSICAL[kind], _I32),
                _int(3, _OPTIONAL, _I32),
                _bin(4, bname),
                _int(6, _UTF8, _I32) if string else None,
                _sub(10, _EMPTY_UNION_1) if string else None,
            )
        )
        if not num_rows:
            continue
        present = [v for v in values if v is not None]
        nulls = num_rows - len(present)
        data, lo, hi = _encode_values(name, kind, values, present)
        page = _definition_levels(values, nulls) + data
        header = _struct(
            _int(1, _DATA_PAGE, _I32),
            _int(2, len(page), _I32),
            _int(3, len(page), _I32),
            _sub(5, _struct(*(_int(i, n, _I32) for i, n in ((1, num_rows), (2, _PLAIN), (3, _RLE), (4, _RLE))))),
        )
        stats = _struct(
            _int(3, nulls), _bin(5, hi) if hi is not None else None, _bin(6, lo) if lo is not None else None
        )
        size = len(header) + len(page)
        meta = _struct(
            _int(1, _PHYSICAL[kind], _I32),
            _list(2, _I32, [_zigzag(_PLAIN), _zigzag(_RLE)]),
            _list(3, _BINARY, [_varint(len(bname)) + bname]),
            _int(4, _UNCOMPRESSED, _I32),
            _int(5, num_rows),
            _int(6, size),
            _int(7, size),
            _int(9, offset),
            _sub(12, stats),
        )
        chunks.append(_struct(_int(2, 0), _sub(3, meta)))
        body += [header, page]
        offset += size
    row_groups = []
    if num_rows:
        total = offset - 4
        row_groups.append(
            _struct(_list(1, _STRUCT, chunks), _int(2, total), _int(3, num_rows), _int(5, 4), _int(6, total))
        )
    pairs = [_struct(_bin(1, k.encode("utf-8")), _bin(2, v.encode("utf-8"))) for k, v in (metadata or {}).items()]
    footer = _struct(
        _int(1, 2, _I32),
        _list(2, _STRUCT, schema),
        _int(3, num_rows),
        _list(4, _STRUCT, row_groups),
        _list(5, _STRUCT, pairs) if metadata else None,
        _bin(6, b"harness small_parquet"),
        _list(7, _STRUCT, [_EMPTY_UNION_1] * len(columns)),
    )
    body += [footer, _U32.pack(len(footer)), b"PAR1"]
    return b"".join(body)


def write_table_file(path: Path, columns: Sequence[Column], metadata: Mapping[str, str] | None = None) -> None:
    """`encode_table` written to ``path`` atomically (readers see the old file or the new one)."""
    from harness.util.fsutil import write_bytes_atomic

    write_bytes_atomic(path, encode_table(columns, metadata))
