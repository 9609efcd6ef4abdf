"""``edge-agent verify``: check signatures and the summary chain of a bundle, a spool or a list
of tokens, and say plainly whether everything is intact (exit 0) or what is not (exit 1).
"""
from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.summary.chain import ChainVerifier, Verdict
from edge_agent.summary.sign import KEY_FILE, load_public_keys
from edge_agent.tools import ToolError
from edge_agent.transport.export import BundleError, read_bundle

SQLITE_MAGIC = b"SQLite format 3\x00"


def _anchor(text: str) -> tuple[int, str]:
    m = re.fullmatch(r"(\d+):([0-9a-f]{64})", text)
    if not m:
        raise argparse.ArgumentTypeError("give SEQ:HASH (the hash is 64 hex digits)")
    return int(m[1]), m[2]


def _spool_tokens(path: Path) -> Iterator[str]:
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            for (doc,) in db.execute("SELECT doc FROM documents ORDER BY id"):
                yield doc
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ToolError(f"cannot read the spool {path}: {exc}") from None


def _line_tokens(path: Path) -> Iterator[str]:
    """Lines of raw tokens, JSON strings, or objects with a ``jws``/``token``/``doc`` member."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line[0] in '"{':
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = line
                if isinstance(obj, dict):
                    obj = next((obj[k] for k in ("jws", "token", "doc") if k in obj), line)
                line = obj if isinstance(obj, str) else line
            yield line


def check(path: Path, keys: dict[str, Ed25519PublicKey], anchor: tuple[int, str] | None) -> Verdict:
    if path.is_dir():
        path = path / "spool.sqlite"
        if not path.is_file():
            raise ToolError(f"{path.parent} holds no spool.sqlite")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None
    notes = []
    if magic == SQLITE_MAGIC:
        tokens, bundle = _spool_tokens(path), None
        notes.append("a spool keeps only its newest documents: the first summary in it is "
                     "taken as the start of the chain")
    else:
        try:
            bundle = read_bundle(path)
        except BundleError:
            bundle = None
        tokens = bundle.documents() if bundle else _line_tokens(path)
    if bundle is not None and not keys:
        keys = bundle.device_keys
        if not keys:
            raise ToolError("the bundle carries no usable key; give --key")
        notes.append(f"key taken from the bundle itself (kid {', '.join(keys)}): compare this "
                     "kid with the key enrolled for the agent, or give --key")
    elif not keys and (path.parent / KEY_FILE).is_file() and magic == SQLITE_MAGIC:
        keys = load_public_keys(path.parent / KEY_FILE)
        notes.append(f"key taken from the state directory itself (kid {', '.join(keys)}): "
                     "this checks the spool's integrity, not who wrote it")
    elif not keys:
        raise ToolError("give --key (the agent's public key: PEM, JWK or `keys show --json`)")
    verifier = ChainVerifier(keys, anchor)
    manifest = verifier.manifest(bundle.manifest_token) if bundle else None
    for token in tokens:
        verifier.feed(token)
    if bundle is not None and bundle.complete is False:
        verifier.problem("truncation", "the last line is cut short (no newline)", None,
                         verifier.index)
    verdict = verifier.finish(manifest, bundle.documents_sha256 if bundle else None)
    verdict.notes[:0] = notes
    return verdict


def cmd_verify(args: argparse.Namespace) -> int:
    keys: dict[str, Ed25519PublicKey] = {}
    for source in args.key or []:
        try:
            keys.update(load_public_keys(source))
        except ValueError as exc:
            raise ToolError(f"--key {source}: {exc}") from None
    verdict = check(Path(args.path), keys, args.anchor)
    if args.json:
        json.dump(verdict.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(verdict.render())
    return 0 if verdict.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check the signatures and the chain of exported documents")
    p.add_argument("path", metavar="PATH",
                   help="a bundle from `edge-agent export`, a spool (directory or .sqlite) or a "
                        "file of JWS tokens, one per line")
    p.add_argument("--key", action="append", metavar="PUBKEY",
                   help="trusted public key file (PEM, JWK, JWK Set); repeat for several")
    p.add_argument("--anchor", type=_anchor, metavar="SEQ:HASH",
                   help="the last summary checked before (printed by the previous verify)")
    p.add_argument("--json", action="store_true", help="machine-readable verdict")
    p.set_defaults(func=cmd_verify)
