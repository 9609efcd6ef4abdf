"""A small live fleet for tests: a real mosquitto, an operator key, agents as subprocesses.

```
FleetPlant(tmp)           broker (TLS client certificates, the fleet ACL), operator key made by
                          `edge-agent fleet keygen`, a collector reading edge-agent/# all along
  .add(agent, site)       an agent's config: live capture on lo that sees nothing ("tcp port 9":
                          idle ticks close 1 s windows), the broker, the operator's public key
  agent.start()/.stop()   `edge-agent run --config F` / SIGTERM, same state directory
  .send(...)              `edge-agent fleet send ... --json` with the collector's certificate
  .sign(...)              a command token signed in process (by the operator or any other key)
  .publish(topic, token)  a raw QoS 1 publish, as anyone holding the collector identity could
  .command(agent, ...)    sign + publish + the verified result, read by the collector
  .results(jti)           the cmd_result documents the collector saw for a jti
```

Every document the collector reads is checked with joserfc against the keys the agents
enrolled (``edge-agent keys show --json``), not with the agent's own verifier.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from edge_agent.commands import command_topic
from edge_agent.commands.verify import sign_command
from edge_agent.summary.sign import claims
from edge_agent.tools.fleet import load_operator_key
from tests.transport.broker import COLLECTOR, PREFIX, Broker, Received, _die_with_parent

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=timeout, check=False)


def wait(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def verified(token: str | bytes, jwks: list[dict[str, Any]]) -> dict[str, Any]:
    """The payload of ``token`` if one of ``jwks`` signed it (joserfc); ValueError if not."""
    text = token.decode() if isinstance(token, bytes) else token
    kid = jws.extract_compact(text.encode()).headers().get("kid")
    for jwk in jwks:
        if jwk["kid"] != kid:
            continue
        key = OKPKey.import_key({k: v for k, v in jwk.items() if k != "kid"})
        try:
            return json.loads(jws.deserialize_compact(text, key, algorithms=["EdDSA"]).payload)
        except JoseError:
            pass
    raise ValueError(f"no key of {[j['kid'] for j in jwks]} verifies this kid {kid} document")


class LiveAgent:
    """One ``edge-agent run`` subprocess and its files."""

    def __init__(self, plant: FleetPlant, agent_id: str, site: str) -> None:
        self.plant = plant
        self.id = agent_id
        self.site = site
        self.dir = plant.dir / agent_id
        self.dir.mkdir(parents=True)
        self.state = self.dir / "state"
        self.config = self.dir / "agent.toml"
        self.log = self.dir / "agent.log"
        self.base = f"{PREFIX}/{site}/{agent_id}"
        self.topic = command_topic(PREFIX, site, agent_id)
        cert, key = plant.broker.client_cert(agent_id)
        self.config.write_text(f"""\
[agent]
id = "{agent_id}"
site = "{site}"
state_dir = "{self.state}"

[capture]
interface = "lo"
bpf_filter = "tcp port 9"

[summary]
window_s = 1.0

[mqtt]
url = "{plant.broker.url(tls=True)}"
ca_file = "{plant.broker.ca_file}"
cert_file = "{cert}"
key_file = "{key}"
reconnect_min_s = 0.2
reconnect_max_s = 2.0

