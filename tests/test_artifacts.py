"""Artifacts: atomic writes, manifests written last, skip-on-rerun decisions."""

from __future__ import annotations

import pyarrow as pa
import pytest

from core.artifacts import (
    Manifest,
    ParquetSink,
    atomic_path,
    describe_file,
    is_complete,
    read_manifest,
    require_manifest,
    write_manifest,
    write_parquet_atomic,
)


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_parquet_sink_renames_on_close_and_cleans_up_on_abort(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    sink = ParquetSink(tmp_path / "a.parquet", schema, row_group_size=3)
    for i in range(10):
        sink.write({"x": i})
    assert not (tmp_path / "a.parquet").exists()
    info = sink.close()
    assert info.rows == 10 and info.columns == ["x"] and info.path == "a.parquet"
    aborted = ParquetSink(tmp_path / "b.parquet", schema)
    aborted.write({"x": 1})
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def _manifest(tmp_path, **kw) -> Manifest:
    info = write_parquet_atomic(pa.table({"x": [1, 2, 3]}), tmp_path / "t.parquet")
    return Manifest(stage="s", config_hash="abc", config={}, inputs={"up": "h1"}, outputs={"t": info}, **kw)


def test_manifest_roundtrip_and_provenance(tmp_path):
    write_manifest(tmp_path, _manifest(tmp_path, metrics={"loss": 1.5}))
    m = read_manifest(tmp_path)
    assert m.outputs["t"].rows == 3 and m.metrics == {"loss": 1.5}
    assert "pyarrow" in m.versions and m.finished_at > 0
    assert m.path_of("t", tmp_path) == tmp_path / "t.parquet"
    with pytest.raises(KeyError, match="no output named 'u'"):
        m.path_of("u", tmp_path)


def test_is_complete_checks_config_inputs_and_files(tmp_path):
    assert not is_complete(tmp_path, "abc", {"up": "h1"})  # no manifest yet
    write_manifest(tmp_path, _manifest(tmp_path))
    assert is_complete(tmp_path, "abc", {"up": "h1"}, verify_hashes=True)
    assert not is_complete(tmp_path, "other", {"up": "h1"})
    assert not is_complete(tmp_path, "abc", {"up": "h2"})
    (tmp_path / "t.parquet").write_bytes(b"truncated")
    assert not is_complete(tmp_path, "abc", {"up": "h1"})


def test_content_hash_follows_outputs(tmp_path):
    m = _manifest(tmp_path)
    h = m.content_hash()
    m.outputs["t"] = describe_file(
        write_parquet_atomic(pa.table({"x": [9]}), tmp_path / "t.parquet") and tmp_path / "t.parquet",
        tmp_path,
    )
    assert m.content_hash() != h


def test_require_manifest_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished there"):
        require_manifest(tmp_path, "SFT data")
