"""``edge-agent keys``: the device's Ed25519 signing key (``<state_dir>/device.key``).

``keys init`` creates it once (``--force`` replaces it, after which the centre must enrol the
new public key); ``keys show`` prints the public half to enrol: kid, JWK and PEM, or with
``--json`` a JWK Set that also carries ``kid`` and ``pem`` (``edge-agent verify --key`` and any
JOSE library read it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_agent.cli import _config
from edge_agent.summary.sign import KEY_FILE, DeviceKey, DeviceKeyError
from edge_agent.tools import ToolError


def key_path(args: argparse.Namespace) -> Path:
    return Path(_config(args)["agent"]["state_dir"]) / KEY_FILE


def load_key(args: argparse.Namespace) -> DeviceKey:
    try:
        return DeviceKey.load(key_path(args))
    except DeviceKeyError as exc:
        raise ToolError(str(exc)) from None


def cmd_init(args: argparse.Namespace) -> int:
    path = key_path(args)
    try:
        key = DeviceKey.create(path, force=args.force)
    except DeviceKeyError as exc:
        raise ToolError(str(exc)) from None
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc}") from None
    print(f"{'replaced' if args.force else 'created'} {path}\nkid: {key.kid}\n"
          "enrol the public key at the centre: edge-agent keys show --json")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    key = load_key(args)
    jwk = key.public_jwk()
    if args.json:
        print(json.dumps({"keys": [jwk], "kid": key.kid, "pem": key.public_pem()}, indent=2))
    else:
        print(f"kid: {key.kid}\njwk: {json.dumps(jwk)}\n{key.public_pem()}", end="")
    return 0


def add_state_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration (see `edge-agent config`)")
    p.add_argument("--state-dir", metavar="DIR", help="state directory (spool, keys)")


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="the device signing key")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create the device key (Ed25519, mode 0600)")
    add_state_options(init)
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.set_defaults(func=cmd_init)
    show = actions.add_parser("show", help="print the public key to enrol: kid, JWK, PEM")
    add_state_options(show)
    show.add_argument("--json", action="store_true", help="a JWK Set with kid and pem added")
    show.set_defaults(func=cmd_show)
