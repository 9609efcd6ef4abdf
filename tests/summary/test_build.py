"""Windows and summaries, driven through the pipeline with synthetic Modbus frames."""
from __future__ import annotations

import struct

from edge_agent.agent import Pipeline
from edge_agent.config import load

ETH = bytes.fromhex("66778899aabb" "001122334455" "0800")


def frame(cport: int, payload: bytes, seq: int, to_server: bool = True) -> bytes:
    sport, dport = (cport, 502) if to_server else (502, cport)
    src, dst = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02") if to_server else (b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x01")
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, 0x18, 8192, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst)
    return ETH + ip + tcp


def read_req(tid: int) -> bytes:
    return struct.pack("!HHHBBHH", tid, 0, 6, 1, 3, 0, 2)


def pipeline(window: float = 60.0, **limits):
    cfg = load().with_overrides({"summary.window_s": window,
                                 **{f"limits.{k}": v for k, v in limits.items()}})
    out: list[dict] = []
    return Pipeline(cfg, sink=out.append), out


def test_windows_align_to_their_length_and_skip_empty_ones_in_files() -> None:
    pipe, out = pipeline(window=10)
    pipe.feed(103.0, 1, frame(40000, read_req(1), 1))
    pipe.feed(109.9, 1, frame(40000, read_req(2), 13))
    pipe.feed(110.0, 1, frame(40000, read_req(3), 25))
    pipe.feed(145.0, 1, frame(40000, read_req(4), 37))       # 120-140 empty: not written
    pipe.finish()
    assert [(s["window"]["start"], s["window"]["end"]) for s in out] == [(100, 110), (110, 120),
                                                                        (140, 150)]
    assert [s["health"]["packets"] for s in out] == [2, 1, 1]
    assert [s["protocols"]["modbus"]["messages"] for s in out] == [2, 1, 1]
    assert out[0]["flows"][0]["history"] == [["read_holding_registers", 2]]


def test_live_ticks_close_empty_windows_too() -> None:
    pipe, out = pipeline(window=1)
    pipe.tick(10.2)
    pipe.tick(11.1)
    pipe.tick(12.5)
    assert [s["window"]["start"] for s in out] == [10, 11]
    assert all(s["health"]["packets"] == 0 for s in out)


def test_flow_list_is_capped_ot_first() -> None:
    pipe, out = pipeline(max_summary_flows=3)
    for port in range(10):
        pipe.feed(1.0, 1, frame(41000 + port, read_req(port), 1))
    pipe.finish()
    s = out[0]
    assert len(s["flows"]) == 3 and s["flows_omitted"] == 7
    assert s["protocols"]["modbus"]["flows"] == 10


def test_anomalies_and_link_drops_are_counted() -> None:
    pipe, out = pipeline()
    bad = struct.pack("!HHHBB", 1, 7, 2, 1, 3)               # protocol id 7: not Modbus framing
    pipe.feed(1.0, 1, frame(40000, read_req(1), 1))
    pipe.feed(1.1, 1, ETH[:10])                               # truncated frame
    pipe.feed(1.2, 1, frame(40001, bad * 3, 1))
    pipe.finish()
    s = out[0]
    assert s["health"]["link_drops"] == {"link.truncated": 1}
    assert s["health"]["undecodable_total"] == 1
    assert s["anomalies"], s


def test_a_capture_from_another_time_opens_its_own_window() -> None:
    pipe, out = pipeline(window=60)
    pipe.feed(1_000_000.0, 1, frame(40000, read_req(1), 1))
    pipe.feed(999_998.0, 1, frame(40000, read_req(2), 13))    # mirror-port reordering: same window
    pipe.feed(500.0, 1, frame(40001, read_req(1), 1))         # the next file, years earlier
    pipe.finish()
    assert [(s["window"]["start"], s["health"]["packets"]) for s in out] == [(999_960.0, 2), (480.0, 1)]
