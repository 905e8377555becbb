"""The resume file: duplicate detection across runs, resolved values, atomic commit."""

from __future__ import annotations

from pathlib import Path

from bulk.checkpoint import StateStore
from bulk.outputs import Outputs


def test_duplicates_are_seen_across_reopen_only_when_committed(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    assert s.first_line("INV-1", 1) == 1
    assert s.first_line("INV-2", 2) == 2
    assert s.first_line("INV-1", 7) == 1
    assert s.first_line("INV-1", 1) == 1  # the same record read again (resume) is not a duplicate
    s.commit({"n": 1})
    assert s.first_line("INV-3", 9) == 9  # not committed
    s.close()
    s = StateStore(tmp_path)
    assert s.load() == {"n": 1}
    assert s.first_line("INV-2", 30) == 2
    assert s.first_line("INV-3", 31) == 31  # lost with the uncommitted transaction
    s.close()


def test_resolved_values_survive_and_cache_is_bounded(tmp_path: Path) -> None:
    s = StateStore(tmp_path, cache_size=10)
    for i in range(100):
        s.put("customer", f"C{i}", str(i * 10))
    assert s.get("customer", "C3") == "30"
    assert s.get("customer", "nope") is None
    s.commit({})
    s.close()
    s = StateStore(tmp_path)
    assert s.get("customer", "C99") == "990"
    s.close()


def test_the_cache_keeps_its_bound_and_an_evicted_value_is_read_again(tmp_path: Path) -> None:
    s = StateStore(tmp_path, cache_size=3)
    for i in range(10):
        s.put("customer", f"C{i}", str(i))
        assert len(s._cache) <= 3
    assert ("customer", "C0") not in s._cache  # the oldest went first
    s.commit({})
    assert [s.get("customer", f"C{i}") for i in range(10)] == [str(i) for i in range(10)]
    assert len(s._cache) == 3
    s.forget("customer", "C9")
    assert s.get("customer", "C9") is None
    s.close()


def test_a_fresh_jobs_lookup_of_a_key_it_never_evicted_reads_no_table(tmp_path: Path) -> None:
    """A fresh job looks in ``resolved`` only for a key it evicted from the cache (its bit set):
    a new customer's lookup is a dict miss, not a SELECT; an evicted value is read again from
    the table; a resumed job (the table has rows) looks there for every key memory lacks."""
    from bulk.checkpoint import _EVICTED_MASK

    def reads(sql: list[str]) -> int:
        return sum("FROM resolved" in q for q in sql)

    s = StateStore(tmp_path, cache_size=3)
    sql: list[str] = []
    s._db.set_trace_callback(sql.append)
    for i in range(10):
        s.put("customer", f"C{i}", str(i))
    s.commit({})

    def evicted(key: str) -> bool:
        bit = hash(("customer", key)) & _EVICTED_MASK
        return bool(s._evicted[bit >> 3] & (1 << (bit & 7)))

    new = next(k for k in (f"N{i}" for i in range(100)) if not evicted(k))  # not sharing an evicted key's bit
    assert s.get("customer", new) is None
    assert s.get("customer", "C9") == "9"  # cached
    assert reads(sql) == 0
    assert [s.get("customer", f"C{i}") for i in range(7)] == [str(i) for i in range(7)]  # the 7 evicted
    assert reads(sql) == 7
    s.forget("customer", "C0")
    s.commit({})
    assert s.get("customer", "C0") is None  # forgotten: deleted from the table, not served from memory
    s.close()
    s = StateStore(tmp_path)  # resumed: its rows are an earlier run's
    sql.clear()
    s._db.set_trace_callback(sql.append)
    assert s.get("customer", new) is None
    assert s.get("customer", "C1") == "1"
    assert reads(sql) == 2
    s.close()


def test_outputs_truncate_to_the_checkpointed_sizes(tmp_path: Path) -> None:
    o = Outputs(tmp_path, None)
    o.created(["INV-1", "1", 1, "", "draft", "EUR", "1.00", "0.19", "1.19"])
    sizes = o.flush()
    o.created(["INV-2", "2", 2, "", "draft", "EUR", "1.00", "0.19", "1.19"])  # after the checkpoint
    o.failed(b'{"bad"', [3, "", "rejected", "parse", "(line)", "", "malformed"])
    o.close()
    o = Outputs(tmp_path, sizes)
    o.close()
    rows = (tmp_path / "id_map.csv").read_text().splitlines()
    assert rows[0].startswith("external_id,invoice_id") and rows[1:] == ["INV-1,1,1,,draft,EUR,1.00,0.19,1.19"]
    assert (tmp_path / "failed.ndjson").read_bytes() == b""
    assert len((tmp_path / "failed_reasons.csv").read_text().splitlines()) == 1  # header only


def test_checkpoint_schema_reads_and_writes_the_file_format_unchanged(tmp_path: Path) -> None:
    from bulk.checkpoint import Checkpoint, load_checkpoint

    doc = {"version": 1, "target": "agiled", "input": "fp", "shard": "1/2", "shard_by": "affinity",
           "watermark": [120, 7], "done_beyond": [9, 11], "progress": {"8": {"customer": "C-1"}}, "reserved": 40,
           "tally": {"read": 6}, "traffic": {"requests": 9, "retries": 1, "throttled": 0}, "elapsed": 1.5,
           "outputs": {"id_map.csv": 300}, "complete": False, "started_at": "2026-01-01T00:00:00+00:00",
           "latency": {"total": {}}, "late_starts": 2, "timeline": {"size": 80}}
    cp = Checkpoint.from_json(doc)
    assert (cp.offset, cp.line, cp.reserved, cp.shard_by) == (120, 7, 40, "affinity")
    assert list(cp.to_json().items()) == list(doc.items())  # same keys, same order, same values
    s = StateStore(tmp_path)
    assert s.checkpoint() is None and load_checkpoint(tmp_path) is None  # no checkpoint yet
    s.commit(cp)
    assert s.checkpoint() == cp  # the store's read and the read-only one (below) agree
    s.close()
    assert load_checkpoint(tmp_path) == cp
    # an earlier version's document, without the keys added since: the defaults
    old = Checkpoint.from_json({k: v for k, v in doc.items() if k not in ("shard_by", "started_at", "latency",
                                                                          "late_starts", "timeline", "outputs")})
    assert (old.shard_by, old.started_at, old.latency, old.late_starts, old.outputs) == (None, None, None, 0, None)


def test_a_fresh_jobs_committed_ids_are_found_by_this_run_without_a_reopen(tmp_path: Path) -> None:
    """A fresh job looks in ``seen`` only for ids whose filter bit is set: a duplicate of an id
    committed earlier in the same run is still found, and an id sharing only the bit is not one."""
    from bulk.checkpoint import _FILTER_MASK, id_hash

    s = StateStore(tmp_path)
    by_bit: dict[int, str] = {}
    pair: tuple[str, str] | None = None
    for i in range(200_000):  # two ids whose hashes share the filter bit (a birthday pair: ~4,000 ids)
        ext = f"INV-{i}"
        other = by_bit.setdefault(id_hash(ext) & _FILTER_MASK, ext)
        if other != ext:
            pair = (other, ext)
            break
    assert pair is not None
    assert s.first_line("INV-A", 1) == 1
    assert s.first_line(pair[0], 2) == 2
    s.commit({"n": 1})  # both now only in the table, no longer pending
    assert s.first_line("INV-A", 5) == 1
    assert s.first_line(pair[0], 6) == 2
    assert s.first_line(pair[1], 7) == 7  # its bit is set, but the table does not hold it
    assert s.first_line("INV-B", 8) == 8
    s.commit({"n": 2})
    assert s.first_line(pair[1], 9) == 7
    assert s.first_line("INV-B", 10) == 8
    s.close()


def test_id_hash_is_the_signed_big_endian_8_byte_blake2b_earlier_runs_stored() -> None:
    """``seen`` rows of a job an earlier version started hold this hash: it must not change."""
    import hashlib

    from bulk.checkpoint import id_hash

    for ext in ("INV-1", "", "é€ \x00 long " * 40, "INV-1"):
        want = int.from_bytes(hashlib.blake2b(ext.encode(), digest_size=8).digest(), "big", signed=True)
        assert id_hash(ext) == want
    assert id_hash("INV-1") == int.from_bytes(bytes.fromhex(hashlib.blake2b(b"INV-1", digest_size=8).hexdigest()),
                                              "big", signed=True)
    assert {id_hash(f"INV-{i}") < 0 for i in range(64)} == {True, False}  # signed: SQLite's INTEGER range


def test_first_line_stores_and_finds_ids_by_id_hash(tmp_path: Path) -> None:
    """``first_line`` hashes an id itself (id_hash written out): the rows it writes are keyed by
    ``id_hash``, as an earlier version's, and a row keyed so is found as a duplicate."""
    import sqlite3

    from bulk.checkpoint import id_hash

    s = StateStore(tmp_path)
    ids = ("INV-1", "é€ \x00 long " * 40)
    for n, ext in enumerate(ids, 1):
        assert s.first_line(ext, n) == n
    s.commit({"n": 1})
    s.close()
    db = sqlite3.connect(tmp_path / "state.db")
    rows = dict(db.execute("SELECT h, line FROM seen").fetchall())
    db.execute("INSERT INTO seen (h, line) VALUES (?, ?)", (id_hash("INV-OLD"), 7))
    db.commit()
    db.close()
    assert rows == {id_hash(ext): n for n, ext in enumerate(ids, 1)}
    s = StateStore(tmp_path)
    assert s.first_line("INV-OLD", 9) == 7
    assert s.first_line(ids[1], 9) == 2
    s.close()


def test_a_failed_commit_leaves_the_store_usable_and_the_last_checkpoint(tmp_path: Path) -> None:
    """A COMMIT that fails (here refused by SQLite's authorizer hook) raises OutputError; the
    store rolls back and begins again, so the next commit works and holds the pending rows."""
    import sqlite3

    import pytest

    from bulk.errors import OutputError

    s = StateStore(tmp_path)
    s.first_line("INV-1", 1)
    s.commit({"n": 1})
    s.first_line("INV-2", 2)
    denied = []

    def deny_one_commit(action: int, arg1: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and not denied:
            denied.append(arg1)
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    s._wdb.set_authorizer(deny_one_commit)  # SQLite refuses this COMMIT, as it would a full disk's
    with pytest.raises(OutputError, match="cannot write the resume file"):
        s.commit({"n": 2})
    assert denied == ["COMMIT"]
    assert not s._wdb.in_transaction  # rolled back: the next write starts clean
    assert s.load() == {"n": 1}
    assert s.first_line("INV-2", 5) == 2  # pending again, still a duplicate's first line
    s.commit({"n": 3})
    s.close()
    s = StateStore(tmp_path)
    assert s.load() == {"n": 3}
    assert s.first_line("INV-2", 9) == 2  # the failed commit's pending row went with the next one
    s.close()


def test_a_full_resolved_cache_and_the_page_cache_stay_small(tmp_path: Path) -> None:
    """The memory goal (issue 11: 64 MB at 1,000,000 records, 100,000 customers): the resolved
    values kept in memory are bounded to well under a megabyte however many the job resolves,
    every one of them still found (in ``state.db``), and SQLite's page cache is 512 KiB. The
    values put since the last commit are held until it (a checkpoint a second: here 1,000)."""
    import tracemalloc

    s = StateStore(tmp_path)
    assert s._db.execute("PRAGMA cache_size").fetchone()[0] == -512  # KiB (the default: -2000)
    assert s._wdb.execute("PRAGMA cache_size").fetchone()[0] == -512
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30_000):
            s.put("agiled.contact", f"CUST-{i:06d}", str(1_000_000 + i))
            if i % 1_000 == 999:
                s.commit({"n": i})
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held:,} bytes of resolved values held in memory"  # 20,000 kept: ~5.6 MB
    assert s.get("agiled.contact", "CUST-000000") == "1000000"  # evicted long ago: read from the table
    assert s.get("agiled.contact", "CUST-029999") == "1029999"
    s.close()


