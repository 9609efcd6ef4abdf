"""The decayed mean rate behind ``rate_dev``: one burst or lull moves it only so far, a lasting
change is still followed, a channel's first windows set it freely. Modbus/TCP frames
(tests/plant.py) through the pipeline, one channel polled at a given count per window. And
connection set-up (the ``session`` family) counts as traffic, not as polling (real stacks'
capture)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.config import load
from edge_agent.features.extract import EWMA_ALPHA, INDEX, RATE_CLAMP, ChannelVector
from tests.plant import ModbusConversation

T0 = 1_700_000_040.0                 # a window boundary (60 s windows)
WINDOW = 60.0
RATE_DEV = INDEX["rate_dev"]


def reads(conv: ModbusConversation, start: float, count: int, seconds: float = WINDOW) -> list:
    """``count`` reads spread evenly over ``seconds`` from ``start``."""
    step = seconds / count
    return [p for k in range(count) for p in conv.read(start + (k + 0.5) * step)]


def channel_windows(counts: list[int], extra: list | None = None) -> dict[str, list[ChannelVector]]:
    """Vectors per client IP, window by window, for the HMI reading ``counts[i]`` times in window
    i; one more quiet window closes the last one whole (the run's partial end is dropped)."""
    hmi = ModbusConversation(1, 2)
    packets = [p for i, n in enumerate(counts) for p in reads(hmi, T0 + i * WINDOW, n)]
    packets += reads(hmi, T0 + len(counts) * WINDOW, 1, 1.0)
    packets = sorted(packets + (extra or []), key=lambda p: p[0])
    windows: list[list[ChannelVector]] = []
    pipe = Pipeline(load().with_overrides({"summary.window_s": WINDOW}), on_window=windows.append)
    pipe.run(packets)
    out: dict[str, list[ChannelVector]] = {}
    for vs in windows[:-1]:
        for v in vs:
            out.setdefault(v.key[0], []).append(v)
    return out


def raw_dev(v: ChannelVector) -> float:
    return max(-4.0, min(4.0, (v.rate - v.mean_rate) / (v.mean_rate + 1.0)))


@pytest.mark.parametrize("factor", [3, 10])
def test_one_burst_hardly_moves_the_mean(factor: int) -> None:
    vs = channel_windows([60] * 8 + [60 * factor] + [60] * 3)["10.0.0.1"]
    burst, after = vs[8], vs[9]
    assert burst.rate == pytest.approx(120.0 * factor)
    # The burst window itself reports its raw deviation from the mean ...
    assert burst.values[RATE_DEV] == pytest.approx(raw_dev(burst)) and raw_dev(burst) > 1.5
    # ... but moves the mean only as a window at RATE_CLAMP times it would (a plain average
    # would take 0.2 of the burst: x 1.4 for three times the rate, x 2.8 for ten times).
    assert after.mean_rate == pytest.approx(burst.mean_rate * (1 - EWMA_ALPHA + EWMA_ALPHA * RATE_CLAMP))
    # So the ordinary window after it looks ordinary (unclamped: -0.28 and -0.64).
    assert after.values[RATE_DEV] > -0.2
    assert all(abs(v.values[RATE_DEV]) < 0.2 for v in vs[9:])


def test_one_lull_hardly_moves_the_mean() -> None:
    vs = channel_windows([60] * 8 + [6] + [60] * 3)["10.0.0.1"]
    lull, after = vs[8], vs[9]
    assert lull.values[RATE_DEV] == pytest.approx(raw_dev(lull)) and raw_dev(lull) < -0.8
    assert after.mean_rate >= lull.mean_rate * (1 - EWMA_ALPHA + EWMA_ALPHA / RATE_CLAMP) - 1e-9
    assert after.values[RATE_DEV] < 0.15                     # unclamped: 0.22


def test_a_lasting_change_of_rate_is_still_followed() -> None:
    vs = channel_windows([60] * 8 + [180] * 16)["10.0.0.1"]
    assert vs[7].mean_rate == pytest.approx(120.0, rel=0.02)
    means = [v.mean_rate for v in vs[8:]]
    assert means == sorted(means)
    assert means[-1] == pytest.approx(360.0, rel=0.05)
    assert abs(vs[-1].values[RATE_DEV]) < 0.05


def test_a_channel_that_starts_late_in_a_window_reaches_its_rate() -> None:
    """Its first window counts 6 s of polling over a whole minute: a tenth of its rate. The
    first windows set the mean freely; clamped from the start, it would be at 25 after four."""
    late = ModbusConversation(3, 2, 40100)
    extra = [p for k in range(6 * 60 + 6) for p in late.read(T0 + 2 * WINDOW - 6 + k + 0.25)]
    vs = channel_windows([60] * 9, extra)["10.0.0.3"]
    assert vs[0].rate == pytest.approx(12.0) and vs[1].mean_rate == pytest.approx(12.0)
    assert [v.rate for v in vs[1:6]] == pytest.approx([120.0] * 5, rel=0.02)
    assert vs[5].mean_rate > 55.0


def test_connection_set_up_counts_as_traffic_not_as_polling() -> None:
    # Real stacks (models/training/plant-normal.pcap): the IEC-104 client opens its link with
    # STARTDT (session), then interrogates once a minute; S7 opens with a COTP connect. The
    # set-up window's request timing and functions are those of steady polling, and the COTP
    # channel (nothing but set-up) is traffic without requests, replies or functions.
    capture = Path(__file__).resolve().parents[2] / "models" / "training" / "plant-normal.pcap"
    windows: list[list[ChannelVector]] = []
    pipe = Pipeline(load().with_overrides({"summary.window_s": WINDOW}), on_window=windows.append)
    pipe.run(FileSource([str(capture)]))
    iec = [v for vs in windows for v in vs if v.key[2] == "iec104"]
    assert len(iec) >= 5 and iec[0].values[INDEX["channel_new"]] == 1.0
    for name in ("func_distinct_log", "iat_cv", "reply_ratio"):
        steady = {round(v.values[INDEX[name]], 6) for v in iec[1:-1]}
        assert steady == {round(iec[0].values[INDEX[name]], 6)}, (name, steady, iec[0].values)
    cotp = [v for vs in windows for v in vs if v.key[2] == "cotp"]
    assert cotp and cotp[0].messages >= 2 and cotp[0].values[INDEX["msg_rate_log"]] > 0
    for name in ("req_rate_log", "func_distinct_log", "reply_ratio", "error_rate"):
        assert cotp[0].values[INDEX[name]] == 0.0, name
