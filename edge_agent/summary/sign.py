"""The device identity and the signed documents it emits: JWS compact serialization, EdDSA.

- RFC 7515 (JWS) section 7.1: ``BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(sig)``,
  the signature taken over the ASCII of the first two parts as they stand in the token.
- RFC 8037 (CFRG curves in JOSE): ``alg: EdDSA`` with an Ed25519 key, JWK ``kty: OKP``.
- RFC 7638 (JWK thumbprint): ``kid`` is SHA-256 over ``{"crv","kty","x"}`` in that order, no
  spaces, base64url without padding, so any party can recompute it from the public key alone.

The payload is bytes: the exact UTF-8 JSON that was signed is what travels and what a verifier
hands back, so nobody re-serialises an object and gets a different signature. Decoding is strict
(no padding, no characters outside the alphabet, no stray bits in the last character): a token
has exactly one spelling, so comparing token hashes finds duplicates and chain links reliably.

RFC 9864 deprecates ``EdDSA`` in favour of the fully specified ``Ed25519``; this module keeps
``EdDSA`` because it is what the deployed JOSE libraries verify today.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

KEY_FILE = "device.key"     # under agent.state_dir
JWS_ALG = "EdDSA"           # RFC 8037 section 3.1
ED25519_SIG_LEN = 64        # RFC 8032 section 5.1.6
ED25519_KEY_LEN = 32


class DeviceKeyError(Exception):
    """The device key cannot be created or read; the message says what to do."""


class KeyExists(DeviceKeyError, FileExistsError):
    pass


class VerifyError(Exception):
    """A token that must not be trusted; ``reason`` is a stable name for counting and tests."""

    REASONS = ("malformed", "bad_header", "unsupported_alg", "unknown_kid", "bad_signature")

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def dumps(obj: Any) -> bytes:
    """The compact UTF-8 JSON that gets signed."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2); ValueError on any other spelling."""
    if len(text) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64url: {exc}") from None
    if b64url(data) != text:      # '=' or '+/' given, or stray bits in the last character
        raise ValueError("not canonical base64url")
    return data


def thumbprint(x: str) -> str:
    """RFC 7638 section 3 thumbprint of an Ed25519 public key given as its JWK ``x``."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"),
                           sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    x = b64url(_raw_public(key))
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": thumbprint(x), "alg": JWS_ALG,
            "use": "sig"}


def kid_of(key: Ed25519PublicKey) -> str:
    return thumbprint(b64url(_raw_public(key)))


def sign_compact(key: Ed25519PrivateKey, header: dict[str, Any], payload: bytes) -> str:
    """JWS compact serialization of ``payload`` under the protected ``header`` as given."""
    signing_input = f"{b64url(dumps(header))}.{b64url(payload)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode('ascii')))}"


class DeviceKey:
    """The agent's Ed25519 signing key, kept as unencrypted PKCS#8 PEM, mode 0600."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.kid = kid_of(self.public)

    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> DeviceKey:
        """Make a new key at ``path``; an existing key is kept unless ``force``.

        The key is written to a temporary file first and then linked (or, with ``force``,
        renamed) into place, so a crash leaves the old key or the whole new one, never half.
        """
        path = Path(path)
        if path.exists() and not force:
            raise KeyExists(f"{path} already exists; keep it, or replace it with --force "
                            "(the centre must then enrol the new key)")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls(Ed25519PrivateKey.generate())
        pem = key.private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)        # the umask may have taken more than it should
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            if force:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)      # atomic, and refuses an existing name
                except FileExistsError:
                    raise KeyExists(f"{path} already exists; keep it, or replace it with "
                                    "--force") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return key

    @classmethod
    def load(cls, path: str | Path) -> DeviceKey:
        path = Path(path)
        try:
            data = path.read_bytes()
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise DeviceKeyError(f"no device key at {path}; create one with "
                                 "`edge-agent keys init`") from None
        except OSError as exc:
            raise DeviceKeyError(f"cannot read the device key {path}: {exc}") from None
        if mode & 0o077:
            log.warning("%s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise DeviceKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise DeviceKeyError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
        return cls(private)

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.public)

    def public_pem(self) -> str:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, payload: bytes, typ: str | None = None) -> str:
        """JWS compact serialization of exactly ``payload``, header ``{"alg","kid"[,"typ"]}``."""
        header: dict[str, str] = {"alg": JWS_ALG, "kid": self.kid}
        if typ:
            header["typ"] = typ
        return sign_compact(self.private, header, payload)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_from_jwk(jwk: Any) -> tuple[str, Ed25519PublicKey]:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 JWK (needs kty OKP, crv Ed25519)")
    x = jwk.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if not isinstance(x, str) or len(raw) != ED25519_KEY_LEN:
        raise ValueError("JWK x is not a base64url Ed25519 public key")
    kid = thumbprint(x)
    if "kid" in jwk and jwk["kid"] != kid:
        raise ValueError(f"JWK kid {jwk['kid']!r} is not its RFC 7638 thumbprint {kid}")
    return kid, Ed25519PublicKey.from_public_bytes(raw)