def test_many_ids_of_one_commit_are_all_found_after_reopen(tmp_path: Path) -> None:
    """The commit inserts ``seen`` in key order (not first-seen order): every id still lands."""
    s = StateStore(tmp_path)
    ids = [f"INV-{(i * 7919) % 20_000:05d}" for i in range(20_000)]
    for line, external_id in enumerate(ids, start=1):
        assert s.first_line(external_id, line) == line
    s.commit({"n": 1})
    s.close()
    s = StateStore(tmp_path)
    assert all(s.first_line(external_id, 50_000 + line) == line for line, external_id in enumerate(ids, start=1))
    assert s._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 20_000
    s.close()


def test_while_a_commit_is_written_the_loop_reads_everything_put_and_later_puts_go_to_the_next(
        tmp_path: Path) -> None:
    """take() at the checkpoint's instant, write() in a thread while the store keeps being used
    (reads of what the commit holds, new puts, a forget), settle(): the commit holds exactly what
    was put before take(); everything stays readable throughout; the next commit holds the rest."""
    import threading

    s = StateStore(tmp_path, cache_size=1)  # a value is found without the cache
    s.first_line("INV-1", 1)
    s.put("customer", "C1", "10")
    s.put("customer", "C2", "20")
    commit = s.take({"n": 1})
    s.put("customer", "C3", "30")  # after the instant: the next commit's
    s.forget("customer", "C2")
    assert s.first_line("INV-2", 2) == 2
    writer = threading.Thread(target=s.write, args=(commit,))
    writer.start()
    for _ in range(200):  # while (or after) the thread commits: the values are where they were put
        assert s.first_line("INV-1", 9) == 1
        assert s.get("customer", "C1") == "10"
        assert s.get("customer", "C2") is None
        assert s.items("customer") == {"C1": "10", "C3": "30"}
    writer.join()
    s.settle(commit, ok=True)
    assert s.first_line("INV-1", 9) == 1 and s.get("customer", "C1") == "10"  # now read from the table
    assert s.items("customer") == {"C1": "10", "C3": "30"}
    s.close()
    s = StateStore(tmp_path)  # what that commit made durable: the instant's rows, not the later ones
    assert s.load() == {"n": 1}
    assert s.items("customer") == {"C1": "10", "C2": "20"}
    assert s.first_line("INV-1", 9) == 1 and s.first_line("INV-2", 9) == 9
    s.close()


def test_a_failed_write_puts_its_rows_back_as_pending(tmp_path: Path) -> None:
    """A commit refused (by SQLite's authorizer, as a full disk would) raises OutputError from
    write(); after settle(ok=False) its rows are pending again, under the later puts, and the next
    commit stores them."""
    import sqlite3

    import pytest

    from bulk.errors import OutputError

    s = StateStore(tmp_path)
    s.put("customer", "C1", "old")
    s.first_line("INV-1", 1)
    commit = s.take({"n": 1})
    s.put("customer", "C1", "new")  # a later put wins over the failed commit's
    s._wdb.set_authorizer(lambda action, arg1, *_: sqlite3.SQLITE_DENY
                          if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" else sqlite3.SQLITE_OK)
    with pytest.raises(OutputError, match="cannot write the resume file"):
        s.write(commit)
    s.settle(commit, ok=False)
    s._wdb.set_authorizer(None)
    assert s.load() is None
    assert s.first_line("INV-1", 5) == 1 and s.items("customer") == {"C1": "new"}
    s.commit({"n": 2})
    s.close()
    s = StateStore(tmp_path)
    assert s.load() == {"n": 2} and s.items("customer") == {"C1": "new"} and s.first_line("INV-1", 5) == 1
    s.close()
