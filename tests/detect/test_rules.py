"""Rules on real attack captures and on synthetic plant traffic, with and without a baseline."""
from __future__ import annotations

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.config import load
from edge_agent.detect.profiles import Baseline, BaselineBuilder
from edge_agent.detect.rules import load_rules
from edge_agent.features.extract import load_families
from tests.conftest import fixture_pcaps
from tests.plant import ModbusConversation, frame, ip, polling


def run(packets, baseline: Baseline | None = None, window: float = 60.0, **detect):
    cfg = load().with_overrides({"summary.window_s": window,
                                 **{f"detect.{k}": v for k, v in detect.items()}})
    summaries, alerts = [], []
    pipe = Pipeline(cfg, sink=summaries.append, baseline=baseline, on_finding=alerts.append)
    for ts, linktype, data in packets:
        pipe.feed(ts, linktype, data)
    pipe.finish()
    return [f for s in summaries for f in s["findings"]], alerts


def rules_of(findings) -> set[str]:
    return {f["rule"] for f in findings}


def capture(name: str):
    (path,) = [p for p in fixture_pcaps() if p.name == name]
    return FileSource([str(path)])


def test_labelled_reboot_capture_is_caught_with_its_techniques() -> None:
    findings, alerts = run(capture("EIP-RebootorRestart.pcap"))
    by_rule = {f["rule"]: f for f in findings}
    assert {"plc_stop", "device_restart", "plc_start"} <= set(by_rule)
    assert by_rule["plc_stop"]["attack_technique"] == "T0858"
    assert by_rule["device_restart"]["attack_technique"] == "T0816"
    assert by_rule["plc_stop"]["messages"][0]["cip"]["service"] == "stop"
    assert {a.rule for a in alerts} == rules_of(findings)      # each alerted once, as it happened


def test_s7_stop_and_program_upload_in_snap7_capture() -> None:
    findings, _ = run(capture("snap7.pcap"))
    assert {"plc_stop", "plc_start", "program_upload"} <= rules_of(findings)
    uploads = [f for f in findings if f["rule"] == "program_upload"]
    assert len(uploads) == 1 and uploads[0]["count"] > 1          # folded, counted


def test_normal_polling_gives_no_finding() -> None:
    conv = ModbusConversation(1, 2)
    findings, _ = run(polling(conv, 1000.0, 600, write_every=10))
    assert findings == []


def test_diagnostics_restart_sub_function() -> None:
    conv = ModbusConversation(1, 2)
    findings, _ = run(conv.read(10.0) + conv.diagnostics(11.0, 1) + conv.diagnostics(12.0, 4))
    assert rules_of(findings) == {"modbus_restart", "modbus_listen_only"}


def test_noise_controls_disable_and_retune() -> None:
    conv = ModbusConversation(1, 2)
    traffic = conv.diagnostics(11.0, 1)
    findings, _ = run(traffic, disabled=["modbus_restart"])
    assert findings == []
    findings, _ = run(traffic, severity={"modbus_restart": "low"})
    assert findings[0]["severity"] == "low"


def learn(packets) -> Baseline:
    cfg = load()
    builder = BaselineBuilder(load_families())
    pipe = Pipeline(cfg, on_window=builder.observe_window)
    pipe.on_event = builder.observe
    for p in packets:
        pipe.feed(*p)
    pipe.finish()
    return builder.build()


def test_baseline_rules_catch_a_new_writer_new_function_and_range() -> None:
    hmi = ModbusConversation(1, 2)
    base = learn(polling(hmi, 0.0, 300, write_every=10))
    assert ("10.0.0.1", "10.0.0.2", "modbus") in base.channels
    # Normal traffic after learning: nothing.
    hmi2 = ModbusConversation(1, 2, cport=40001)
    findings, _ = run(polling(hmi2, 400.0, 120, write_every=10), base)
    assert findings == []
    # An engineering laptop (10.0.0.66) writes to the PLC: new talker, first write, new device.
    rogue = ModbusConversation(66, 2, cport=50000)
    findings, _ = run(rogue.write(500.0, addr=10), base)
    assert {"new_talker", "first_write", "new_device"} <= rules_of(findings)
    # The HMI itself uses a new function and reads far outside its range.
    hmi3 = ModbusConversation(1, 2, cport=40002)
    traffic = hmi3.read(600.0, addr=0) + hmi3.read(601.0, addr=5000) + hmi3.diagnostics(602.0, 0)
    findings, _ = run(traffic, base)
    assert {"address_out_of_range", "new_function"} <= rules_of(findings)
    assert "first_write" not in rules_of(findings)


