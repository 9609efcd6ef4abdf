"""``edge-agent fleet``: the operator's side of fleet commands.

    keygen   an operator key pair: ``operator.key`` (keep it off the gateways) and the public
             halves ``operator.pub.pem`` / ``operator.jwks.json`` for ``fleet.operator_keys``
    sign     a command token (stdout or ``--out``), for ``send`` or for removable media
             (``edge-agent apply``)
    send     sign a command (or take ``--token``), publish it QoS 1 to the agent, site or
             fleet command topic (see :mod:`edge_agent.commands`), and wait for the results,
             each checked against the agents' enrolled keys (``--device-key``)
    status   the agents' retained status documents, as a table

``send`` subscribes to the result topics before it publishes, so no result can be missed;
it ends at the first result for one agent, at ``--expect N`` results, or at ``--timeout``.
Exit status: 0 when every result arrived, was ok, and (with ``--device-key``) verified.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import queue
import re
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.commands import command_topic, result_filter, status_filter
from edge_agent.commands.handlers import HANDLERS
from edge_agent.commands.verify import sign_command
from edge_agent.config import _mqtt_url
from edge_agent.model.scorer import Manifest, ModelError
from edge_agent.summary.sign import (
    DeviceKey,
    KeyExists,
    VerifyError,
    claims,
    load_public_keys,
    verify,
)
from edge_agent.tools import ToolError

DEFAULT_PREFIX = "edge-agent"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
AGENT_MAX_TTL_S = 604_800        # fleet.max_ttl_s by default: longer commands are refused


def duration(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, or e.g. 90s, 15m, 2h, 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load_operator_key(path: str) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ToolError(f"cannot read the operator key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def model_args(manifest_path: str, rollback: bool) -> dict[str, Any]:
    """``model_update`` args: the manifest and the ONNX file next to it, checked here first."""
    path = Path(manifest_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest.from_dict(data, str(path))
        onnx = (path.parent / manifest.onnx_file).read_bytes()
    except (OSError, ValueError, ModelError) as exc:
        raise ToolError(f"cannot use the model {path}: {exc}") from None
    if hashlib.sha256(onnx).hexdigest() != manifest.onnx_sha256:
        raise ToolError(f"{path.parent / manifest.onnx_file} does not match the manifest's "
                        "onnx_sha256")
    args = {"manifest": data, "onnx": base64.b64encode(onnx).decode("ascii")}
    return {**args, "rollback": True} if rollback else args


def command_args(args: argparse.Namespace) -> dict[str, Any]:
    given = [n for n in ("args", "args_file", "model") if getattr(args, n)]
    if len(given) > 1:
        raise ToolError("give one of --args, --args-file and --model")
    if args.model:
        if args.cmd != "model_update":
            raise ToolError("--model is for model_update")
        out = model_args(args.model, args.rollback)
    else:
        try:
            text = args.args or (Path(args.args_file).read_text(encoding="utf-8")
                                 if args.args_file else "{}")
            out = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ToolError(f"cannot read the command arguments: {exc}") from None
        if args.rollback:
            raise ToolError("--rollback goes with --model")
    if not isinstance(out, dict):
        raise ToolError("the command arguments must be a JSON object")
    problem = HANDLERS[args.cmd].check_args(out)
    if problem:
        raise ToolError(f"{args.cmd}: {problem}")
    return out


def make_token(args: argparse.Namespace, aud: list[str]) -> str:
    if args.ttl <= 0:
        raise ToolError("--ttl must be positive")
    if args.ttl > AGENT_MAX_TTL_S:
        print(f"edge-agent: warning: agents refuse commands valid longer than their "
              f"fleet.max_ttl_s ({AGENT_MAX_TTL_S} s by default)", file=sys.stderr)
    key = load_operator_key(args.key)
    return sign_command(key, args.cmd, command_args(args), aud[0] if len(aud) == 1 else aud,
                        time.time(), args.ttl, args.jti)


# --- keygen and sign ---------------------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        key = DeviceKey.create(out / f"{args.name}.key", force=args.force)
    except KeyExists as exc:
        raise ToolError(str(exc).replace("the centre must then enrol the new key",
                                         "every agent must then trust the new key")) from None
    except OSError as exc:
        raise ToolError(f"cannot write {out}: {exc}") from None
    (out / f"{args.name}.pub.pem").write_text(key.public_pem())
    (out / f"{args.name}.jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]},
                                                           indent=2) + "\n")
    print(f"operator key {out / (args.name + '.key')} (kid {key.kid}); keep it off the gateways.\n"
          f"agents trust it with: [fleet] operator_keys = [\"{out / (args.name + '.pub.pem')}\"]")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    token = make_token(args, args.aud)
    if args.out:
        try:
            Path(args.out).write_text(token + "\n", encoding="ascii")
        except OSError as exc:
            raise ToolError(f"cannot write {args.out}: {exc}") from None
        body = claims(token)
        print(f"signed {args.cmd} for {body['aud']} (jti {body['jti']}, valid until "
              f"{_when(body['exp'])}) to {args.out}", file=sys.stderr)
    else:
        print(token)
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


# --- MQTT --------------------------------------------------------------------------------------

class Session:
    """A short-lived MQTT client for the operator: connect, subscribe, publish, receive."""

    def __init__(self, args: argparse.Namespace) -> None:
        import paho.mqtt.client as mqtt
        problem = _mqtt_url(args.broker)
        if problem:
            raise ToolError(f"--broker {args.broker}: {problem}")
        url = urlsplit(args.broker)
        tls = url.scheme == "mqtts" or bool(args.ca)
        self.host, self.port = url.hostname or "", url.port or (8883 if tls else 1883)
        self.v5 = args.protocol == "5"
        client_id = args.client_id or f"edge-agent-fleet-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        if tls:
            try:
                ctx = ssl.create_default_context(cafile=args.ca or None)
                if args.cert:
                    ctx.load_cert_chain(args.cert, args.keyfile or None)
            except (OSError, ssl.SSLError) as exc:
                raise ToolError(f"TLS set-up: {exc}") from None
            self.client.tls_set_context(ctx)
        if args.username or args.password_file:
            password = None
            if args.password_file:
                try:
                    password = Path(args.password_file).read_text().rstrip("\r\n")
                except OSError as exc:
                    raise ToolError(f"cannot read {args.password_file}: {exc}") from None
            self.client.username_pw_set(args.username or None, password)
        self._cond = threading.Condition()
        self._connack: Any = None
        self._acks: dict[int, Any] = {}
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload),
                                                                       bool(m.retain)))

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self._connack = reason
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = reasons
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = [reason]
            self._cond.notify_all()

    def _wait(self, ready: Any, what: str, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise ToolError(f"timed out after {timeout:g} s waiting for {what}")

    def open(self, timeout: float) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except ssl.SSLCertVerificationError as exc:
            raise ToolError(f"TLS: cannot verify the broker certificate: {exc.verify_message} "
                            "(--ca)") from None
        except (OSError, ssl.SSLError) as exc:
            raise ToolError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self.client.loop_start()
        self._wait(lambda: self._connack is not None, "the broker to accept the connection",
                   timeout)
        if self._connack.is_failure:
            raise ToolError(f"the broker refused the connection: {self._connack.getName()}")

    def _acked(self, mid: int, what: str, timeout: float) -> None:
        self._wait(lambda: mid in self._acks, what, timeout)
        bad = [r for r in self._acks.pop(mid) if r.is_failure]
        if bad:
            raise ToolError(f"the broker refused {what}: {bad[0].getName()} (its ACL?)")

    def subscribe(self, topic: str, timeout: float) -> None:
        rc, mid = self.client.subscribe(topic, qos=1)
        if mid is None:
            raise ToolError(f"cannot subscribe to {topic} (paho error {rc})")
        self._acked(mid, f"the subscription to {topic}", timeout)

    def publish(self, topic: str, payload: str, timeout: float) -> None:
        info = self.client.publish(topic, payload.encode("ascii"), qos=1)
        self._acked(info.mid, f"the command on {topic}", timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def device_keys(files: list[str] | None) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for f in files or []:
        try:
            keys.update(load_public_keys(Path(f)))
        except ValueError as exc:
            raise ToolError(f"--device-key {f}: {exc}") from None
    return keys


def check_document(token: str, keys: dict[str, Ed25519PublicKey]
                   ) -> tuple[dict[str, Any] | None, str]:
    """``(payload, verdict)``: verdict ``verified``, ``not verified (...)`` or ``BAD ...``."""
    try:
        body = claims(token)
    except (VerifyError, ValueError, RecursionError):
        return None, "BAD: not a signed document"
    if not isinstance(body, dict):
        return None, "BAD: not a signed document"
    if not keys:
        return body, "not verified (no --device-key)"
    try:
        verify(token, keys)
    except VerifyError as exc:
        if exc.reason == "unknown_kid":
            return body, f"not verified (kid {exc.detail.split()[-1]} is not in --device-key)"
        return body, f"BAD: {exc}"
    return body, "verified"


# --- send and status ---------------------------------------------------------------------------

def cmd_send(args: argparse.Namespace) -> int:
    if args.agent and not args.site:
        raise ToolError("--agent needs --site (topics are <prefix>/<site>/<agent>/...)")
    keys = device_keys(args.device_key)
    if args.token:
        try:
            token = Path(args.token).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolError(f"cannot read {args.token}: {exc}") from None
    else:
        if not args.key or not args.cmd:
            raise ToolError("give CMD and --key (the operator key), or --token FILE")
        aud = args.aud or [args.agent if args.agent else f"site:{args.site}" if args.site else "*"]
        token = make_token(args, aud)
    try:
        mine = claims(token)
        jti = mine["jti"]
    except (VerifyError, ValueError, KeyError, TypeError):
        raise ToolError("not a command token") from None
    topic = command_topic(args.prefix, args.site, args.agent)
    session = Session(args)
    results: dict[str, tuple[dict[str, Any], str]] = {}
    try:
        session.open(args.timeout)
        session.subscribe(result_filter(args.prefix, args.site, args.agent), args.timeout)
        session.publish(topic, token, args.timeout)
        print(f"edge-agent: sent {mine.get('cmd')} (jti {jti}, aud {mine.get('aud')}) to {topic}",
              file=sys.stderr)
        deadline = time.monotonic() + args.timeout
        want = 1 if args.agent else args.expect
        while want is None or len(results) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                _topic, payload, _ = session.messages.get(timeout=left)
            except queue.Empty:
                break
            text = payload.decode("ascii", "replace").strip()
            body, verdict = check_document(text, keys)
            if body is None or body.get("jti") != jti or body.get("type") != "cmd_result":
                continue
            agent = str(body.get("agent_id"))
            if agent not in results:
                results[agent] = (body, verdict)
                _print_result(body, verdict, text, args.json)
    finally:
        session.close()
    if not results:
        print(f"edge-agent: no result within {args.timeout:g} s", file=sys.stderr)
        return 1
    if args.expect and len(results) < args.expect:
        print(f"edge-agent: {len(results)} of {args.expect} result(s) within {args.timeout:g} s",
              file=sys.stderr)
        return 1
    good = all(b.get("ok") is True and (not keys or v == "verified") for b, v in results.values())
    return 0 if good else 1


def _print_result(body: dict[str, Any], verdict: str, token: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**body, "verified": verdict, "token": token}), flush=True)
        return
    if body.get("ok"):
        detail = json.dumps(body.get("result"), separators=(",", ":"))
    else:
        err = body.get("error") or {}
        key = f"{err['key']}: " if err.get("key") else ""
        detail = f"{err.get('code')}: {key}{err.get('reason')}"
    print(f"{body.get('site')}/{body.get('agent_id')}  {'ok' if body.get('ok') else 'FAILED'}  "
          f"[{verdict}]  {detail}", flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    keys = device_keys(args.device_key)
    session = Session(args)
    latest: dict[str, str] = {}
    try:
        session.open(args.timeout)
        session.subscribe(status_filter(args.prefix, args.site), args.timeout)
        deadline = time.monotonic() + args.wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload, _ = session.messages.get(timeout=left)
            except queue.Empty:
                break
            if payload:                 # an empty retained message clears a status
                latest[topic] = payload.decode("ascii", "replace").strip()
    finally:
        session.close()
    rows = []
    for topic, token in sorted(latest.items()):
        body, verdict = check_document(token, keys)
        parts = topic.split("/")
        rows.append({"agent_id": parts[-2], "site": parts[-3], "verified": verdict,
                     **(body or {"state": "unreadable"})})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = [["AGENT", "SITE", "STATE", "SINCE", "VERSION", "SIGNATURE"]]
        for r in rows:
            ts = r.get("ts")
            table.append([str(r["agent_id"]), str(r["site"]), str(r.get("state", "?")),
                          _when(ts) if isinstance(ts, (int, float)) else "?",
                          str(r.get("agent_version", "?")), r["verified"]])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if not rows:
        print(f"edge-agent: no agent status under {status_filter(args.prefix, args.site)}",
              file=sys.stderr)
        return 1
    return 0


# --- the command line --------------------------------------------------------------------------

def _signing_options(p: argparse.ArgumentParser, key_required: bool) -> None:
    p.add_argument("cmd", choices=sorted(HANDLERS), metavar="CMD",
                   nargs=None if key_required else "?",
                   help="; ".join(f"{n}: {h.help}" for n, h in sorted(HANDLERS.items())))
    p.add_argument("--args", metavar="JSON", help="the command's arguments, a JSON object")
    p.add_argument("--args-file", metavar="FILE", help="the arguments from a JSON file")
    p.add_argument("--model", metavar="MANIFEST", help="model_update: the manifest .json "
                                                       "(the .onnx next to it is embedded)")
    p.add_argument("--rollback", action="store_true",
                   help="model_update: allow a version not newer than the agent's")
    p.add_argument("--ttl", type=duration, default=3600.0, metavar="S",
                   help="validity: seconds or 90s, 15m, 2h, 7d (default 1h; agents accept "
                        "at most fleet.max_ttl_s, 7d by default)")
    p.add_argument("--key", required=key_required, metavar="FILE",
                   help="the operator's private key (from `fleet keygen`)")
    p.add_argument("--jti", help="the command's unique id (default: random)")


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST[:PORT] or mqtts://")
    p.add_argument("--ca", metavar="FILE", help="CA certificate(s) of the broker (PEM)")
    p.add_argument("--cert", metavar="FILE", help="client certificate (PEM)")
    p.add_argument("--keyfile", metavar="FILE", help="client certificate key (PEM)")
    p.add_argument("--username", metavar="USER")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--client-id", metavar="ID")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="mqtt.topic_prefix of the agents")
    p.add_argument("--site", metavar="SITE")
    p.add_argument("--device-key", nargs="+", action="extend", metavar="PUBKEY",
                   help="agents' public keys (`edge-agent keys show --json`, PEM, JWK Set) "
                        "to verify their documents with")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="operator side: sign and send commands, see agents")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    keygen = actions.add_parser("keygen", help="create an operator key pair")
    keygen.add_argument("--out", required=True, metavar="DIR")
    keygen.add_argument("--name", default="operator", help="file name stem (default operator)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=cmd_keygen)

    sign = actions.add_parser("sign", help="sign a command (for send, or for `edge-agent apply`)")
    _signing_options(sign, key_required=True)
    sign.add_argument("--aud", action="append", required=True, metavar="AUD",
                      help="agent id, site:SITE or * (repeat for several)")
    sign.add_argument("--out", metavar="FILE", help="write the token here instead of stdout")
    sign.set_defaults(func=cmd_sign)

    send = actions.add_parser("send", help="publish a command and wait for the results")
    _signing_options(send, key_required=False)
    send.add_argument("--token", metavar="FILE", help="send this signed token instead")
    send.add_argument("--aud", action="append", metavar="AUD",
                      help="default: the agent, site:SITE, or * for the fleet topic")
    send.add_argument("--agent", metavar="ID", help="one agent (needs --site)")
    send.add_argument("--expect", type=int, metavar="N", help="stop after N results")
    send.add_argument("--timeout", type=duration, default=30.0, metavar="S",
                      help="how long to wait for results (default 30 s)")
    _broker_options(send)
    send.set_defaults(func=cmd_send)

    status = actions.add_parser("status", help="the agents' retained status")
    status.add_argument("--wait", type=duration, default=2.0, metavar="S",
                        help="how long to collect status messages (default 2 s)")
    status.add_argument("--timeout", type=duration, default=10.0, metavar="S",
                        help="connection timeout")
    _broker_options(status)
    status.set_defaults(func=cmd_status)
