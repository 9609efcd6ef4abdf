"""``edge-agent fleet`` and ``edge-agent apply`` as an operator runs them: keys, signed
commands carried on removable media to a stopped agent, and send/status over a real broker."""
from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.commands import lock_state_dir
from edge_agent.summary.sign import DeviceKey, claims, dumps, load_public_key, verify
from edge_agent.transport.spool import Spool
from tests.commands import SHIPPED_MODEL, Gateway, Operator

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, input=stdin)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "ops"
    r = cli("fleet", "keygen", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def site(tmp_path: Path, keys: Path) -> Path:
    """A stopped agent: its config file trusts the operator key; no state yet."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "gw-1"\nsite = "site-a"\nstate_dir = "{tmp_path / "state"}"\n\n'
                   f'[fleet]\noperator_keys = ["{keys / "operator.pub.pem"}"]\n')
    return cfg


def sign(keys: Path, *args: str) -> str:
    r = cli("fleet", "sign", "--key", str(keys / "operator.key"), *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_keygen_writes_a_private_key_and_its_public_halves(keys: Path) -> None:
    assert stat.S_IMODE((keys / "operator.key").stat().st_mode) == 0o600
    kid, _ = load_public_key(keys / "operator.pub.pem")
    assert load_public_key(keys / "operator.jwks.json")[0] == kid
    assert DeviceKey.load(keys / "operator.key").kid == kid
    again = cli("fleet", "keygen", "--out", str(keys))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert cli("fleet", "keygen", "--out", str(keys), "--force").returncode == 0
    assert load_public_key(keys / "operator.pub.pem")[0] != kid


def test_sign_makes_a_command_token(keys: Path) -> None:
    token = sign(keys, "set_log_level", "--args", '{"level": "debug"}', "--aud", "gw-1",
                 "--aud", "site:site-b", "--ttl", "2h")
    header, payload = verify(token, {load_public_key(keys / "operator.jwks.json")[0]:
                                     load_public_key(keys / "operator.jwks.json")[1]})
    body = json.loads(payload)
    assert header["typ"] == "edge-agent-cmd+jwt"
    assert body["aud"] == ["gw-1", "site:site-b"] and body["cmd"] == "set_log_level"
    assert body["args"] == {"level": "debug"} and body["exp"] - body["iat"] == 7200
    assert len(body["jti"]) == 32


def test_sign_checks_arguments_before_signing(keys: Path) -> None:
    r = cli("fleet", "sign", "set_log_level", "--args", '{"level": "loud"}', "--aud", "*",
            "--key", str(keys / "operator.key"))
    assert r.returncode == 1 and "args.level must be one of" in r.stderr and not r.stdout
    r = cli("fleet", "sign", "reboot", "--aud", "*", "--key", str(keys / "operator.key"))
    assert r.returncode == 2


def test_sign_then_apply_on_a_stopped_agent(tmp_path: Path, keys: Path, site: Path) -> None:
    new = site.read_text() + '\n[limits]\nmax_flows = 20000\n'
    (tmp_path / "args.json").write_text(json.dumps({"toml": new}))
    token_file = tmp_path / "usb" / "cmd.jwt"
    token_file.parent.mkdir()
    r = cli("fleet", "sign", "set_config", "--args-file", str(tmp_path / "args.json"),
            "--aud", "site:site-a", "--ttl", "7d", "--key", str(keys / "operator.key"),
            "--out", str(token_file))
    assert r.returncode == 0, r.stderr
    before = site.read_bytes()

    r = cli("apply", str(token_file), "--config", str(site))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["ok"] is True and result["cmd"] == "set_config"
    assert site.read_text() == new and site.with_name("agent.toml.prev").read_bytes() == before
    state = tmp_path / "state"
    device = DeviceKey.load(state / "device.key")
    spool = Spool(state / "spool.sqlite")
    [(_, stored)] = list(spool.documents(kind="cmd_result"))
    spool.close()
    verify(stored, {device.kid: device.public})
    assert claims(stored) == result

    # The same medium plugged in again: refused, nothing runs, the stored result is shown.
    site.write_text(new + "# edited by hand\n")
    r = cli("apply", str(token_file), "--config", str(site))
    assert r.returncode == 1 and "applied before" in r.stderr
    assert json.loads(r.stdout) == result
    assert site.read_text().endswith("# edited by hand\n")

    # The result travels back with the next export, and verifies there.
    bundle = tmp_path / "usb" / "out.bundle"
    (tmp_path / "device.jwks").write_text(json.dumps({"keys": [device.public_jwk()]}))
    assert cli("export", "--config", str(site), "--out", str(bundle)).returncode == 0
    r = cli("verify", str(bundle), "--key", str(tmp_path / "device.jwks"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr


def test_apply_refuses_a_command_for_another_agent(tmp_path: Path, keys: Path,
                                                   site: Path) -> None:
    token = sign(keys, "set_config", "--args", json.dumps({"toml": "[agent]\n"}), "--aud", "gw-2")
    before = site.read_bytes()
    r = cli("apply", "-", "--config", str(site), stdin=token)
    assert r.returncode == 1 and "wrong_audience" in r.stderr and not r.stdout
    assert site.read_bytes() == before
    spool = Spool(tmp_path / "state" / "spool.sqlite")
    assert spool.count() == 0
    spool.close()


def test_apply_reports_a_failed_command(keys: Path, site: Path, tmp_path: Path) -> None:
    token = sign(keys, "set_config", "--args", json.dumps({"toml": "[limits]\nmax_flows = 1\n"}),
                 "--aud", "gw-1")
    (tmp_path / "t").write_text(token)
    r = cli("apply", str(tmp_path / "t"), "--config", str(site))
    assert r.returncode == 1 and "invalid_config: limits.max_flows" in r.stderr
    assert json.loads(r.stdout)["error"]["key"] == "limits.max_flows"


def test_apply_offline_notes(keys: Path, site: Path, tmp_path: Path) -> None:
    (tmp_path / "t").write_text(sign(keys, "learn_start", "--args", '{"period_s": 60}',
                                     "--aud", "gw-1"))
    r = cli("apply", str(tmp_path / "t"), "--config", str(site))
    assert r.returncode == 1 and "not_running" in r.stderr


def test_apply_will_not_touch_the_state_of_a_running_agent(keys: Path, site: Path,
                                                            tmp_path: Path) -> None:
    (tmp_path / "t").write_text(sign(keys, "ping", "--aud", "gw-1"))
    fd = lock_state_dir(tmp_path / "state")
    try:
        r = cli("apply", str(tmp_path / "t"), "--config", str(site))
    finally:
        os.close(fd)
    assert r.returncode == 1 and "held by another process" in r.stderr
    assert cli("apply", str(tmp_path / "t"), "--config", str(site)).returncode == 0


def test_apply_needs_trusted_operator_keys(keys: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bare.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "s"}"\n')
    (tmp_path / "t").write_text(sign(keys, "ping", "--aud", "*"))
    r = cli("apply", str(tmp_path / "t"), "--config", str(cfg))
    assert r.returncode == 1 and "fleet.operator_keys" in r.stderr
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "s"}"\n[fleet]\noperator_keys = ["/x"]\n')
    r = cli("apply", str(tmp_path / "t"), "--config", str(cfg))
    assert r.returncode == 2 and "fleet.operator_keys" in r.stderr
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "s"}"\n[fleet]\nenabled = false\n'
                   f'operator_keys = ["{keys / "operator.pub.pem"}"]\n')
    r = cli("apply", str(tmp_path / "t"), "--config", str(cfg))
    assert r.returncode == 1 and "fleet.enabled" in r.stderr


@pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="no shipped model")
def test_model_update_on_removable_media(tmp_path: Path, keys: Path, site: Path) -> None:
    import shutil
    model = tmp_path / "release"
    model.mkdir()
    data = json.loads(SHIPPED_MODEL.read_text())
    shutil.copy(SHIPPED_MODEL.parent / data["onnx_file"], model / data["onnx_file"])
    (model / "m.json").write_text(json.dumps({**data, "version": 2}))
    (tmp_path / "t").write_text(sign(keys, "model_update", "--model", str(model / "m.json"),
                                     "--aud", "gw-1"))
    r = cli("apply", str(tmp_path / "t"), "--config", str(site))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["version"] == 2
    assert (tmp_path / "state" / "models" / "2" / "manifest.json").exists()
    (model / data["onnx_file"]).write_bytes(b"tampered")
    r = cli("fleet", "sign", "model_update", "--model", str(model / "m.json"), "--aud", "gw-1",
            "--key", str(keys / "operator.key"))
    assert r.returncode == 1 and "onnx_sha256" in r.stderr


# --- over a real broker ------------------------------------------------------------------------

def _broker_or_skip(tmp_path: Path):   # noqa: ANN202
    from tests.transport.broker import Broker, missing_requirements
    problem = missing_requirements()
    if problem:
        pytest.skip(problem)
    broker = Broker(tmp_path / "broker", agents={"gw-1": "site-a"})
    broker.start()
    return broker


class AgentSide:
    """The agent's end, as the running agent will do it: subscribe to its command topic,
    run each command with the Executor on one thread, publish the result, then ack."""

    def __init__(self, broker, gw: Gateway) -> None:   # noqa: ANN001
        import paho.mqtt.client as mqtt
        self.gw = gw
        self.inbox: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-1",
                                  protocol=mqtt.MQTTv5)
        cert, key = broker.client_cert("gw-1")
        self.client.tls_set(ca_certs=str(broker.ca_file), certfile=str(cert), keyfile=str(key))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("edge-agent/site-a/gw-1/cmd", qos=1)
        self.client.on_message = lambda c, u, m: self.inbox.put(bytes(m.payload))
        self.client.connect("127.0.0.1", broker.tls_port)
        self.client.loop_start()
        assert subscribed.wait(10)
        status = gw.key.sign(dumps({"type": "status", "agent_id": "gw-1", "site": "site-a",
                                    "state": "online", "ts": time.time(),
                                    "agent_version": "test"}))
        self.client.publish("edge-agent/site-a/gw-1/status", status, qos=1, retain=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                token = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            outcome = self.gw.handle(token, time.time())
            if outcome.token:
                self.client.publish("edge-agent/site-a/gw-1/cmd/result", outcome.token, qos=1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


def test_send_and_status_over_a_real_broker(tmp_path: Path) -> None:
    broker = _broker_or_skip(tmp_path)
    op = Operator()
    gw = Gateway(tmp_path / "gw", [op])
    try:
        agent = AgentSide(broker, gw)
    except BaseException:
        gw.close()
        broker.close()
        raise
    try:
        cert, key = broker.client_cert("collector")
        conn = ["--broker", broker.url(), "--ca", str(broker.ca_file), "--cert", str(cert),
                "--keyfile", str(key), "--site", "site-a"]
        devkey = tmp_path / "gw-1.jwks"
        devkey.write_text(json.dumps({"keys": [gw.key.public_jwk()]}))
        opkey = str(tmp_path / "gw" / "operator-0.key")

        r = cli("fleet", "send", "set_log_level", "--args", '{"level": "debug"}', "--agent",
                "gw-1", "--key", opkey, "--device-key", str(devkey), "--timeout", "20", *conn)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "site-a/gw-1  ok  [verified]" in r.stdout and gw.control.log_level == "debug"

        r = cli("fleet", "send", "set_log_level", "--args", '{"level": "debug"}', "--agent",
                "gw-1", "--key", opkey, "--timeout", "20", "--json", *conn)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["verified"] == "not verified (no --device-key)"

        # The agent's signed refusal comes back too, and fails the command.
        bad = tmp_path / "bad.jwt"
        bad.write_text(op.sign("learn_start", {"period_s": -5}, now=time.time()))
        r = cli("fleet", "send", "--token", str(bad), "--agent", "gw-1", "--timeout", "20",
                "--device-key", str(devkey), *conn)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "FAILED  [verified]  bad_args: args.period_s" in r.stdout
        assert gw.control.learning is None

        r = cli("fleet", "status", "--device-key", str(devkey), *conn)
        assert r.returncode == 0, r.stderr
        row = next(line for line in r.stdout.splitlines() if line.startswith("gw-1"))
        assert "site-a" in row and "online" in row and "verified" in row
    finally:
        agent.close()
        gw.close()
        broker.close()
