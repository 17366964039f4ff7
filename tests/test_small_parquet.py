"""harness.util.small_parquet: files it writes read back through real pyarrow and real DuckDB."""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.util.small_parquet import KINDS, encode_table, write_table_file

ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64()}
REPO = Path(__file__).resolve().parents[1]


def arrow_table(columns: list[tuple[str, str, list[Any]]]) -> pa.Table:
    """The table pyarrow itself builds from the same lists, every field nullable."""
    schema = pa.schema([pa.field(name, ARROW_TYPES[kind], nullable=True) for name, kind, _ in columns])
    return pa.table({name: values for name, _, values in columns}, schema=schema)


def canon(value: Any) -> Any:
    """Floats as their bit pattern, so NaN equals NaN and -0.0 differs from 0.0."""
    return struct.pack("<d", value) if isinstance(value, float) else value


def canon_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(canon(v) for v in row) for row in rows]


def assert_same(read: pa.Table, expected: pa.Table) -> None:
    assert read.schema.equals(expected.schema)
    assert read.num_rows == expected.num_rows
    for name in expected.column_names:
        assert [canon(v) for v in read.column(name).to_pylist()] == [
            canon(v) for v in expected.column(name).to_pylist()
        ], name


def write(tmp_path: Path, columns: list[tuple[str, str, list[Any]]], metadata: dict[str, str] | None = None) -> Path:
    path = tmp_path / "t.parquet"
    path.write_bytes(encode_table(columns, metadata))
    return path


def random_columns(rows: int, seed: int = 0) -> list[tuple[str, str, list[Any]]]:
    rng = random.Random(seed)

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.1 else value

    words = ["", "loss", "ünïcödé", "日本語", "🙂", "e\u0301", "x" * 50]
    return [
        ("step", "int64", list(range(rows))),
        ("name", "string", [maybe(rng.choice(words) + str(rng.randrange(100))) for _ in range(rows)]),
        ("value", "double", [maybe(rng.uniform(-1e6, 1e6)) for _ in range(rows)]),
        ("count", "int64", [maybe(rng.randrange(-(1 << 63), 1 << 63)) for _ in range(rows)]),
        ("ratio", "double", [maybe(rng.choice([0.5, math.nan, math.inf, -0.0, 1e-300])) for _ in range(rows)]),
    ]


SPECIAL = [
    ("s", "string", [None, "", "plain", "🙂🎉", "中文字符", "e\u0301\u0308", "y" * 100_000, "\x00nul", "z"]),
    ("i", "int64", [None, 0, -1, -(1 << 63), (1 << 63) - 1, 42, 7, None, 3]),
    ("d", "double", [None, math.nan, math.inf, -math.inf, -0.0, 0.0, 1.5, 2, -1e308]),
]


@pytest.mark.parametrize("rows", [0, 1, 10_000])
def test_round_trip_matches_pyarrow(tmp_path: Path, rows: int) -> None:
    columns = random_columns(rows)
    assert_same(pq.read_table(write(tmp_path, columns)), arrow_table(columns))


def test_special_values_round_trip(tmp_path: Path) -> None:
    expected = arrow_table(SPECIAL)
    read = pq.read_table(write(tmp_path, SPECIAL))
    assert_same(read, expected)
    doubles = read.column("d").to_pylist()
    assert math.copysign(1.0, doubles[4]) == -1.0 and math.copysign(1.0, doubles[5]) == 1.0
    assert math.isnan(doubles[1])
    assert len(read.column("s")[6].as_py()) == 100_000


def test_all_null_and_no_null_columns(tmp_path: Path) -> None:
    full: dict[str, list[Any]] = {"string": ["a"] * 20, "int64": list(range(20)), "double": [0.25] * 20}
    columns = [(f"{kind}_full", kind, full[kind]) for kind in KINDS]
    columns += [(f"{kind}_null", kind, [None] * 20) for kind in KINDS]
    assert_same(pq.read_table(write(tmp_path, columns)), arrow_table(columns))


def test_schema_and_metadata(tmp_path: Path) -> None:
    metadata = {"harness.kind": "metrics", "note": "ünï 🙂", "empty": ""}
    path = write(tmp_path, SPECIAL, metadata)
    expected = arrow_table(SPECIAL).schema
    assert pq.read_schema(path).equals(expected)
    encoded = {k.encode(): v.encode() for k, v in metadata.items()}
    assert pq.read_metadata(path).metadata == encoded
    assert pq.read_schema(path).metadata == encoded
    assert pq.read_metadata(path).created_by == "harness small_parquet"
    assert pq.read_metadata(write(tmp_path, SPECIAL)).metadata is None


def test_empty_table_keeps_schema(tmp_path: Path) -> None:
    columns: list[tuple[str, str, list[Any]]] = [("s", "string", []), ("i", "int64", []), ("d", "double", [])]
    path = write(tmp_path, columns, {"k": "v"})
    read = pq.read_table(path)
    assert read.num_rows == 0 and read.schema.equals(arrow_table(columns).schema)
    assert pq.read_metadata(path).metadata == {b"k": b"v"}
    assert duckdb.connect().execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchall() == []