def load_public_keys(source: str | Path) -> dict[str, Ed25519PublicKey]:
    """Every key in ``source``: a file name, or the text of a PEM public (or private) key, a
    JWK, a JWK Set or ``edge-agent keys show --json`` output. Keys are by RFC 7638 kid."""
    text = str(source) if not isinstance(source, Path) else ""
    if not text.lstrip().startswith(("-----BEGIN", "{")):
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read key file {source}: {exc}") from None
    text = text.strip()
    if text.startswith("-----BEGIN"):
        data = text.encode("ascii", "replace")
        try:
            if b"PRIVATE KEY" in data.split(b"\n", 1)[0]:
                key: Any = serialization.load_pem_private_key(data, password=None).public_key()
            else:
                key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"PEM holds a {type(key).__name__}, not an Ed25519 key")
        return {kid_of(key): key}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"neither PEM nor JSON: {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("jwk"), dict):
        obj = obj["jwk"]                                   # `keys show --json`
    jwks = obj["keys"] if isinstance(obj, dict) and isinstance(obj.get("keys"), list) else [obj]
    keys = dict(_key_from_jwk(j) for j in jwks)
    if not keys:
        raise ValueError("the JWK Set holds no key")
    return keys


def load_public_key(source: str | Path) -> tuple[str, Ed25519PublicKey]:
    """The one key in ``source`` (see :func:`load_public_keys`) as ``(kid, key)``."""
    keys = load_public_keys(source)
    if len(keys) != 1:
        raise ValueError(f"expected one key, found {len(keys)}")
    return next(iter(keys.items()))


def split(token: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """Header, payload, signature and signing input of a compact JWS, *not* verified."""
    if not isinstance(token, str) or not token.isascii():
        raise VerifyError("malformed", "not an ASCII string")
    parts = token.split(".")
    if len(parts) != 3:
        raise VerifyError("malformed", f"{len(parts)} dot-separated parts, not 3")
    try:
        raw_header, payload, sig = (b64url_decode(p) for p in parts)
    except ValueError as exc:
        raise VerifyError("malformed", str(exc)) from None
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise VerifyError("malformed", "header is not JSON") from None
    if not isinstance(header, dict):
        raise VerifyError("bad_header", "header is not a JSON object")
    return header, payload, sig, f"{parts[0]}.{parts[1]}".encode("ascii")


def claims(token: str) -> dict[str, Any]:
    """The JSON payload of a token, *not* verified: for reading one's own spool."""
    return json.loads(split(token)[1])


def verify(token: str, keys: dict[str, Ed25519PublicKey]) -> tuple[dict[str, Any], bytes]:
    """``(header, payload)`` of a token signed by one of ``keys`` (by kid), or VerifyError."""
    header, payload, sig, signing_input = split(token)
    alg = header.get("alg")
    if alg != JWS_ALG:
        raise VerifyError("unsupported_alg", f"alg {alg!r}; only {JWS_ALG} is accepted")
    if "crit" in header:      # RFC 7515 section 4.1.11: no extension is understood here
        raise VerifyError("bad_header", f"crit {header['crit']!r} not understood")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise VerifyError("bad_header", "no kid")
    key = keys.get(kid)
    if key is None:
        raise VerifyError("unknown_kid", f"kid {kid}")
    if len(sig) != ED25519_SIG_LEN:
        raise VerifyError("bad_signature", f"{len(sig)}-byte signature")
    try:
        key.verify(sig, signing_input)
    except InvalidSignature:
        raise VerifyError("bad_signature", f"kid {kid}") from None
    return header, payload


def token_hash(token: str) -> str:
    """Hex SHA-256 of a token's ASCII: what a summary's ``prev`` holds."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
