"""Signed profile bundles: an operator ships new firmware profiles to air-gapped gateways.

A bundle is one JSON file::

    {"manifest": "<the exact manifest JSON that was signed>",
     "signature": "<JWS compact, EdDSA, payload = the manifest bytes>",
     "files": {"siemens-s7-300.toml": "<file text>", ...}}

The manifest is ``{"type": "edge-agent.firmware_profiles", "version": N, "files":
{name: sha256-hex}}``. The signature must verify against one of ``[fleet] operator_keys``; the
version must be above the installed one; every file must be listed with its hash, and the set
must validate. It is installed into ``<state_dir>/profiles.v<N>`` and
``<state_dir>/firmware_profiles`` is switched to it with one rename of a symlink, so a reader
sees the old set or the new one, never half of each; that directory then takes precedence over
the shipped profiles.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge_agent.profiles import schema
from edge_agent.profiles.match import STATE_SUBDIR
from edge_agent.summary import sign

BUNDLE_TYPE = "edge-agent.firmware_profiles"
JWS_TYP = "edge-agent-profiles+jws"
INSTALLED_MANIFEST = "bundle-manifest.json"
FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*\.(toml|md)$")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024      # a bundle is read whole; the shipped set is ~2 MB


class BundleError(Exception):
    """A bundle that must not be installed; ``reason`` is a stable name for tests and counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make(directory: str | Path, version: int, key: Ed25519PrivateKey) -> str:
    """A bundle of every profile (and unmapped.toml, README.md) in ``directory``, signed."""
    directory = Path(directory)
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())
             if p.is_file() and FILE_NAME.match(p.name)}
    manifest = {"type": BUNDLE_TYPE, "version": int(version),
                "files": {n: _sha256(t) for n, t in sorted(files.items())}}
    payload = sign.dumps(manifest)
    header = {"alg": sign.JWS_ALG, "kid": sign.kid_of(key.public_key()), "typ": JWS_TYP}
    token = sign.sign_compact(key, header, payload)
    return json.dumps({"manifest": payload.decode("utf-8"), "signature": token, "files": files},
                      indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def operator_keys(cfg_data: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The keys of ``[fleet] operator_keys``: file names or key texts (PEM, JWK, JWK Set)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for i, source in enumerate(cfg_data.get("fleet", {}).get("operator_keys", []) or []):
        try:
            keys.update(sign.load_public_keys(source))
        except ValueError as exc:
            raise BundleError("bad_key", f"fleet.operator_keys[{i}]: {exc}") from None
    return keys


def installed_version(state_dir: str | Path) -> int:
    path = Path(state_dir) / STATE_SUBDIR / INSTALLED_MANIFEST
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def verify(text: str, keys: dict[str, Ed25519PublicKey], current: int = 0
           ) -> tuple[dict[str, Any], dict[str, str]]:
    """``(manifest, files)`` of a bundle that may be installed, or BundleError."""
    try:
        doc = json.loads(text)
        manifest_text, token, files = doc["manifest"], doc["signature"], doc["files"]
    except (ValueError, KeyError, TypeError):
        raise BundleError("malformed", "not a profiles bundle (manifest, signature, files)") \
            from None
    if not isinstance(manifest_text, str) or not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BundleError("malformed", "manifest must be a string, files a table of texts")
    if not keys:
        raise BundleError("no_keys", "no operator key configured ([fleet] operator_keys)")
    try:
        header, payload = sign.verify(token, keys)
    except sign.VerifyError as exc:
        raise BundleError(exc.reason, str(exc)) from None
    if payload != manifest_text.encode("utf-8"):
        raise BundleError("bad_signature", "the signature is over another manifest")
    try:
        manifest = json.loads(payload)
    except ValueError:
        raise BundleError("malformed", "manifest is not JSON") from None
    if manifest.get("type") != BUNDLE_TYPE:
        raise BundleError("malformed", f"manifest type {manifest.get('type')!r}")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise BundleError("malformed", f"manifest version {version!r}")
    if version <= current:
        raise BundleError("old_version", f"bundle version {version} is not above the installed "
                          f"version {current}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or set(listed) != set(files):
        raise BundleError("tampered", "the files are not the ones the manifest lists")
    for name, text in files.items():
        if not FILE_NAME.match(name):
            raise BundleError("malformed", f"file name {name!r} not allowed")
        if _sha256(text) != listed[name]:
            raise BundleError("tampered", f"{name}: sha256 differs from the manifest")
    return manifest, files


def install(text: str, state_dir: str | Path, keys: dict[str, Ed25519PublicKey]) -> int:
    """Verify and install a bundle; returns the version now active."""
    state = Path(state_dir)
    manifest, files = verify(text, keys, installed_version(state))
    version = manifest["version"]
    state.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".profiles.", dir=state))
    try:
        for name, content in sorted(files.items()):
            (stage / name).write_text(content, encoding="utf-8")
        (stage / INSTALLED_MANIFEST).write_text(
            json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        count, errors = schema.validate_dir(stage)
        if errors:
            raise BundleError("invalid", f"{errors[0]}" + (f" (and {len(errors) - 1} more)"
                                                           if len(errors) > 1 else ""))
        if count == 0:
            raise BundleError("invalid", "the bundle holds no profile")
        for p in stage.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        final = state / f"profiles.v{version}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(stage, final)
        link = state / STATE_SUBDIR
        tmp_link = state / f".{STATE_SUBDIR}.{os.getpid()}.tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(final.name, tmp_link)
        if link.exists() and not link.is_symlink():
            # A directory from elsewhere: keep it aside rather than delete it.
            os.rename(link, state / f"{STATE_SUBDIR}.replaced")
        previous = os.path.realpath(link) if link.is_symlink() else None
        os.replace(tmp_link, link)
        _fsync_dir(state)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if previous and Path(previous) != final.resolve() and Path(previous).parent == state.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    return version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
