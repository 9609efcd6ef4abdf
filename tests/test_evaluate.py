"""scripts/evaluate on a small labelled set (issue 5's targets): synthetic Modbus plant traffic
with attacks, a day of replayed normal traffic, the EtherNet/IP event fixtures and, with root,
one real-stack scenario from scripts/gen-attacks."""
from __future__ import annotations

import importlib.util
import json
import random
import struct
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from edge_agent.config import load
from tests.capture.netns import missing_requirements
from tests.plant import ModbusConversation, frame, ip

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 60.0
T0 = 1_700_000_040.0                 # a window boundary
NORMAL_S = 600.0                     # clean prefix: ten windows to learn from
ATTACK_AT = T0 + NORMAL_S + 10.0
END = T0 + NORMAL_S + 180.0
HMI, PLC_A, PLC_B, HISTORIAN = 1, 2, 3, 5


def _script(name: str):
    loader = SourceFileLoader(name.replace("-", "_"), str(ROOT / "scripts" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module          # dataclasses look their module up
    loader.exec_module(module)
    return module


ev = _script("evaluate")


# --- a synthetic plant (tests/plant.py frames) ------------------------------------------------

def poll(conv: ModbusConversation, start: float, end: float, period: float, addr: int, count: int,
         rng: random.Random, writes: tuple[float, float] | None = None) -> list:
    out = []
    t = start + rng.uniform(0, period)
    next_write = start + rng.uniform(*writes) if writes else float("inf")
    while t < end:
        if t >= next_write:
            out += conv.write(t, addr=10, value=rng.randrange(400, 600))
            next_write += rng.uniform(*writes)
        else:
            out += conv.read(t, addr=addr, count=count)
        t += period * rng.uniform(0.98, 1.02)
    return out


def normal_plant(start: float, end: float, seed: int, port: int = 40000) -> list:
    """An HMI polling two PLCs (with setpoint writes) and a historian, jittered."""
    rng = random.Random(seed)
    return sorted(poll(ModbusConversation(HMI, PLC_A, port), start, end, 1.0, 0, 10, rng,
                       (20, 40))
                  + poll(ModbusConversation(HMI, PLC_B, port + 1), start, end, 2.0, 100, 8, rng)
                  + poll(ModbusConversation(HISTORIAN, PLC_A, port + 2), start, end, 5.0, 0, 20,
                         rng), key=lambda p: p[0])


def syn(src: int, sport: int, dst: int, dport: int, ts: float) -> tuple:
    return ts, 1, frame(ip(src), sport, ip(dst), dport, b"", 1, 0x02)


def s7_stop(ts: float) -> list:
    """A PLC STOP job (the PDU python-snap7's client builds) in TPKT/COTP data, and an ack."""
    from snap7.s7protocol import S7Protocol
    pdu = S7Protocol().build_plc_control_request("stop")
    tpkt = lambda p: struct.pack("!BBH", 3, 0, len(p) + 7) + bytes([2, 0xF0, 0x80]) + p
    ack = struct.pack(">BBHHHHBB", 0x32, 3, 0, 1, 1, 0, 0, 0) + bytes([0x29])
    return [(ts, 1, frame(ip(7), 40150, ip(8), 102, tpkt(pdu), 1)),
            (ts + 0.01, 1, frame(ip(8), 102, ip(7), 40150, tpkt(ack), 1))]


def attack(name: str, normal: list) -> tuple[list, dict]:
    """Attack packets at ATTACK_AT and their label (src, dst)."""
    t = ATTACK_AT
    host = lambda n: f"10.0.0.{n}"
    if name == "new_host_write":
        rogue = ModbusConversation(66, PLC_A, 50000)
        pk = rogue.read(t) + rogue.write(t + 2, 10, 999) + rogue.write(t + 5, 10, 998)
        return pk, {"src": host(66), "dst": [host(PLC_A)]}
    if name == "plc_stop":
        # An S7 CPU the SCADA (7) reads every second; the stop comes from the SCADA's address.
        return s7_stop(t), {"src": host(7), "dst": [host(8)]}
    if name == "scan":
        pk = [syn(99, 33000 + i, 100 + i, 502, t + i * 0.01) for i in range(20)]
        pk += [syn(99, 34000 + p, PLC_A, p, t + 0.5 + p * 0.001) for p in range(1, 41)]
        sweep = ModbusConversation(99, PLC_B, 51000)
        for unit in range(1, 248):
            sweep.unit = unit
            pk += sweep.read(t + 1 + unit * 0.01, addr=0, count=1)
        return pk, {"src": host(99), "dst": [host(PLC_A), host(PLC_B)] +
                    [host(100 + i) for i in range(20)]}
    if name == "replay":
        # The HMI's earlier write requests, byte for byte, on a new connection.
        adus = [f[54:] for ts, _, f in normal if ts < ATTACK_AT and f[26:30] == ip(HMI)
                and f[30:34] == ip(PLC_A) and len(f) > 61 and f[61] == 6]
        pk, seq = [], 1
        for i, adu in enumerate(adus[-10:]):
            pk.append((t + i * 0.3, 1, frame(ip(HMI), 45000, ip(PLC_A), 502, adu, seq)))
            pk.append((t + i * 0.3 + 0.01, 1, frame(ip(PLC_A), 502, ip(HMI), 45000, adu, seq)))
            seq += len(adu)
        return pk, {"src": host(HMI), "dst": [host(PLC_A)]}
    if name == "flood":
        conv = ModbusConversation(HMI, PLC_A, 46000)
        pk = [p for i in range(4000) for p in conv.read(t + i * 0.005, addr=0, count=10)]
        return pk, {"src": host(HMI), "dst": [host(PLC_A)]}
    if name == "out_of_range_write":
        conv = ModbusConversation(HMI, PLC_A, 47000)
        return conv.write(t, 100, 1) + conv.write(t + 2, 120, 2), \
            {"src": host(HMI), "dst": [host(PLC_A)]}
    raise ValueError(name)


def scenario(name: str, seed: int) -> "ev.Labelled":
    normal = normal_plant(T0, END, seed)
    if name == "plc_stop":
        normal = sorted(normal + s7_reads(T0, END), key=lambda p: p[0])
    pk, where = attack(name, normal)
    packets = sorted(normal + pk, key=lambda p: p[0])
    start = min(p[0] for p in pk)
    end = max(p[0] for p in pk)
    return ev.Labelled(f"{name}.pcap", lambda: packets,
                       [ev.Attack(name, ((start, end),), where["src"], tuple(where["dst"]))],
                       normal_until=T0 + NORMAL_S)


def s7_reads(start: float, end: float) -> list:
    """SCADA 10.0.0.7 reading DB1 of an S7 CPU 10.0.0.8 every second (read var jobs)."""
    tpkt = lambda p: struct.pack("!BBH", 3, 0, len(p) + 7) + bytes([2, 0xF0, 0x80]) + p
    item = bytes([0x12, 0x0A, 0x10, 0x02]) + struct.pack(">HHB", 32, 1, 0x84) + b"\x00\x00\x00"
    out, seq_c, seq_s, ref = [], 1, 1, 0
    t = start + 0.3
    while t < end:
        ref += 1
        req = tpkt(struct.pack(">BBHHHH", 0x32, 1, 0, ref, 14, 0) + bytes([0x04, 1]) + item)
        rsp = tpkt(struct.pack(">BBHHHHBB", 0x32, 3, 0, ref, 2, 36, 0, 0) + bytes([0x04, 1])
                   + bytes([0xFF, 0x04]) + struct.pack(">H", 256) + bytes(32))
        out.append((t, 1, frame(ip(7), 40100, ip(8), 102, req, seq_c)))
        out.append((t + 0.01, 1, frame(ip(8), 102, ip(7), 40100, rsp, seq_s)))
        seq_c += len(req)
        seq_s += len(rsp)
        t += 1.0
    return out


ATTACKS = ("new_host_write", "plc_stop", "scan", "flood", "out_of_range_write", "replay")


@pytest.fixture(scope="module")
def cfg():
    return load()


@pytest.fixture(scope="module")
def scorer(cfg, tmp_path_factory):
    return ev.load_scorer(cfg, tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def result(cfg, scorer):
    labs = [scenario(name, seed) for seed, name in enumerate(ATTACKS)]
    labs += ev.fixture_labels()
    learn = normal_plant(T0, T0 + NORMAL_S, 100)
    segments = [normal_plant(0.0, 900.0, 200 + i, 40000 + 10 * i) for i in range(3)]
    long = [ev.evaluate_long_normal(learn, segments, 24.0, cfg, scorer=scorer)]
    return ev.evaluate(labs, cfg, scorer=scorer, long=long)


def test_every_attack_scenario_is_detected(result) -> None:
    s = result["summary"]
    detected = {a["attack"]: a for c in result["captures"] for a in c["attacks"]}
    assert set(ATTACKS) <= set(detected)
    assert s["missed"] == [], s["missed"]
    assert detected["plc_stop"]["alerted"] and "plc_stop" in detected["plc_stop"]["rules"]
    assert {"first_write", "new_talker"} <= set(detected["new_host_write"]["rules"])
    assert "scan" in detected["scan"]["rules"]
    assert "rate_spike" in detected["flood"]["rules"]
    assert "write_out_of_range" in detected["out_of_range_write"]["rules"]
    assert "address_out_of_range" not in detected["out_of_range_write"]["rules"]
    assert "replayed_request" in detected["replay"]["rules"]
    assert all(a["ttd_s"] is not None and a["ttd_s"] <= WINDOW for a in detected.values()
               if a["detectable"])


def test_labelled_eip_fixtures(result) -> None:
    by_file = {c["file"]: c for c in result["captures"]}
    if "EIP-RebootorRestart.pcap" not in by_file:
        pytest.skip("shared fixtures not present")
    reboot = by_file["EIP-RebootorRestart.pcap"]["attacks"][0]
    assert reboot["detected"] and {"plc_stop", "device_restart"} <= set(reboot["rules"])
    upload = by_file["EIP-SoftwareUploadFailure.pcap"]["attacks"][0]
    # No EtherNet/IP at all in that capture: reported as undetectable, with what it holds.
    assert not upload["detectable"] and "stp" in upload["why_not"]
    assert by_file["EIP-SoftwareUploadFailure.pcap"]["decoded_messages"].get("enip", 0) == 0


def test_at_most_one_false_alert_per_day_of_normal_traffic(result) -> None:
    long = result["long_normal"][0]
    assert long["normal_detect_s"] >= 23.9 * 3600
    assert long["false_alerts"] / long["normal_detect_s"] * 86_400 <= 1.0, long["false_by_rule"]
    assert result["summary"]["targets"]["false_alerts_per_24h_at_most_1"]


def test_every_model_finding_names_its_top_features(result) -> None:
    s = result["summary"]
    assert s["model_findings"] > 0                   # the flood and the scan are model findings
    assert s["model_findings_explained"] == s["model_findings"]


def test_model_auc_is_printed_and_better_than_chance(result, capsys) -> None:
    s = result["summary"]
    assert s["auc_pair"] is not None and s["auc_pair"] > 0.5
    assert s["auc"] is not None and s["auc"] > 0.5
    ev.print_report(result)
    out = capsys.readouterr().out
    assert "model AUC" in out and "false alerts" in out and "not detectable from the wire" in out
    json.dumps(result, default=str)                 # --json can write it


def test_replay_of_captured_writes_is_detected(cfg, scorer) -> None:
    # The model may flag this very regular synthetic plant's write burst; the real-stack replay
    # (gen-attacks) it does not: the check is the rule that recognises a re-sent request.
    out = ev.evaluate([scenario("replay", 9)], cfg, scorer=scorer)
    (a,) = out["captures"][0]["attacks"]
    assert a["detected"] and a["alerted"] and "replayed_request" in a["rules"], a


def test_auc_rank_formula() -> None:
    assert ev.auc([3, 4], [1, 2]) == 1.0
    assert ev.auc([1], [2]) == 0.0
    assert ev.auc([1, 2], [1, 2]) == 0.5             # ties share their rank
    assert ev.auc([], [1]) is None


def test_labels_by_interval_frame_and_file(tmp_path) -> None:
    import dpkt
    conv = ModbusConversation(HMI, PLC_A)
    pcap = tmp_path / "x.pcap"
    with pcap.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, _, f in [p for i in range(10) for p in conv.read(100.0 + i)]:
            w.writepkt(f, ts)
    (tmp_path / "labels.json").write_text(json.dumps({
        "x.pcap": {"attacks": [{"name": "a", "frames": [[3, 4], 19]},
                               {"name": "b", "start": 101.0, "end": 102.0, "src": "10.0.0.1"},
                               {"name": "c"}]}}))
    (lab,) = ev.load_labels(tmp_path / "labels.json", merge_gap=1.0)
    a, b, c = lab.attacks
    assert a.intervals == ((101.0, 101.01), (109.0, 109.0))
    assert b.intervals == ((101.0, 102.0),) and b.src == "10.0.0.1"
    assert c.intervals == () and not lab.normal


def test_long_replay_shifts_client_ports_and_modbus_transactions() -> None:
    conv = ModbusConversation(HMI, PLC_A, 40000)
    seg = conv.read(10.0) + conv.read(11.0)
    out = list(ev.long_normal([seg], 5.0, 1000.0))
    assert [round(t, 2) for t, _, _ in out[:4]] == [1000.0, 1000.01, 1001.0, 1001.01]
    sport, dport = struct.unpack_from("!HH", out[0][2], 34)
    assert dport == 502 and sport != 40000
    assert struct.unpack_from("!HH", out[1][2], 34) == (502, sport)   # both directions alike
    assert out[0][2][54:56] != seg[0][2][54:56]                      # a fresh transaction id
    assert out[0][2][56:] == seg[0][2][56:]


@pytest.mark.skipif(missing_requirements() is not None,
                    reason=f"real-stack scenario: {missing_requirements()}")
def test_real_stack_plc_stop_scenario(tmp_path, scorer) -> None:
    """gen-attacks' PLC stop (python-snap7 against the snap7 server, pymodbus and c104 polling
    around it, captured by LiveSource in a namespace), shortened to 5 s windows."""
    pytest.importorskip("snap7")
    pytest.importorskip("pymodbus")
    pytest.importorskip("c104")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-attacks"), "--out-dir",
                           str(tmp_path), "--scenarios", "plc_stop", "--normal", "5",
                           "--after", "2", "--window", "5"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    labels = json.loads((tmp_path / "labels.json").read_text())
    attack = labels["plc_stop.pcap"]["attacks"][0]
    assert attack["src"] == "127.0.0.1" and attack["end"] >= attack["start"]
    cfg = load().with_overrides({"summary.window_s": 5.0})
    out = ev.evaluate(ev.load_labels(tmp_path / "labels.json", 5.0), cfg, scorer=scorer)
    (a,) = out["captures"][0]["attacks"]
    assert a["detected"] and a["alerted"] and "plc_stop" in a["rules"], a
    assert out["captures"][0]["decoded_messages"].get("s7comm", 0) > 0