def test_scan_of_many_devices_and_ports() -> None:
    warm = polling(ModbusConversation(1, 2), 0.0, 120)          # the first window: warm-up
    packets = [(130.0 + i * 0.01, 1, frame(ip(99), 33000 + i, ip(100 + i), 502, b"", 1, 0x02))
               for i in range(12)]
    packets += [(131.0 + i * 0.01, 1, frame(ip(99), 34000 + i, ip(2), 1 + i, b"", 1, 0x02))
                for i in range(15)]
    findings, alerts = run(warm + packets)
    scans = [f for f in findings if f["rule"] == "scan"]
    assert len(scans) == 2 and {f["src_ip"] for f in scans} == {"10.0.0.99"}
    assert alerts and alerts[0].rule == "scan"


def test_an_hmi_polling_many_plcs_is_not_a_scan() -> None:
    # One HMI reconnecting to 20 PLCs every 10 s, and reading 20 unit ids behind a gateway.
    packets = []
    for n, t in enumerate(range(0, 600, 10)):
        for plc in range(20):
            packets += ModbusConversation(1, 100 + plc, cport=20000 + n * 20 + plc).read(float(t))
        for unit in range(1, 21):
            packets += ModbusConversation(1, 2, cport=40000 + n * 20 + unit, unit=unit).read(t + 0.5)
    packets.sort(key=lambda p: p[0])
    findings, _ = run(packets)
    assert "scan" not in rules_of(findings)


def test_error_storm() -> None:
    conv = ModbusConversation(1, 2)
    packets = [p for i in range(30) for p in conv.exception(10.0 + i * 0.1)]
    findings, _ = run(packets)
    assert "error_storm" in rules_of(findings)


def test_rate_spike_after_a_quiet_history() -> None:
    conv = ModbusConversation(1, 2)
    packets = polling(conv, 0.0, 600, period=2.0)                    # 60 msgs/min for 10 min
    packets += polling(conv, 600.0, 60, period=0.02)                 # then 6000/min
    findings, _ = run(packets)
    assert rules_of(findings) == {"rate_spike"}


def test_rules_data_is_complete() -> None:
    rules = load_rules()
    assert len({r.id for r in rules}) == len(rules)
    for r in rules:
        assert r.technique.startswith("T0") and r.reason and r.title


def test_learn_then_run_from_the_command_line(tmp_path, capsys) -> None:
    from edge_agent import cli
    from edge_agent.summary.sign import claims
    from edge_agent.transport.spool import Spool
    (normal,) = [p for p in fixture_pcaps("modbus") if p.name == "modbus_modbus.pcap"]
    state = str(tmp_path)
    assert cli.main(["learn", "--pcap", str(normal), "--state-dir", state]) == 0
    base = Baseline.load(tmp_path / "baseline.json")
    assert ("10.0.0.57", "10.0.0.3", "modbus") in base.channels
    # Replaying the learned capture finds nothing new; another capture's devices are new.
    assert cli.main(["run", "-q", "--pcap", str(normal), "--state-dir", state]) == 0
    docs = [claims(d) for _, d in Spool(tmp_path / "spool.sqlite").documents()]
    assert docs[-1]["detection"]["baseline_rules"] == "on"
    assert not {"new_talker", "new_device", "first_write"} & {f["rule"] for d in docs
                                                             for f in d["findings"]}
    other = [str(p) for p in fixture_pcaps("modbus") if p.name == "modbusSmall.pcap"]
    assert cli.main(["run", "-q", "--pcap", *other, "--state-dir", state]) == 0
    docs = [claims(d) for _, d in Spool(tmp_path / "spool.sqlite").documents(since=len(docs))]
    assert {"new_talker", "new_device"} <= {f["rule"] for d in docs for f in d["findings"]}


def test_inspect_lists_findings_readably(capsys) -> None:
    from edge_agent import cli
    (path,) = [p for p in fixture_pcaps("enip") if p.name == "EIP-RebootorRestart.pcap"]
    assert cli.main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "CRITICAL Controller stop command [T0858]" in text and "why:" in text
