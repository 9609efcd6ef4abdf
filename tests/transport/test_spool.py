"""The spool: ordered, durable across SIGKILL, bounded in bytes with drops reported."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from edge_agent.transport.spool import WAL_BYTES, Spool

WRITER = r"""
import json, sys
from edge_agent.transport.spool import Spool
spool = Spool(sys.argv[1], max_bytes=1 << 30, fsync="window")
first = spool.next_seq()
while True:
    seq = spool.next_seq()
    spool.append("summary", float(seq), json.dumps({"seq": seq, "pad": "x" * 2000}), seq=seq)
    if seq == first + 2:
        print("ready", flush=True)
"""


def test_sequence_continues_across_reopen(tmp_path) -> None:
    path = tmp_path / "spool.sqlite"
    s = Spool(path)
    assert s.next_seq() == 1
    s.append("summary", 0.0, "{}", seq=1)
    s.append("summary", 60.0, "{}", seq=2)
    s.close()
    s = Spool(path)
    assert s.next_seq() == 3 and [seq for seq, _ in s.documents()] == [1, 2]
    assert [seq for seq, _ in s.documents(since=1)] == [2]


def test_full_spool_drops_oldest_and_reports_them_once(tmp_path) -> None:
    s = Spool(tmp_path / "spool.sqlite", max_bytes=3100)
    dropped = []
    for seq in range(1, 8):
        assert s.pending_dropped() == dropped          # what the next document must report
        dropped = s.append("summary", float(seq), "y" * 1000, seq=seq)
    assert [seq for seq, _ in s.documents()] == [5, 6, 7]
    assert s.dropped_total() == 4 and s.size_bytes() <= 3100
    s.append("alert", 8.0, "y" * 10)                   # an alert does not report them
    assert s.pending_dropped() == [4]
    s.append("summary", 8.0, "y" * 10, seq=8)          # reported in 8: cleared
    assert s.pending_dropped() == []


def test_outbox_order_and_acknowledgement(tmp_path) -> None:
    s = Spool(tmp_path / "spool.sqlite")
    s.append("summary", 0.0, "s1", seq=1)
    s.append("alert", 1.0, "a1")
    s.append("summary", 60.0, "s2", seq=2)
    pending = s.unpublished()
    assert [(kind, doc) for _, kind, doc in pending] == [("summary", "s1"), ("alert", "a1"),
                                                        ("summary", "s2")]
    s.mark_published([pending[0][0], pending[1][0]])
    s.close()
    s = Spool(tmp_path / "spool.sqlite")                # acknowledgements are durable
    assert [doc for _, _, doc in s.unpublished()] == ["s2"] and s.count(unpublished=True) == 1
    assert [seq for seq, _ in s.documents()] == [1, 2]   # published summaries stay for export


def test_sigkill_never_tears_or_duplicates(tmp_path) -> None:
    path = tmp_path / "spool.sqlite"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        s = Spool(path)
        seqs = []
        for seq, doc in s.documents():
            assert json.loads(doc)["seq"] == seq          # whole, parseable, its own number
            seqs.append(seq)
        assert seqs == list(range(1, len(seqs) + 1))       # no gap, no duplicate
        assert s.next_seq() == len(seqs) + 1
        s.close()
    assert len(seqs) > 3


def test_wal_stays_bounded(tmp_path) -> None:
    path = tmp_path / "spool.sqlite"
    wal = tmp_path / "spool.sqlite-wal"
    rnd = random.Random(7)
    spool = Spool(path, max_bytes=2 << 20, fsync="off")   # full: drops in most appends
    acks = Spool(path, fsync="off")                         # the MQTT thread's connection
    # Durability as before: "window" commits only once the WAL is on disk (FULL).
    assert spool.db.execute("PRAGMA synchronous").fetchone()[0] == 1        # NORMAL
    durable = Spool(path)
    assert durable.db.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
    durable.close()

    def write(first: int, n: int) -> int:
        peak = 0
        for seq in range(first, first + n):
            spool.append("summary", float(seq), rnd.randbytes(6000).hex(), seq=seq)
            acks.mark_published([i for i, _, _ in acks.unpublished()])
            peak = max(peak, wal.stat().st_size)
        return peak

    # Tens of MiB through the WAL; SQLite's own checkpoints alone would let it reach 4 MiB.
    assert write(1, 1500) <= WAL_BYTES
    assert spool.size_bytes() <= 2 << 20 and spool.dropped_total() > 1000
    # A reader holding its snapshot (an export) keeps the WAL from being checkpointed: it
    # grows, and is cut back once the reader is done.
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM documents").fetchone()
    assert write(1501, 300) > WAL_BYTES
    reader.execute("COMMIT")
    reader.close()
    write(1801, 200)
    assert wal.stat().st_size <= WAL_BYTES
    assert [seq for seq, _ in spool.documents()][-1] == 2000
