"""Device key and JWS: RFC 8037 vectors, an independent JOSE library, and every refusal named."""
from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as jose_jws  # the independent JOSE implementation (test extra)
from joserfc.jwk import OKPKey

from edge_agent.summary.sign import (
    DeviceKey,
    KeyExists,
    VerifyError,
    b64url,
    b64url_decode,
    dumps,
    load_public_key,
    load_public_keys,
    public_jwk,
    sign_compact,
    thumbprint,
    verify,
)

# RFC 8037 Appendix A.1: the Ed25519 private key as a JWK.
RFC_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
# A.3: its RFC 7638 thumbprint.
RFC_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
# A.4: protected header {"alg":"EdDSA"}, payload "Example of Ed25519 signing".
RFC_JWS = ("eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
           "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg")

# joserfc flags EdDSA as deprecated by RFC 9864 (fully specified "Ed25519"); it still verifies.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


def rfc_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC_D))


@pytest.fixture
def key() -> DeviceKey:
    return DeviceKey(Ed25519PrivateKey.generate())


def test_rfc8037_a4_signature() -> None:
    assert sign_compact(rfc_key(), {"alg": "EdDSA"}, b"Example of Ed25519 signing") == RFC_JWS


def test_rfc8037_a3_thumbprint() -> None:
    assert thumbprint(RFC_X) == RFC_KID
    jwk = public_jwk(rfc_key().public_key())
    assert (jwk["x"], jwk["kid"], jwk["kty"], jwk["crv"]) == (RFC_X, RFC_KID, "OKP", "Ed25519")
    assert DeviceKey(rfc_key()).kid == RFC_KID


def test_rfc_vector_verifies_with_joserfc() -> None:
    pub = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": RFC_X})
    assert jose_jws.deserialize_compact(RFC_JWS, pub, algorithms=["EdDSA"]).payload == \
        b"Example of Ed25519 signing"


def test_our_token_verifies_with_joserfc(key: DeviceKey) -> None:
    payload = dumps({"seq": 1, "site": "Zürich-Süd", "note": "ü€"})
    token = key.sign(payload)
    pub = OKPKey.import_key(key.public_jwk())
    obj = jose_jws.deserialize_compact(token, pub, algorithms=["EdDSA"])
    assert obj.payload == payload                      # the exact bytes signed
    assert obj.protected == {"alg": "EdDSA", "kid": key.kid}
    assert pub.thumbprint() == key.kid                 # same RFC 7638 thumbprint


def test_joserfc_token_verifies_here(key: DeviceKey) -> None:
    priv = OKPKey.import_key(key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    token = jose_jws.serialize_compact({"alg": "EdDSA", "kid": key.kid}, b"{\"a\":1}", priv,
                                       algorithms=["EdDSA"])
    header, payload = verify(token, {key.kid: key.public})
    assert payload == b'{"a":1}' and header["kid"] == key.kid


def test_sign_round_trip_keeps_bytes(key: DeviceKey) -> None:
    payload = dumps({"b": 2, "a": [1, "ä"]})
    assert payload == '{"b":2,"a":[1,"ä"]}'.encode()
    header, got = verify(key.sign(payload, typ="JOSE"), {key.kid: key.public})
    assert got == payload and header == {"alg": "EdDSA", "kid": key.kid, "typ": "JOSE"}


def _reason(token: str, keys: dict) -> str:
    with pytest.raises(VerifyError) as err:
        verify(token, keys)
    return err.value.reason


def test_refusals_are_named(key: DeviceKey) -> None:
    keys = {key.kid: key.public}
    token = key.sign(b'{"seq":1}')
    h, p, s = token.split(".")
    other = key.sign(b'{"seq":2}')
    forged = b64url(b'{"seq":9}')
    assert _reason(f"{h}.{forged}.{s}", keys) == "bad_signature"                   # tampered
    assert _reason(f"{h}.{p}.{other.split('.')[2]}", keys) == "bad_signature"       # swapped
    none = b64url(dumps({"alg": "none", "kid": key.kid}))
    assert _reason(f"{none}.{p}.", keys) == "unsupported_alg"
    hs = b64url(dumps({"alg": "HS256", "kid": key.kid}))
    assert _reason(f"{hs}.{p}.{s}", keys) == "unsupported_alg"
    stranger = DeviceKey(Ed25519PrivateKey.generate())
    assert _reason(stranger.sign(b"{}"), keys) == "unknown_kid"
    assert _reason(sign_compact(key.private, {"alg": "EdDSA"}, b"{}"), keys) == "bad_header"
    crit = sign_compact(key.private, {"alg": "EdDSA", "kid": key.kid, "crit": ["exp"]}, b"{}")
    assert _reason(crit, keys) == "bad_header"
    assert _reason(f"{h}.{p}", keys) == "malformed"
    assert _reason(f"{h}.{p}.{s}=", keys) == "malformed"                # padding
    assert _reason(f"{h}.{p}.{s[:-1]}{chr(ord(s[-1]) ^ 1)}", keys) in ("malformed", "bad_signature")
    assert _reason(f"{b64url(b'not json')}.{p}.{s}", keys) == "malformed"
    assert _reason(f"{h}.{p}.{s[:20]}", keys) == "bad_signature"        # short signature


def test_one_spelling_per_token() -> None:
    # 'Zg' is b"f"; 'Zh' decodes to the same byte with a stray low bit set.
    assert b64url_decode("Zg") == b"f"
    for bad in ("Zh", "Zg==", "Z+", "Z/", "Z g"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_key_file_mode_and_no_overwrite(tmp_path) -> None:
    path = tmp_path / "state" / "device.key"
    key = DeviceKey.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    before = path.read_bytes()
    with pytest.raises(KeyExists):
        DeviceKey.create(path)
    assert path.read_bytes() == before
    assert DeviceKey.load(path).kid == key.kid
    new = DeviceKey.create(path, force=True)
    assert new.kid != key.kid and DeviceKey.load(path).kid == new.kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["device.key"]   # no temp left


def test_key_created_0600_despite_permissive_umask(tmp_path) -> None:
    import os
    old = os.umask(0)
    try:
        DeviceKey.create(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_load_public_key_accepts_pem_jwk_jwks(tmp_path, key: DeviceKey) -> None:
    jwk = key.public_jwk()
    shown = {"keys": [jwk], "kid": key.kid, "pem": key.public_pem()}
    sources = [key.public_pem(), json.dumps(jwk), json.dumps({"keys": [jwk]}), json.dumps(shown),
               json.dumps({"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]})]
    for text in sources:
        kid, pub = load_public_key(text)
        assert kid == key.kid
        verify(key.sign(b"{}"), {kid: pub})
    path = tmp_path / "pub.pem"
    path.write_text(key.public_pem())
    assert load_public_key(path)[0] == key.kid and load_public_key(str(path))[0] == key.kid
    priv = tmp_path / "device.key"
    DeviceKey.create(priv)
    assert load_public_key(priv)[0] == DeviceKey.load(priv).kid


def test_load_public_key_refuses(tmp_path, key: DeviceKey) -> None:
    bad_kid = dict(key.public_jwk(), kid="mine")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    two = {"keys": [key.public_jwk(), DeviceKey(Ed25519PrivateKey.generate()).public_jwk()]}
    for text in (json.dumps(bad_kid), ec_pem, json.dumps({"kty": "EC"}), "{", str(tmp_path / "x"),
                 json.dumps(two)):
        with pytest.raises(ValueError):
            load_public_key(text)
    assert len(load_public_keys(json.dumps(two))) == 2
