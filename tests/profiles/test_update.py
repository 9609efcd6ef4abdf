"""Signed profile bundles: accepted when signed by an operator key, refused otherwise."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.profiles import bundle
from edge_agent.profiles.match import ProfileSet, active_dir
from edge_agent.summary.sign import public_jwk

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "firmware_profiles"


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    for name in ("siemens-s7-300.toml", "rockwell-1756-enbt.toml"):
        (d / name).write_text((SHIPPED / name).read_text(encoding="utf-8"), encoding="utf-8")
    return d


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def keys_of(k: Ed25519PrivateKey) -> dict:
    return bundle.operator_keys({"fleet": {"operator_keys": [json.dumps(public_jwk(k.public_key()))]}})


def test_signed_bundle_installed_and_takes_precedence(src: Path, key, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert active_dir(state) != state / "firmware_profiles"
    assert bundle.install(bundle.make(src, 3, key), state, keys_of(key)) == 3
    assert (state / "firmware_profiles").is_symlink()
    assert active_dir(state) == state / "firmware_profiles"
    ps = ProfileSet.default(state)
    assert sorted(ps.profiles) == ["rockwell-1756-enbt", "siemens-s7-300"]
    assert bundle.installed_version(state) == 3
    # A newer one replaces it, and the old version directory goes.
    (src / "rockwell-1756-enbt.toml").unlink()
    assert bundle.install(bundle.make(src, 4, key), state, keys_of(key)) == 4
    assert sorted(ProfileSet.default(state).profiles) == ["siemens-s7-300"]
    assert not (state / "profiles.v3").exists()


def test_older_or_equal_version_refused(src: Path, key, tmp_path: Path) -> None:
    state = tmp_path / "state"
    bundle.install(bundle.make(src, 5, key), state, keys_of(key))
    for v in (5, 4):
        with pytest.raises(bundle.BundleError) as exc:
            bundle.install(bundle.make(src, v, key), state, keys_of(key))
        assert exc.value.reason == "old_version"
    assert bundle.installed_version(state) == 5


def test_tampered_file_refused(src: Path, key, tmp_path: Path) -> None:
    doc = json.loads(bundle.make(src, 1, key))
    doc["files"]["siemens-s7-300.toml"] = doc["files"]["siemens-s7-300.toml"].replace(
        'fixed = "V3.2.19"', 'fixed = "V3.2.1"')
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(json.dumps(doc), tmp_path / "state", keys_of(key))
    assert exc.value.reason == "tampered"
    doc = json.loads(bundle.make(src, 1, key))
    doc["files"]["extra.toml"] = "schema = 1\n"
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(json.dumps(doc), tmp_path / "state", keys_of(key))
    assert exc.value.reason == "tampered"
    # A manifest edited after signing (new hashes, higher version) fails the signature.
    doc = json.loads(bundle.make(src, 1, key))
    doc["manifest"] = doc["manifest"].replace('"version":1', '"version":99')
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(json.dumps(doc), tmp_path / "state", keys_of(key))
    assert exc.value.reason == "bad_signature"
    assert not (tmp_path / "state" / "firmware_profiles").exists()


def test_unsigned_or_unknown_key_refused(src: Path, key, tmp_path: Path) -> None:
    doc = json.loads(bundle.make(src, 1, key))
    doc["signature"] = ""
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(json.dumps(doc), tmp_path / "s", keys_of(key))
    assert exc.value.reason == "malformed"
    other = Ed25519PrivateKey.generate()
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(bundle.make(src, 1, other), tmp_path / "s", keys_of(key))
    assert exc.value.reason == "unknown_kid"
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(bundle.make(src, 1, key), tmp_path / "s", {})
    assert exc.value.reason == "no_keys"
    with pytest.raises(bundle.BundleError):
        bundle.install("not json", tmp_path / "s", keys_of(key))


def test_invalid_profiles_refused(src: Path, key, tmp_path: Path) -> None:
    p = src / "siemens-s7-300.toml"
    p.write_text(p.read_text(encoding="utf-8").replace("schema = 1", "schema = 7"),
                 encoding="utf-8")
    with pytest.raises(bundle.BundleError) as exc:
        bundle.install(bundle.make(src, 1, key), tmp_path / "state", keys_of(key))
    assert exc.value.reason == "invalid" and "schema" in str(exc.value)
    assert not (tmp_path / "state" / "firmware_profiles").exists()
    assert not [x for x in (tmp_path / "state").iterdir() if x.name.startswith(".profiles.")]


def test_cli_update(src: Path, key, tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main
    state = tmp_path / "state"
    pem = tmp_path / "operator.key"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    out = tmp_path / "bundle.json"
    assert main(["profiles", "bundle", str(src), "--version", "2", "--key", str(pem),
                 "--out", str(out)]) == 0
    # The [fleet] section may not be in the config schema yet: the command reads cfg.data.
    from edge_agent import config as config_mod
    cfg = config_mod.load().with_overrides({"agent.state_dir": str(state)})
    cfg.data["fleet"] = {"operator_keys": [str(pem)]}
    import edge_agent.cli as cli_mod
    real = cli_mod._config
    cli_mod._config = lambda args: cfg
    try:
        assert main(["profiles", "update", str(out)]) == 0
        assert main(["profiles", "update", str(out)]) == 1          # same version again
        assert "old_version" in capsys.readouterr().err
        assert main(["profiles", "show", "siemens-s7-300"]) == 0
        assert "siemens-s7-300" in capsys.readouterr().out
    finally:
        cli_mod._config = real
    assert os.path.realpath(state / "firmware_profiles").endswith("profiles.v2")
