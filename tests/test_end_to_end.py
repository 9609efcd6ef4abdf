"""From a real capture to a real broker: signed summaries and alerts, verified independently.

The agent (``edge-agent run``, a subprocess) reads the labelled EtherNet/IP reboot attack,
publishes over TLS with a client certificate to a real mosquitto, and a subscriber holding the
collector's identity checks every document with joserfc, not with the project's own code.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from tests.conftest import fixture_pcaps
from tests.transport.broker import PREFIX, Broker, missing_requirements

pytestmark = pytest.mark.skipif(missing_requirements() is not None,
                                reason=str(missing_requirements()))
AGENT, SITE = "gw-e2e", "plant-1"


def test_capture_to_broker_signed_and_verifiable(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", agents={AGENT: SITE})
    broker.start()
    try:
        cert, key = broker.client_cert(AGENT)
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f"""
[agent]
id = "{AGENT}"
site = "{SITE}"
state_dir = "{tmp_path / 'state'}"
[mqtt]
url = "{broker.url(tls=True)}"
ca_file = "{broker.ca_file}"
cert_file = "{cert}"
key_file = "{key}"
""")
        (pcap,) = [p for p in fixture_pcaps("enip") if p.name == "EIP-RebootorRestart.pcap"]
        with broker.subscriber(f"{PREFIX}/#") as sub:
            sub.barrier()
            run = subprocess.run([sys.executable, "-m", "edge_agent", "run", "-q", "--config",
                                  str(cfg), "--pcap", str(pcap)], capture_output=True, text=True,
                                 timeout=120)
            assert run.returncode == 0, run.stderr
            base = f"{PREFIX}/{SITE}/{AGENT}"
            sub.wait_for(lambda m: any(x.topic == f"{base}/status" and b"offline" in
                                       _payload_bytes(x.payload) for x in m), timeout=20)
            summaries = sub.payloads(f"{base}/summary")
            alerts = sub.payloads(f"{base}/alert")
        keys = subprocess.run([sys.executable, "-m", "edge_agent", "keys", "show", "--json",
                               "--state-dir", str(tmp_path / "state")], capture_output=True,
                              text=True, check=True).stdout
        jwk = OKPKey.import_key(json.loads(keys)["keys"][0])
        docs = [json.loads(jws.deserialize_compact(p.decode(), jwk, algorithms=["EdDSA"]).payload)
                for p in summaries]
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1)) and docs
        assert docs[0]["prev"] is None and all(d["agent_id"] == AGENT for d in docs)
        found = {a["finding"]["rule"] for a in
                 (json.loads(jws.deserialize_compact(p.decode(), jwk, algorithms=["EdDSA"]).payload)
                  for p in alerts)}
        assert {"plc_stop", "device_restart"} <= found
        assert {f["rule"] for d in docs for f in d["findings"]} >= found
    finally:
        broker.close()


def _payload_bytes(token: bytes) -> bytes:
    import base64
    try:
        body = token.split(b".")[1]
        return base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
    except (IndexError, ValueError):
        return b""
