"""The model: the shipped autoencoder loads and explains, a mismatched or tampered one is refused,
scoring is one batched single-threaded run, site fitting, and reproducible training."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.config import load
from edge_agent.features.extract import FEATURE_NAMES, FEATURE_VERSION, INDEX, ChannelVector
from edge_agent.model.scorer import (
    MARGIN,
    QUANTILE,
    STD_FLOOR,
    Manifest,
    ModelError,
    Scaler,
    Scorer,
    Threshold,
    describe_feature_difference,
)
from tests.conftest import PCAPS, ROOT

MODEL = ROOT / "models" / "edge-ae-v1.json"
MODBUS = PCAPS / "modbus" / "modbus_modbus.pcap"
PLANT = ROOT / "models" / "training" / "plant-normal.pcap"

needs_model = pytest.mark.skipif(not MODEL.exists(), reason=f"{MODEL} is not there")


def vectors(path: Path, window: float = 10.0) -> list[ChannelVector]:
    out: list[ChannelVector] = []
    cfg = load().with_overrides({"summary.window_s": window})
    Pipeline(cfg, on_window=out.extend).run(FileSource([str(path)]))
    return out


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    if not MODEL.exists():
        pytest.skip(f"{MODEL} is not there")
    return Scorer.load(MODEL)


@pytest.fixture(scope="module")
def normal() -> list[ChannelVector]:
    path = PLANT if PLANT.exists() else MODBUS
    if not path.exists():
        pytest.skip("no normal capture (models/training or ../shared/fixtures)")
    return vectors(path)


def copy_model(tmp_path: Path, **changes: Any) -> Path:
    """The shipped model in ``tmp_path``, its manifest changed by ``changes``."""
    data = json.loads(MODEL.read_text())
    shutil.copy(MODEL.parent / data["onnx_file"], tmp_path / data["onnx_file"])
    data.update(changes)
    out = tmp_path / MODEL.name
    out.write_text(json.dumps(data))
    return out


class CountingSession:
    """Wraps an onnxruntime session and records every run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runs: list[dict[str, np.ndarray]] = []

    def run(self, outputs: Any, feeds: dict[str, np.ndarray], *args: Any) -> Any:
        self.runs.append(feeds)
        return self.inner.run(outputs, feeds, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@needs_model
def test_shipped_model_loads_and_scores_a_fixture_capture(scorer: Scorer) -> None:
    if not MODBUS.exists():
        pytest.skip("../shared/fixtures is not there")
    m = scorer.manifest
    assert m.feature_names == FEATURE_NAMES and m.feature_version == FEATURE_VERSION
    assert (m.name, m.version) == ("edge-ae", 1)
    assert m.trained_on["windows"] > 0 and m.trained_on["captures"]
    assert set(m.expected) == set(FEATURE_NAMES)
    vs = vectors(MODBUS)
    scores = scorer.score(vs)
    assert len(scores) == len(vs) > 0
    for v, s in zip(vs, scores):
        assert s.key == v.key and np.isfinite(s.score) and s.score >= 0
        assert s.threshold == m.threshold.value and s.anomalous == (s.score > s.threshold)
        assert len(s.top) == 3
    # The same vectors as an array score the same, without keys.
    again = scorer.score(np.asarray([v.values for v in vs]))
    assert [a.score for a in again] == [s.score for s in scores] and again[0].key is None
    assert scorer.score([]) == []


@needs_model
def test_a_normal_plant_window_scores_below_the_threshold(scorer: Scorer,
                                                           normal: list[ChannelVector]) -> None:
    scores = scorer.score(normal)
    assert sum(s.anomalous for s in scores) <= max(1, len(scores) // 100)


@needs_model
@pytest.mark.parametrize("change, named", [
    (lambda names: [names[1], names[0], *names[2:]], "another order: req_rate_log at 0"),
    (lambda names: [*names[:3], "iat_mean", *names[4:]], "missing iat_mean_log"),
    (lambda names: names[:-1], "missing rate_dev"),
    (lambda names: [*names, "bytes_per_s"], "unknown to the agent bytes_per_s"),
])
def test_a_manifest_with_other_features_is_refused(tmp_path: Path, change: Any,
                                                   named: str) -> None:
    path = copy_model(tmp_path, feature_names=change(list(FEATURE_NAMES)))
    with pytest.raises(ModelError, match="built for other features") as err:
        Scorer.load(path)
    assert named in str(err.value) and str(path) in str(err.value)


@needs_model
@pytest.mark.parametrize("version", [FEATURE_VERSION - 1, FEATURE_VERSION + 1])
def test_a_manifest_of_another_feature_version_is_refused(tmp_path: Path, version: int) -> None:
    """Same feature names, another meaning (version 1 computed rate_dev against a mean rate
    that followed every burst): refused, saying which model and both versions."""
    path = copy_model(tmp_path, feature_version=version)
    with pytest.raises(ModelError, match=re.escape(
            f"{path}: model edge-ae v1 was built for other features: feature_version is "
            f"{version}, the agent computes version {FEATURE_VERSION}")):
        Scorer.load(path)


@needs_model
def test_a_tampered_onnx_file_is_refused(tmp_path: Path) -> None:
    path = copy_model(tmp_path)
    onnx = tmp_path / "edge-ae-v1.onnx"
    blob = bytearray(onnx.read_bytes())
    blob[-5] ^= 0x01                    # one bit of a weight
    onnx.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256 .* does not match the manifest's onnx_sha256"):
        Scorer.load(path)


@needs_model
def test_broken_manifests_name_what_is_wrong(tmp_path: Path) -> None:
    path = copy_model(tmp_path)
    data = json.loads(path.read_text())
    del data["scaler"]["scale"]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="scaler.scale is missing"):
        Scorer.load(path)
    path = copy_model(tmp_path, input_name="x")
    with pytest.raises(ModelError, match="the manifest names input 'x'"):
        Scorer.load(path)
    path = copy_model(tmp_path, onnx_file="gone.onnx")
    with pytest.raises(ModelError, match="cannot read"):
        Scorer.load(path)
    path.write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        Scorer.load(path)


def test_feature_differences_in_words() -> None:
    names = list(FEATURE_NAMES)
    assert describe_feature_difference(names[::-1], names).count(" at ") == 6
    assert "missing msg_rate_log; unknown to the agent rate" in \
        describe_feature_difference(["rate", *names[1:]], names)


@needs_model
def test_scoring_is_one_batched_run(scorer: Scorer, normal: list[ChannelVector]) -> None:
    batch = (normal * (1000 // len(normal) + 1))[:1000]
    counted = CountingSession(scorer.session)
    wrapped = Scorer(scorer.manifest, counted)
    scores = wrapped.score(batch)
    assert len(scores) == 1000
    assert len(counted.runs) == 1
    (feed,) = counted.runs[0].values()
    assert feed.shape == (1000, len(FEATURE_NAMES)) and feed.dtype == np.float32
    # A site scorer shares the session: still one run per call.
    site = wrapped.with_site(*wrapped.fit_site(normal))
    site.score(batch)
    assert len(counted.runs) == 3      # fit_site's one + score's one


@needs_model
def test_single_threaded_cpu_by_default(scorer: Scorer) -> None:
    opts = scorer.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert scorer.session.get_providers() == ["CPUExecutionProvider"]
    two = Scorer.load(MODEL, threads=2).session.get_session_options()
    assert (two.intra_op_num_threads, two.inter_op_num_threads) == (2, 2)


@needs_model
def test_explanations_name_features_with_observed_and_expected_values(
        scorer: Scorer, normal: list[ChannelVector]) -> None:
    base = max(normal, key=lambda v: v.messages)
    values = list(base.values)
    # A read-only polling channel that suddenly writes and stops the PLC.
    values[INDEX["read_frac"]], values[INDEX["write_frac"]] = 0.2, 0.5
    values[INDEX["control_frac"]] = 0.3
    odd = ChannelVector(base.key, tuple(values), base.messages, base.flow_ids)
    s_base, s_odd = scorer.score([base, odd])
    assert not s_base.anomalous
    assert s_odd.anomalous and s_odd.score > 10 * s_base.score
    names = [c.feature for c in s_odd.top]
    assert "control_frac" in names and set(names) <= set(FEATURE_NAMES)
    assert [c.contribution for c in s_odd.top] == sorted((c.contribution for c in s_odd.top),
                                                         reverse=True)
    assert 0 < sum(c.contribution for c in s_odd.top) <= 1.0 + 1e-9
    ctrl = next(c for c in s_odd.top if c.feature == "control_frac")
    assert ctrl.observed == 0.3
    # "expected" is the reconstruction in raw units, computed here independently.
    m = scorer.manifest
    xs = (np.asarray(values) - m.scaler.mean) / m.scaler.scale
    recon = scorer.session.run([m.output_name], {m.input_name: xs[None].astype(np.float32)})[0][0]
    j = INDEX["control_frac"]
    raw = recon[j] * m.scaler.scale[j] + m.scaler.mean[j]
    lo, hi = m.expected["control_frac"]["min"], m.expected["control_frac"]["max"]
    assert ctrl.expected == pytest.approx(min(max(raw, lo), hi), rel=1e-5, abs=1e-9)
    assert lo <= ctrl.expected < 0.1
    doc = s_odd.as_dict()
    assert doc["anomalous"] is True and doc["top"][0]["feature"] == names[0]
    assert set(doc["top"][0]) == {"feature", "observed", "expected", "contribution"}


@needs_model
def test_site_fitting_sets_a_threshold_few_fitting_windows_exceed(
        scorer: Scorer, normal: list[ChannelVector]) -> None:
    rng = np.random.default_rng(7)
    base = np.asarray([v.values for v in normal])
    # 5000 site windows: the plant's, with the jitter of a real site's counters.
    site = base[rng.integers(0, len(base), 5000)]
    site = site + rng.normal(0, 0.02, site.shape) * (site != 0)
    for q, margin in ((0.999, 0.0), (0.999, 0.25), (0.99, 0.1)):
        scaler, threshold = scorer.fit_site(site, q=q, margin=margin)
        assert (threshold.policy, threshold.q, threshold.margin) == ("quantile", q, margin)
        fitted = scorer.with_site(scaler, threshold)
        assert fitted.threshold is threshold and fitted.scaler is scaler
        assert fitted.manifest is scorer.manifest
        scores = np.asarray([s.score for s in fitted.score(site)])
        assert (scores > threshold.value).mean() <= 1 - q
        base_q = np.quantile(scores, q, method="higher")
        assert threshold.value == pytest.approx(base_q * (1 + margin))
    assert fitted.describe()["calibration"] == "site"
    assert scorer.describe()["calibration"] == "prebuilt"
    assert scaler.mean == pytest.approx(tuple(site.mean(axis=0)))
    # A feature the site never varies gets the floor, not a zero scale.
    assert scaler.scale[INDEX["control_frac"]] == STD_FLOOR
    assert min(scaler.scale) >= STD_FLOOR


@needs_model
def test_one_threshold_policy_for_the_prebuilt_model_and_site_calibration(
        scorer: Scorer, normal: list[ChannelVector]) -> None:
    shipped = scorer.manifest.threshold
    assert (shipped.policy, shipped.q, shipped.margin) == ("quantile", QUANTILE, MARGIN)
    assert MARGIN == 0.4
    _, site = scorer.fit_site(normal)
    assert (site.policy, site.q, site.margin) == ("quantile", QUANTILE, MARGIN)


def test_scaler_and_threshold_fits() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    assert Scaler.fit(x) == Scaler((2.0, 5.0), (1.0, STD_FLOOR))
    t = Threshold.fit(np.arange(1, 1001, dtype=float), q=0.999, margin=0.5)
    assert t.value == 1000 * 1.5 and (np.arange(1, 1001) > t.value).sum() == 0
    with pytest.raises(ValueError):
        Threshold.fit(np.array([]))


@needs_model
def test_inputs_are_checked_and_non_finite_values_still_score(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="expected vectors of 24 features"):
        scorer.score(np.zeros((2, 23)))
    row = np.zeros(len(FEATURE_NAMES))
    row[INDEX["msg_rate_log"]] = np.inf
    (s,) = scorer.score(row)
    assert np.isfinite(s.score) and s.anomalous


def test_manifest_round_trip() -> None:
    if not MODEL.exists():
        pytest.skip(f"{MODEL} is not there")
    data = json.loads(MODEL.read_text())
    assert Manifest.from_dict(data).to_dict() == data


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None,
                    reason="the train extra is not installed (pip install -e '.[train]')")
def test_training_is_reproducible(tmp_path: Path) -> None:
    captures = [PCAPS / "modbus" / "modbus_modbus.pcap", PCAPS / "dnp3" / "dnp3_example.pcap"]
    if not all(p.exists() for p in captures):
        pytest.skip("../shared/fixtures is not there")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        proc = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "train"), "--out", str(out), "--captures",
             *map(str, captures), "--epochs", "20", "--seed", "3", "--no-sanity"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "threshold:" in proc.stdout and "held-out" in proc.stdout
        outs.append(out)
    a, b = outs
    assert (a / "edge-ae-v1.onnx").read_bytes() == (b / "edge-ae-v1.onnx").read_bytes()
    assert (a / "edge-ae-v1.json").read_bytes() == (b / "edge-ae-v1.json").read_bytes()
    trained = Scorer.load(a / "edge-ae-v1.json")
    assert trained.manifest.extra["training"]["epochs"] == 20
    files = [c["file"] for c in trained.manifest.trained_on["captures"]]
    assert [Path(f).name for f in files] == [p.name for p in captures]
    assert len(trained.score(vectors(captures[0]))) > 0


@pytest.mark.skipif(importlib.util.find_spec("pymodbus") is None, reason="pymodbus is not installed")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="capturing on lo and ports 102/502/2404 need root")
def test_gen_plant_traffic_makes_a_capture_of_real_stacks(tmp_path: Path) -> None:
    out = tmp_path / "plant.pcap"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-plant-traffic"),
                           "--seconds", "4", "--seed", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["generator"] == "scripts/gen-plant-traffic --seconds 4 --seed 2"
    assert meta["packets"] > 20 and meta["stacks"]["pymodbus"]
    channels = {v.key for v in vectors(out)}
    assert {("127.0.20.1", "127.0.10.1", "modbus"), ("127.0.20.1", "127.0.10.3", "modbus")} <= channels
    if importlib.util.find_spec("snap7") is not None:
        assert ("127.0.0.1", "127.0.30.1", "s7comm") in channels, proc.stderr


@needs_model
def test_a_site_calibrated_manifest_saves_and_loads(tmp_path: Path, scorer: Scorer,
                                                     normal: list[ChannelVector]) -> None:
    scaler, threshold = scorer.fit_site(normal)
    site = scorer.manifest.with_site(scaler, threshold, {"windows": len(normal)})
    shutil.copy(MODEL.parent / site.onnx_file, tmp_path / site.onnx_file)
    (tmp_path / "site.json").write_text(json.dumps(site.to_dict()))
    loaded = Scorer.load(tmp_path / "site.json")
    assert loaded.scaler == scaler and loaded.threshold == threshold
    assert loaded.describe() == {**scorer.describe(), "threshold": threshold.value,
                                 "calibration": "site"}
    assert loaded.manifest.extra["site"] == {"windows": len(normal)}
    assert [s.score for s in loaded.score(normal)] == \
        [s.score for s in scorer.with_site(scaler, threshold).score(normal)]
