"""Which windows the model judges: whole ones only. A window cut short (the end of a capture, a
stop, time stepping back to another capture) holds seconds of traffic; it is not scored, while
the rules still see it. Modbus/TCP frames (tests/plant.py) through the pipeline and the shipped
model."""
from __future__ import annotations

from typing import Any

import pytest

from edge_agent.agent import Pipeline
from edge_agent.config import load
from edge_agent.features.extract import ChannelVector
from edge_agent.model.scorer import Scorer
from tests.conftest import ROOT
from tests.plant import ModbusConversation, polling

MODEL = ROOT / "models" / "edge-ae-v1.json"
T0 = 1_700_000_040.0                 # a window boundary (60 s windows)
HMI, PLC, ROGUE = 1, 2, 66


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    if not MODEL.exists():
        pytest.skip(f"{MODEL} is not there")
    return Scorer.load(MODEL)


def probe(start: float) -> list:
    """A new client reading 40 addresses the PLC does not have: 40 exception replies."""
    rogue = ModbusConversation(ROGUE, PLC, 41000)
    return [p for i in range(40) for p in rogue.exception(start + i * 0.2, 9000 + i)]


def run(packets: list, scorer: Scorer) -> tuple[list[dict[str, Any]], list[list[ChannelVector]]]:
    """The summaries and every window's vectors; packets in the order given."""
    summaries: list[dict[str, Any]] = []
    windows: list[list[ChannelVector]] = []
    pipe = Pipeline(load(), sink=summaries.append, on_window=windows.append, scorer=scorer)
    for ts, linktype, data in packets:
        pipe.feed(ts, linktype, data)
    pipe.finish()
    return summaries, windows


def rules_about(summary: dict[str, Any], ip: str) -> set[str]:
    return {f["rule"] for f in summary["findings"] if ip in (f["src_ip"], f["dest_ip"])}


def test_the_last_partial_window_is_not_scored(scorer: Scorer) -> None:
    poll = polling(ModbusConversation(HMI, PLC), T0, 400.0)
    rogue = "10.0.0.66"
    # The probe in the fourth window [T0+180, T0+240) while traffic goes on: a model finding.
    whole = sorted(poll + probe(T0 + 200.0), key=lambda p: p[0])
    summaries, _ = run(whole, scorer)
    assert summaries[3]["window"]["complete"]
    assert {"model_anomaly", "error_storm"} <= rules_about(summaries[3], rogue)
    # The same probe in the last window of a capture that ends at T0+239.5: the window is
    # incomplete, the rule that counts the errors still fires, the model does not judge it.
    cut = [p for p in whole if p[0] < T0 + 239.5]
    summaries, _ = run(cut, scorer)
    last = summaries[-1]
    assert len(summaries) == 4 and not last["window"]["complete"]
    assert rules_about(last, rogue) == {"error_storm"}
    assert all(s["window"]["complete"] for s in summaries[:-1])


def test_a_window_cut_by_time_stepping_back_is_incomplete_and_not_scored(scorer: Scorer) -> None:
    """Two captures replayed one after the other, the second recorded an hour earlier."""
    first = sorted(polling(ModbusConversation(HMI, PLC), T0, 100.0) + probe(T0 + 80.0),
                   key=lambda p: p[0])
    second = polling(ModbusConversation(HMI, PLC, 40500), T0 - 3600.0, 130.0)
    summaries, windows = run(first + second, scorer)
    assert [s["window"]["start"] for s in summaries[:2]] == [T0, T0 + 60.0]
    cut = summaries[1]
    assert not cut["window"]["complete"] and summaries[0]["window"]["complete"]
    assert rules_about(cut, "10.0.0.66") == {"error_storm"}      # the model did not judge it
    # Its rates are per second watched (T0+60 to its last packet, 39.01 s), not per second.
    (hmi,) = [v for v in windows[1] if v.key[0] == "10.0.0.1"]
    assert hmi.rate == pytest.approx(80 / (39.01 / 60))
    # The second capture's windows follow as usual; its last one is the run's incomplete end.
    assert [s["window"]["complete"] for s in summaries[2:]] == [True, True, False]


def test_the_prebuilt_model_only_reports_until_the_site_calibrates_it(scorer: Scorer) -> None:
    """The prebuilt scaler and threshold come from other plants: before a site calibration a
    model finding is low (never an alert); calibrated on the site's own polling, the same probe
    is judged at the rule's severity or above."""
    poll = polling(ModbusConversation(HMI, PLC), T0, 400.0)
    traffic = sorted(poll + probe(T0 + 200.0), key=lambda p: p[0])

    def model_findings(s: Scorer) -> list[dict[str, Any]]:
        summaries, _ = run(traffic, s)
        return [f for f in summaries[3]["findings"] if f["rule"] == "model_anomaly"]

    prebuilt = model_findings(scorer)
    assert prebuilt and {f["severity"] for f in prebuilt} == {"low"}, prebuilt
    _, windows = run(polling(ModbusConversation(HMI, PLC), T0 - 3600.0, 1800.0), scorer)
    normal = [v for w in windows[:-1] for v in w]
    site = scorer.with_site(*scorer.fit_site(normal))
    calibrated = model_findings(site)
    assert calibrated and {f["severity"] for f in calibrated} <= {"medium", "high"}, calibrated
