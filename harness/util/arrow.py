"""Arrow columns from Python lists without pandas.

``pa.array`` asks pyarrow's pandas shim whether its input is a pandas object, which imports pandas
(about 0.3 s of CPU) on the first call. The run path writes its tables with these builders instead,
from the stdlib ``array`` module's buffers, so a run never loads pandas.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any

import pyarrow as pa


def float64_column(values: Sequence[float]) -> pa.Array:
    """A float64 column (NaN stays NaN)."""
    return pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(array.array("d", values))])


def int64_column(values: Sequence[int]) -> pa.Array:
    """An int64 column; every value must fit in 64 bits."""
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(array.array("q", values))])


def string_column(values: Sequence[str]) -> pa.Array:
    """A UTF-8 string column (64-bit offsets, so any total size fits)."""
    encoded = [value.encode("utf-8") for value in values]
    offsets = array.array("q", [0])
    for item in encoded:
        offsets.append(offsets[-1] + len(item))
    return pa.Array.from_buffers(
        pa.large_string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    ).cast(pa.string())


def constant_string_column(value: str, length: int) -> pa.Array:
    """``length`` copies of ``value``."""
    return string_column([value] * length)


def table(columns: dict[str, pa.Array], schema: pa.Schema | None = None) -> Any:
    """A table of the columns, in their order (cast to ``schema`` when given)."""
    result = pa.Table.from_arrays(list(columns.values()), names=list(columns))
    return result.cast(schema) if schema is not None else result


def numpy_column(values: Any) -> pa.Array:
    """A column of a 1-d numpy array of int64 or float64 (its buffer, not ``pa.array``)."""
    import numpy as np

    values = np.ascontiguousarray(values)
    kind = {np.dtype(np.int64): pa.int64(), np.dtype(np.float64): pa.float64()}[values.dtype]
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def numpy_of(column: pa.Array, dtype: Any) -> Any:
    """The values of a fixed-width column without nulls as a numpy array of ``dtype`` (cast
    first where its type differs; read from its buffer, not ``to_numpy``, which loads pandas)."""
    import numpy as np

    dtype = np.dtype(dtype)
    wanted = pa.from_numpy_dtype(dtype)
    if column.type != wanted:
        column = column.cast(wanted)
    if column.null_count:
        raise ValueError("a column with nulls has no plain numpy form")
    return np.frombuffer(column.buffers()[1], dtype=dtype, count=len(column), offset=column.offset * dtype.itemsize)
