"""The gateway check on neighbour-table fixtures: spoofing, a changed MAC, the state file.

`analyse_neighbours` is pure, so these tables are written by hand; nothing here touches
the network or netlink.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidings.server.doctor import Gateway, Neighbour, analyse_neighbours, check_gateway, load_state

GW = Gateway("192.168.1.1", "eth0")
GW_MAC = "52:54:00:aa:bb:01"
NOW = 1_800_000_000.0

NORMAL = [
    Neighbour("192.168.1.1", GW_MAC, "eth0", "reachable"),
    Neighbour("192.168.1.20", "52:54:00:aa:bb:20", "eth0", "stale"),
    Neighbour("192.168.1.30", "52:54:00:aa:bb:30", "eth0", "reachable"),
    # The gateway's IPv6 link-local address has its MAC too: a different family, no twin.
    Neighbour("fe80::1", GW_MAC, "eth0", "stale"),
    # The same MAC seen on another interface (a bridge, a second NIC) is another link.
    Neighbour("10.0.0.5", GW_MAC, "eth1", "reachable"),
    # A failed lookup carries no MAC.
    Neighbour("192.168.1.40", None, "eth0", "failed"),
]


def _previous(mac: str) -> dict[str, object]:
    return {
        "version": 1,
        "gateways": {
            GW.address: {"mac": mac, "interface": "eth0", "seen_at": "2026-01-01T00:00:00+00:00"}
        },
    }


@pytest.mark.timeout(60)
def test_a_normal_table_reports_the_gateway_mac_and_no_warning():
    check = analyse_neighbours(NORMAL, GW, _previous(GW_MAC), NOW)
    assert check.warnings == []
    assert check.report == {
        "address": "192.168.1.1",
        "interface": "eth0",
        "mac": GW_MAC,
        "state": "reachable",
        "previous_mac": GW_MAC,
        "shares_mac_with": [],
    }
    assert check.state["gateways"]["192.168.1.1"]["mac"] == GW_MAC


@pytest.mark.timeout(60)
def test_another_ip_on_the_gateway_interface_with_its_mac_is_possible_spoofing():
    spoofed = [*NORMAL, Neighbour("192.168.1.66", GW_MAC.upper(), "eth0", "reachable")]
    check = analyse_neighbours(spoofed, GW, _previous(GW_MAC), NOW)
    assert check.report["shares_mac_with"] == ["192.168.1.66"]
    assert len(check.warnings) == 1
    warning = check.warnings[0]
    assert "possible ARP spoofing" in warning
    assert "192.168.1.66" in warning
    assert GW_MAC in warning
    assert "eth0" in warning


@pytest.mark.timeout(60)
def test_several_twins_are_named_in_address_order():
    spoofed = [
        *NORMAL,
        Neighbour("192.168.1.100", GW_MAC, "eth0", "stale"),
        Neighbour("192.168.1.9", GW_MAC, "eth0", "reachable"),
    ]
    check = analyse_neighbours(spoofed, GW, {}, NOW)
    assert check.report["shares_mac_with"] == ["192.168.1.9", "192.168.1.100"]


@pytest.mark.timeout(60)
def test_a_gateway_mac_other_than_the_remembered_one_is_reported():
    old = "52:54:00:de:ad:00"
    check = analyse_neighbours(NORMAL, GW, _previous(old), NOW)
    assert check.report["previous_mac"] == old
    assert check.report["mac"] == GW_MAC
    assert len(check.warnings) == 1
    assert "MAC changed" in check.warnings[0]
    assert old in check.warnings[0]
    assert GW_MAC in check.warnings[0]
    # The new MAC is remembered, so the next run compares against it.
    assert check.state["gateways"]["192.168.1.1"]["mac"] == GW_MAC


@pytest.mark.timeout(60)
def test_the_first_run_has_nothing_to_compare_and_remembers_the_mac():
    check = analyse_neighbours(NORMAL, GW, {}, NOW)
    assert check.warnings == []
    assert check.report["previous_mac"] is None
    assert check.state == {
        "version": 1,
        "gateways": {
            "192.168.1.1": {
                "mac": GW_MAC,
                "interface": "eth0",
                "seen_at": "2027-01-15T08:00:00+00:00",
            }
        },
    }


@pytest.mark.timeout(60)
def test_a_gateway_missing_from_the_table_is_reported_without_a_mac_and_keeps_the_state():
    table = [n for n in NORMAL if n.address != GW.address]
    previous = _previous("52:54:00:de:ad:00")
    check = analyse_neighbours(table, GW, previous, NOW)
    assert check.report["mac"] is None
    assert check.report["state"] is None
    assert check.warnings == []
    assert check.state == previous


@pytest.mark.timeout(60)
def test_no_default_gateway_gives_an_empty_report():
    check = analyse_neighbours(NORMAL, None, {}, NOW)
    assert check.report["address"] is None
    assert check.report["mac"] is None
    assert check.warnings == []


@pytest.mark.timeout(60)
def test_the_state_file_is_written_and_read_back_by_the_next_run(tmp_path: Path):
    state_file = tmp_path / "nested" / "doctor.json"
    first = check_gateway(NORMAL, GW, state_file, now=NOW)
    assert first.warnings == []
    written = json.loads(state_file.read_text())
    assert written["gateways"]["192.168.1.1"]["mac"] == GW_MAC
    assert load_state(state_file) == (written, None)

    # Next run: the gateway answers from another MAC.
    swapped = [Neighbour("192.168.1.1", "52:54:00:0f:0f:0f", "eth0", "reachable")]
    second = check_gateway(swapped, GW, state_file, now=NOW + 60)
    assert second.report["previous_mac"] == GW_MAC
    assert any("MAC changed" in w for w in second.warnings)
    assert json.loads(state_file.read_text())["gateways"]["192.168.1.1"]["mac"] == (
        "52:54:00:0f:0f:0f"
    )
    assert [p.name for p in state_file.parent.iterdir()] == ["doctor.json"]  # no temp files


@pytest.mark.timeout(60)
def test_an_unreadable_state_file_is_a_warning_not_an_error(tmp_path: Path):
    state_file = tmp_path / "doctor.json"
    state_file.write_text("{not json")
    check = check_gateway(NORMAL, GW, state_file, now=NOW)
    assert len(check.warnings) == 1
    assert "unreadable" in check.warnings[0]
    assert json.loads(state_file.read_text())["gateways"]["192.168.1.1"]["mac"] == GW_MAC


@pytest.mark.timeout(60)
def test_an_unwritable_state_file_is_a_warning_not_an_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    check = check_gateway(NORMAL, GW, blocker / "doctor.json", now=NOW)
    assert check.report["mac"] == GW_MAC
    assert any("cannot remember" in w for w in check.warnings)