[fleet]
operator_keys = ["{plant.operator_pub}"]
""")
        # The device key made before the first run, so it can be enrolled at once.
        r = cli("keys", "init", "--state-dir", str(self.state))
        assert r.returncode == 0, r.stderr
        self.jwks: list[dict[str, Any]] = []     # every key this agent ever had, newest last
        self.key_files: list[Path] = []
        self.enrol()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def enrol(self) -> dict[str, Any]:
        """``keys show --json`` of the current device key, added to what the centre trusts."""
        r = cli("keys", "show", "--json", "--state-dir", str(self.state))
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        jwk = {**shown["keys"][0], "kid": shown["kid"]}
        if all(j["kid"] != jwk["kid"] for j in self.jwks):
            path = self.dir / f"device-{len(self.key_files)}.jwks"
            path.write_text(r.stdout)
            self.jwks.append(jwk)
            self.key_files.append(path)
        return shown

    @property
    def kid(self) -> str:
        return str(self.jwks[-1]["kid"])

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.id} runs already"
        self.started_at = time.time()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "-q", "--config", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=log, env=ENV, cwd=ROOT,
                preexec_fn=_die_with_parent)  # noqa: PLW1509

    def wait_online(self, timeout: float = 30.0) -> dict[str, Any]:
        """The first "online" status published since the last start, verified."""
        def online() -> dict[str, Any] | None:
            self.check_alive()
            for m in self.plant.sub.messages(f"{self.base}/status"):
                body = claims(m.payload.decode())
                if body.get("state") == "online" and body["ts"] >= self.started_at - 1:
                    return verified(m.payload, self.jwks)
            return None
        return wait(online, timeout, f"{self.id} online")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.id} is not running (exit {self.proc and self.proc.poll()})"
                                 f":\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as systemd stops it; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no goodbye; the broker publishes the last will."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def status_file(self) -> dict[str, Any]:
        """``edge-agent status --json --state-dir``: what the running agent last wrote."""
        r = cli("status", "--json", "--state-dir", str(self.state))
        assert r.stdout, r.stderr
        return json.loads(r.stdout)

    def wait_status_file(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = 15.0) -> dict[str, Any]:
        """The status file, once it satisfies ``predicate`` (it is refreshed every 5 s)."""
        def ready() -> dict[str, Any] | None:
            status = self.status_file()
            return status if predicate(status) else None
        return wait(ready, timeout, f"{self.id}'s status file", every=0.5)

    def summaries(self) -> list[tuple[int, dict[str, Any], bytes]]:
        """``(index in the collector's arrival order, claims, token)`` of this agent's summaries."""
        return [(i, claims(m.payload.decode()), m.payload)
                for i, m in enumerate(self.plant.sub.messages())
                if m.topic == f"{self.base}/summary"]


class FleetPlant:
    def __init__(self, directory: Path, agents: dict[str, str]) -> None:
        self.dir = Path(directory)
        self.broker = Broker(self.dir / "broker", agents=agents)
        self.broker.start()
        try:
            ops = self.dir / "ops"
            r = cli("fleet", "keygen", "--out", str(ops))
            assert r.returncode == 0, r.stderr
            self.operator_key_file = ops / "operator.key"
            self.operator_pub = ops / "operator.pub.pem"
            self.operator = load_operator_key(str(self.operator_key_file))
            self.sub = self.broker.subscriber(f"{PREFIX}/#")
            cert, key = self.broker.client_cert(COLLECTOR)
            self.conn = ["--broker", self.broker.url(), "--ca", str(self.broker.ca_file),
                         "--cert", str(cert), "--keyfile", str(key)]
            self.agents = {a: LiveAgent(self, a, s) for a, s in agents.items()}
        except BaseException:
            self.broker.close()
            raise

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop(10)
        self.broker.close()

    # --- operator side ---------------------------------------------------------------------

    def device_keys(self) -> list[str]:
        return [str(f) for a in self.agents.values() for f in a.key_files]

    def send(self, cmd: str | None, *args: str, agent: str | None = None,
             site: str | None = None, timeout: float = 20,
             device_keys: list[str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
        """``edge-agent fleet send --json``: exit status, the results it printed, stderr."""
        where = []
        if agent:
            site = site or self.agents[agent].site
            where += ["--agent", agent]
        if site:
            where += ["--site", site]
        keys = self.device_keys() if device_keys is None else device_keys
        r = cli("fleet", "send", *([cmd] if cmd else []), *args, *where,
                *(["--key", str(self.operator_key_file)] if cmd else []),
                "--timeout", str(timeout), "--json", *self.conn,
                *(["--device-key", *keys] if keys else []), timeout=timeout + 30)
        results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        return r.returncode, results, r.stderr

    def sign(self, cmd: str, args: dict[str, Any] | None = None, aud: Any = "*",
             now: float | None = None, ttl: float = 600, jti: str | None = None,
             key: Ed25519PrivateKey | None = None) -> str:
        return sign_command(key or self.operator, cmd, args or {}, aud,
                            time.time() if now is None else now, ttl, jti or uuid.uuid4().hex)

    def publish(self, topic: str, *tokens: str | bytes) -> None:
        """QoS 1, all at once (no wait between them), each acknowledged by the broker."""
        infos = [self.sub.client.publish(topic, t.encode() if isinstance(t, str) else t, qos=1)
                 for t in tokens]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published(), f"publish to {topic} not acknowledged"

    def results(self, jti: str) -> list[Received]:
        return [m for m in self.sub.messages() if m.topic.endswith("/cmd/result")
                and claims(m.payload.decode()).get("jti") == jti]

    def result_of(self, agent: LiveAgent, jti: str, timeout: float = 15.0) -> dict[str, Any]:
        msg = wait(lambda: next((m for m in self.results(jti)
                                 if m.topic == f"{agent.base}/cmd/result"), None),
                   timeout, f"the result of {jti} from {agent.id}")
        return verified(msg.payload, agent.jwks)

    def command(self, agent: LiveAgent, cmd: str, args: dict[str, Any] | None = None,
                timeout: float = 15.0) -> dict[str, Any]:
        """Sign, publish to the agent's topic, and return its verified result document."""
        token = self.sign(cmd, args, aud=agent.id)
        self.publish(agent.topic, token)
        return self.result_of(agent, claims(token)["jti"], timeout)

    def counters(self, agent: LiveAgent) -> dict[str, int]:
        """The agent's command counters now, from a `status` command (its own counted too:
        one more ``accepted``; its ``executed`` counts only after the answer)."""
        result = self.command(agent, "status")
        assert result["ok"], result
        return dict(result["result"]["commands"])


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that moved, by how much."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
