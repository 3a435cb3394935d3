"""Ids as users have them: any non-empty string becomes a storage key that is unique, one path segment
without dots, and never leaves the output prefix; the reader keeps the original id. No Ray, no network."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from doodl_ray.jobs.keys import item_key
from doodl_ray.jobs.reader import read_input
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.jobs.storage import Storage, check_key

TRICKY_IDS = [
    "../../x", "a b", "a_b", "a%20b", "cat/001", "cat_001", "cat%2F001", "https://x.y/z?q=1", "日本", "x" * 300,
    "x" * 299 + "y", ".hidden", "item.1", "item_1", "item.1.initial", " ", "a\nb", "~", "a~b", "-lead",
]
"""Paths, URLs, spaces, unicode, a 300-char id, and pairs that naive escaping would merge (a b / a_b /
a%20b, cat/001 / cat_001 / cat%2F001, two 300-char ids with one prefix)."""


def test_keys_are_unique_safe_segments_and_readable_ids_keep_their_name(tmp_path: Path):
    keys = [item_key(i) for i in TRICKY_IDS]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert check_key(f"images/{key}.png") and "/" not in key and "." not in key and len(key) <= 128
    assert {i: item_key(i) for i in ("a_b", "cat_001", "item_1", "x" * 128)} == {
        "a_b": "a_b", "cat_001": "cat_001", "item_1": "item_1", "x" * 128: "x" * 128}
    assert item_key("cat/001").startswith("cat_001~") and item_key("日本").startswith("id~")
    assert item_key("a b") == item_key("a b")  # stable across processes: a content hash, not a counter
    storage = Storage(str(tmp_path / "out"))
    for key in keys:
        storage.write_bytes(f"images/{key}.png", key.encode())
        storage.write_bytes(f"images/{key}.initial.png", key.encode())
    assert len(storage.list("images")) == 2 * len(keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_reader_keeps_any_non_empty_id_and_rejects_missing_ones(tmp_path: Path):
    ids = [*TRICKY_IDS, None, "", ""]
    pq.write_table(pa.table({"id": ids, "extra": list(range(len(ids)))}), tmp_path / "in.parquet")
    spec = parse_spec({"run_id": "t", "model": "m", "output": {"uri": str(tmp_path / "out"), "shard_size": 8},
                       "input": {"uri": str(tmp_path / "in.parquet"), "columns": {"id": "id"}}})
    plan = read_input(spec, {})
    assert [i.id for i in plan.items] == TRICKY_IDS
    assert [i.key for i in plan.items] == [item_key(i) for i in TRICKY_IDS]
    assert [(r.id, r.key, r.error) for r in plan.rejected] == [(i, None, "missing id") for i in (None, "", "")]
