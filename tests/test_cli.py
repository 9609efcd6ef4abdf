"""The command line on every real capture: exit 0, no traceback, sensible output."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_agent import cli
from edge_agent.summary.sign import claims
from edge_agent.transport.spool import Spool
from tests.conftest import fixture_pcaps

ALL = fixture_pcaps()
ENVELOPE = ["ts", "flow_id", "src_ip", "src_port", "dest_ip", "dest_port", "transport", "proto",
            "is_request"]


def test_fixtures_are_there() -> None:
    assert len(ALL) >= 38, "../shared/fixtures/pcaps is missing or incomplete"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_decode_every_fixture(path, capsys) -> None:
    assert cli.main(["decode", str(path), "--format", "jsonl"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    for line in out.splitlines():
        rec = json.loads(line)
        assert list(rec)[:len(ENVELOPE)] == ENVELOPE
        assert rec["proto"] in rec and isinstance(rec["anomalies"], list)
        assert list(rec)[-1] == "anomalies"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_run_every_fixture(path, tmp_path, capsys) -> None:
    assert cli.main(["run", "--pcap", str(path), "--state-dir", str(tmp_path), "-q"]) == 0
    spool = Spool(tmp_path / "spool.sqlite")
    docs = [claims(d) for _, d in spool.documents()]
    assert docs, "a capture with packets gives at least one summary"
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
    assert sum(d["health"]["packets"] for d in docs) == docs[-1]["health"]["packets_total"]
    assert docs[-1]["window"]["complete"] is False and all(d["window"]["complete"] for d in docs[:-1])


def test_run_all_fixtures_in_one_go_and_again(tmp_path) -> None:
    """Sequence numbers continue across runs on one state directory."""
    cmd = [sys.executable, "-m", "edge_agent", "run", "--pcap", *map(str, ALL),
           "--state-dir", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0 and "Traceback" not in first.stderr
    n = len(list(Spool(tmp_path / "spool.sqlite").documents()))
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0
    seqs = [s for s, _ in Spool(tmp_path / "spool.sqlite").documents()]
    assert seqs == list(range(1, 2 * n + 1))
    assert f"summaries {n + 1}..{2 * n}" in second.stderr


def test_inspect_text_and_json(capsys) -> None:
    modbus = [str(p) for p in fixture_pcaps("modbus")]
    assert cli.main(["inspect", *modbus]) == 0
    text = capsys.readouterr().out
    assert "Transactions: modbus" in text and "read_holding_registers" in text
    assert cli.main(["inspect", "--json", *modbus]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["protocols"]["modbus"]["messages"] > 100
    assert any(t["server"].endswith(":502") for t in rep["talkers"])


def test_missing_or_bad_capture_is_a_clear_error(tmp_path, capsys) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    for path in (junk, tmp_path / "missing.pcap"):
        assert cli.main(["decode", str(path)]) == 1
        err = capsys.readouterr().err
        assert "capture error" in err and str(path) in err


def test_truncated_capture_keeps_what_was_read(tmp_path, capsys) -> None:
    src = fixture_pcaps("modbus")[0].read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(src[: len(src) * 2 // 3])
    assert cli.main(["decode", str(cut)]) == 0
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(src)
    n_cut = len(capsys.readouterr().out.splitlines())
    cli.main(["decode", str(whole)])
    n_whole = len(capsys.readouterr().out.splitlines())
    assert 0 < n_cut < n_whole


def test_run_then_export_and_verify_the_signed_chain(tmp_path, capsys) -> None:
    state = str(tmp_path / "state")
    modbus = [str(p) for p in fixture_pcaps("modbus")]
    assert cli.main(["run", "-q", "--pcap", *modbus, "--state-dir", state]) == 0
    assert cli.main(["verify", state]) == 0          # the spool: signatures and chain intact
    bundle = tmp_path / "out.bundle"
    assert cli.main(["export", "--out", str(bundle), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["keys", "show", "--json", "--state-dir", state]) == 0
    keyfile = tmp_path / "device.jwks"
    keyfile.write_text(capsys.readouterr().out)
    assert cli.main(["verify", str(bundle), "--key", str(keyfile)]) == 0
    lines = bundle.read_text().splitlines()
    (tmp_path / "cut.bundle").write_text("\n".join(lines[:-1]) + "\n")
    assert cli.main(["verify", str(tmp_path / "cut.bundle"), "--key", str(keyfile)]) == 1