def test_batches_and_column_selection(tmp_path: Path) -> None:
    columns = random_columns(100, seed=3)
    path = write(tmp_path, columns)
    expected = arrow_table(columns)
    batches = list(pq.ParquetFile(path).iter_batches(batch_size=7))
    assert [b.num_rows for b in batches] == [7] * 14 + [2]
    assert_same(pa.Table.from_batches(batches), expected)
    assert_same(pq.read_table(path, columns=["value", "name"]), expected.select(["value", "name"]))


def python_stats(kind: str, values: list[Any]) -> tuple[Any, Any, int]:
    present = [v for v in values if v is not None]
    nulls = len(values) - len(present)
    if kind == "double":
        present = [float(v) for v in present if not math.isnan(v)]
    if not present:
        return None, None, nulls
    if kind == "string":
        lo = min(present, key=lambda s: s.encode("utf-8"))
        hi = max(present, key=lambda s: s.encode("utf-8"))
        return lo, hi, nulls
    lo, hi = min(present), max(present)
    if kind == "double":
        lo, hi = (-0.0 if lo == 0 else lo), (0.0 if hi == 0 else hi)
    return lo, hi, nulls


@pytest.mark.parametrize(
    "columns",
    [
        SPECIAL,
        random_columns(500, seed=7),
        [("s", "string", [None, None]), ("i", "int64", [None, None]), ("d", "double", [math.nan, None])],
        [("d", "double", [0.0, 0.0]), ("e", "double", [-0.0, 3.0]), ("f", "double", [-2.0, -0.0])],
        [("s", "string", ["\uffff", "𐀀", "a"])],  # UTF-8 byte order, not UTF-16 code unit order
    ],
)
def test_statistics_match_python(tmp_path: Path, columns: list[tuple[str, str, list[Any]]]) -> None:
    group = pq.read_metadata(write(tmp_path, columns)).row_group(0)
    for index, (name, kind, values) in enumerate(columns):
        stats = group.column(index).statistics
        lo, hi, nulls = python_stats(kind, values)
        assert stats.null_count == nulls, name
        assert stats.has_min_max == (lo is not None), name
        if lo is not None:
            assert canon(stats.min) == canon(lo) and canon(stats.max) == canon(hi), name


def test_statistics_prune_in_pyarrow_filters(tmp_path: Path) -> None:
    path = write(tmp_path, [("i", "int64", [1, 2, 3]), ("s", "string", ["a", "b", "c"])])
    assert pq.read_table(path, filters=[("i", ">", 2)]).column("s").to_pylist() == ["c"]
    assert pq.read_table(path, filters=[("s", "<", "b")]).column("i").to_pylist() == [1]
    con = duckdb.connect()
    assert con.execute("SELECT s FROM read_parquet(?) WHERE i > 2", [str(path)]).fetchall() == [("c",)]
    assert con.execute("SELECT i FROM read_parquet(?) WHERE s < 'b'", [str(path)]).fetchall() == [(1,)]


@pytest.mark.parametrize("columns", [SPECIAL, random_columns(2_000, seed=11)])
def test_duckdb_reads_same_rows(tmp_path: Path, columns: list[tuple[str, str, list[Any]]]) -> None:
    path = write(tmp_path, columns)
    rows = duckdb.connect().execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    expected = list(
        zip(*[[float(v) if kind == "double" and v is not None else v for v in values] for _, kind, values in columns])
    )
    assert canon_rows(rows) == canon_rows(expected)


def test_deterministic() -> None:
    assert encode_table(random_columns(1_000), {"a": "b"}) == encode_table(random_columns(1_000), {"a": "b"})


def test_write_table_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.parquet"
    write_table_file(path, SPECIAL, {"k": "v"})
    assert_same(pq.read_table(path), arrow_table(SPECIAL))
    assert [p.name for p in path.parent.iterdir()] == ["m.parquet"]


def test_imports_neither_pyarrow_nor_numpy() -> None:
    code = "import harness.util.small_parquet, sys; assert 'pyarrow' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO)})


class Odd:
    pass


@pytest.mark.parametrize(
    ("columns", "metadata", "message"),
    [
        ([("a", "float32", [1.0])], None, "unknown kind"),
        ([("a", "int64", [1, 2]), ("b", "int64", [1])], None, "ragged"),
        ([("a", "int64", [1]), ("a", "double", [1.0])], None, "duplicate column name"),
        ([("a", "int64", [1, True])], None, "row 1"),
        ([("a", "double", [False])], None, "row 0"),
        ([("a", "int64", [1 << 63])], None, "int64's range"),
        ([("a", "int64", [-(1 << 63) - 1])], None, "int64's range"),
        ([("a", "int64", [1.0])], None, "not an int"),
        ([("a", "int64", ["1"])], None, "not an int"),
        ([("a", "string", ["x", b"y"])], None, "row 1"),
        ([("a", "string", [1])], None, "not a str"),
        ([("a", "string", ["ok", "\ud800"])], None, "UTF-8"),
        ([("a", "double", [Odd()])], None, "float or int"),
        ([("a", "double", [1 << 1100])], None, "too large"),
        ([("\udc80", "int64", [1])], None, "UTF-8"),
        ([("a", "string", "abc")], None, "sequence"),
        ([], None, "at least one column"),
        ([("a", "int64", [1])], {"k": 1}, "metadata"),
        ([("a", "int64", [1])], {"k": "\ud800"}, "metadata"),
    ],
)
def test_bad_input_raises_value_error(columns: Any, metadata: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_table(columns, metadata)
