"""Export bundles: what is new since the last export, verifiable offline, truncation shows."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.summary.chain import ChainVerifier, Verdict
from edge_agent.summary.sign import DeviceKey, b64url, b64url_decode, dumps, token_hash
from edge_agent.transport.export import (
    BundleError,
    ExportError,
    NothingToExport,
    export_bundle,
    read_bundle,
)
from edge_agent.transport.spool import Spool
from tests.summary.test_chain import alert, summary

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


class Agent:
    """Stores signed documents the way SummaryStore will: JWS in ``doc``, chained by ``prev``."""

    def __init__(self, spool: Spool, key: DeviceKey) -> None:
        self.spool, self.key = spool, key

    def summary(self) -> str:
        seq = self.spool.next_seq()
        token = summary(self.key, seq, self.spool.meta("chain_head"),
                        dropped=self.spool.pending_dropped())
        self.spool.append("summary", 60.0 * seq, token, seq=seq,
                          meta={"chain_head": token_hash(token)})
        return token

    def alert(self, n: int) -> str:
        token = alert(self.key, n)
        self.spool.append("alert", float(n), token)
        return token


def verify_bundle(path: Path, keys: dict | None = None,
                  anchor: tuple[int, str] | None = None) -> Verdict:
    bundle = read_bundle(path)
    v = ChainVerifier(keys or bundle.device_keys, anchor)
    manifest = v.manifest(bundle.manifest_token)
    for token in bundle.documents():
        v.feed(token)
    if bundle.complete is False:
        v.problem("truncation", "last line cut short")
    return v.finish(manifest, bundle.documents_sha256)


@pytest.fixture
def key() -> DeviceKey:
    return DeviceKey(Ed25519PrivateKey.generate())


@pytest.fixture
def agent(tmp_path: Path, key: DeviceKey) -> Agent:
    return Agent(Spool(tmp_path / "spool.sqlite"), key)


def test_bundle_layout_and_manifest(tmp_path: Path, agent: Agent, key: DeviceKey) -> None:
    docs = [agent.summary(), agent.alert(1), agent.summary(), agent.summary()]
    out = tmp_path / "b1.jwsl"
    m = export_bundle(agent.spool, key, out, agent_id="ignored", now=1_700_000_000.0)
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [line.decode() for line in lines[1:-1]] == docs
    assert m["documents_sha256"] == hashlib.sha256(b"\n".join(lines[1:])).hexdigest()
    assert (m["agent_id"], m["site"], m["created"], m["kid"]) == ("gw-1", "plant-a",
                                                                  1_700_000_000.0, key.kid)
    assert (m["first_seq"], m["last_seq"], m["count"], m["counts"]) == (1, 3, 4,
                                                                        {"alert": 1, "summary": 3})
    assert (m["since_seq"], m["since_hash"]) == (0, None)
    assert m["last_summary_hash"] == token_hash(docs[-1])
    bundle = read_bundle(out)
    assert bundle.manifest == m and list(bundle.device_keys) == [key.kid]
    v = verify_bundle(out, {key.kid: key.public})
    assert v.ok, v.render()
    assert (v.documents, v.first_seq, v.last_seq) == (4, 1, 3)


def test_bundle_verifies_with_joserfc(tmp_path: Path, agent: Agent, key: DeviceKey) -> None:
    from joserfc import jws
    from joserfc.jwk import OKPKey
    agent.summary(), agent.alert(1)
    out = tmp_path / "b.jwsl"
    export_bundle(agent.spool, key, out)
    lines = out.read_text().splitlines()
    enrolled = OKPKey.import_key(key.public_jwk())
    manifest = json.loads(jws.deserialize_compact(lines[0], enrolled,
                                                  algorithms=["EdDSA"]).payload)
    pub = OKPKey.import_key(manifest["device_key"])
    for line in lines[1:]:
        jws.deserialize_compact(line, pub, algorithms=["EdDSA"])


def test_second_export_has_only_new_documents(tmp_path: Path, agent: Agent,
                                              key: DeviceKey) -> None:
    first = [agent.summary(), agent.summary(), agent.alert(1)]
    m1 = export_bundle(agent.spool, key, tmp_path / "1")
    assert agent.spool.meta("exported_seq") == "2"
    with pytest.raises(NothingToExport):
        export_bundle(agent.spool, key, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    second = [agent.alert(2), agent.summary(), agent.summary()]
    m2 = export_bundle(agent.spool, key, tmp_path / "2")
    assert (tmp_path / "2").read_text().splitlines()[1:] == second
    assert (m2["since_seq"], m2["since_hash"]) == (2, m1["last_summary_hash"])
    assert (m2["first_seq"], m2["last_seq"], m2["count"]) == (3, 4, 3)
    assert (tmp_path / "1").read_text().splitlines()[1:] == first
    v = verify_bundle(tmp_path / "2")
    assert v.ok, v.render()
    # --since exports again without moving the watermark back
    m3 = export_bundle(agent.spool, key, tmp_path / "3", since=1)
    assert (m3["first_seq"], m3["count"]) == (2, 5) and verify_bundle(tmp_path / "3").ok
    assert agent.spool.meta("exported_seq") == "4"


def test_watermark_survives_a_failed_write(tmp_path: Path, agent: Agent, key: DeviceKey) -> None:
    agent.summary()
    with pytest.raises(ExportError):
        export_bundle(agent.spool, key, tmp_path / "no-such-dir" / "b")
    assert agent.spool.meta("exported_id") is None
    (tmp_path / "taken").write_text("precious")
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(agent.spool, key, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "precious"
    assert export_bundle(agent.spool, key, tmp_path / "ok")["count"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "spool.sqlite", "spool.sqlite-shm",
                                                          "spool.sqlite-wal", "taken"]


def test_documents_dropped_before_export_are_reported(tmp_path: Path, key: DeviceKey) -> None:
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1600)   # room for three summaries
    agent = Agent(spool, key)
    for _ in range(8):
        agent.summary()
    out = tmp_path / "b"
    m = export_bundle(spool, key, out)
    assert (m["since_seq"], m["first_seq"], m["last_seq"]) == (0, 6, 8)
    v = verify_bundle(out)
    assert [(p.name, p.seq) for p in v.problems] == [("dropped_by_agent", 1)], v.render()
    assert "summaries 1..5 missing" in v.problems[0].detail


def _bundle(tmp_path: Path, agent: Agent, key: DeviceKey) -> Path:
    for n in range(4):
        agent.summary()
        agent.alert(n)
    out = tmp_path / "b"
    export_bundle(agent.spool, key, out)
    assert verify_bundle(out).ok
    return out


def test_last_line_removed_is_truncation(tmp_path: Path, agent: Agent, key: DeviceKey) -> None:
    out = _bundle(tmp_path, agent, key)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))                      # an alert: the seqs still agree
    assert [p.name for p in verify_bundle(out).problems] == ["truncation"]
    out.write_text("".join(lines[:-2]))                      # the last summary too
    v = verify_bundle(out)
    assert [p.name for p in v.problems] == ["truncation"]
    assert "last summary is seq 3, the manifest says 4" in v.problems[0].detail


def test_last_document_cut_short_is_truncation(tmp_path: Path, agent: Agent,
                                               key: DeviceKey) -> None:
    out = _bundle(tmp_path, agent, key)
    data = out.read_bytes()
    out.write_bytes(data[:-40])
    v = verify_bundle(out)
    assert "truncation" in [p.name for p in v.problems] and not v.ok


def test_edited_or_extended_bundle_fails(tmp_path: Path, agent: Agent, key: DeviceKey) -> None:
    out = _bundle(tmp_path, agent, key)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines) + lines[1])
    assert {p.name for p in verify_bundle(out).problems} == {"replay", "manifest_mismatch"}
    out.write_text("".join(lines[:3] + lines[4:]))           # summary 2 taken out
    assert {p.name for p in verify_bundle(out).problems} == {"gap", "truncation"}
    h, p, sig = lines[0].rstrip("\n").split(".")
    manifest = json.loads(b64url_decode(p))
    manifest["count"] = 7                                   # hide the cut: the signature breaks
    out.write_text(".".join([h, b64url(dumps(manifest)), sig]) + "\n" + "".join(lines[1:8]))
    v = verify_bundle(out)
    assert [p.name for p in v.problems] == ["bad_signature"]
    assert v.problems[0].detail.startswith("manifest")


def test_stranger_key_in_bundle_is_refused(tmp_path: Path, agent: Agent, key: DeviceKey) -> None:
    out = _bundle(tmp_path, agent, key)
    enrolled = DeviceKey(Ed25519PrivateKey.generate())
    v = verify_bundle(out, {enrolled.kid: enrolled.public})
    assert not v.ok and {p.name for p in v.problems} == {"unknown_kid"}


def test_read_bundle_refuses_other_files(tmp_path: Path, key: DeviceKey) -> None:
    (tmp_path / "x").write_text(key.sign(b'{"type":"alert"}') + "\n")
    with pytest.raises(BundleError):
        read_bundle(tmp_path / "x")
    (tmp_path / "y").write_bytes(os.urandom(100))
    with pytest.raises(BundleError):
        read_bundle(tmp_path / "y")
