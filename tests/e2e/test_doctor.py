"""`tidings doctor` against hosts the tests build themselves, in network namespaces.

Each test gets its own namespaces (named after this process's pid and a counter) and
removes them afterwards, also when it fails:

    client ─ c0 10.71.1.1/24 ══ h0 10.71.1.2/24 ─ host       (the same subnet: on-link)
           └ c1 10.71.2.2/24 ══ r0 10.71.2.1/24 ─ router   (forwards; the client's default)
                                  router ─ r1 10.71.3.1/24 ══ b0 10.71.3.2/24 ─ behind

The doctor runs inside `client` (`ip netns exec`), so the routes, the neighbour table and
the default gateway it reads are the client's. IPv6 is off in every namespace so that
nothing but what the tests and the doctor send crosses the veths; packets go only to
loopback and to these namespaces.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.protocol.errors import TidingsError
from tidings.server.http import admin
from tidings.server.principals import Permissions, Principal
from tidings.server.settings import Settings

ON_LINK = "10.71.1.2"
CLIENT_ON_LINK = "10.71.1.1"
ROUTER = "10.71.2.1"
BEHIND = "10.71.3.2"
ROUTED_WARNING = "through a router: put the app and its database in one subnet"

# A TCP server that accepts and closes; prints "ready" once it listens.
LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

_serial = itertools.count()


def _ip(*args: str) -> str:
    """Run `ip ARGS`; RuntimeError with ip's own message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


class Lab:
    """Four namespaces wired as in the module docstring, and the processes started there."""

    def __init__(self, tmp: Path) -> None:
        n = next(_serial)
        self.ns = {role: f"tdoc{os.getpid()}-{n}-{role}" for role in
                   ("client", "host", "router", "behind")}  # fmt: skip
        self.created: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.state_file = tmp / "doctor-state.json"

    def build(self) -> None:
        if shutil.which("ip") is None:
            pytest.fail("`ip` (iproute2) is not installed: these tests build network namespaces")
        for role, name in self.ns.items():
            try:
                _ip("netns", "add", name)
            except RuntimeError as exc:
                pytest.fail(
                    f"cannot create network namespace {name} for the {role}: {exc}. These tests "
                    "need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip netns`"
                )
            self.created.append(name)
            self.sysctl(role, "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
            _ip("-n", name, "link", "set", "lo", "up")
        c, h, r, b = (self.ns[k] for k in ("client", "host", "router", "behind"))
        _ip("-n", c, "link", "add", "c0", "type", "veth", "peer", "name", "h0", "netns", h)
        _ip("-n", c, "link", "add", "c1", "type", "veth", "peer", "name", "r0", "netns", r)
        _ip("-n", r, "link", "add", "r1", "type", "veth", "peer", "name", "b0", "netns", b)
        for ns, dev, cidr in ((c, "c0", "10.71.1.1/24"), (h, "h0", "10.71.1.2/24"),
                              (c, "c1", "10.71.2.2/24"), (r, "r0", "10.71.2.1/24"),
                              (r, "r1", "10.71.3.1/24"), (b, "b0", "10.71.3.2/24")):  # fmt: skip
            _ip("-n", ns, "addr", "add", cidr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        self.sysctl("router", "net.ipv4.ip_forward=1")
        _ip("-n", c, "route", "add", "default", "via", ROUTER, "dev", "c1")
        _ip("-n", b, "route", "add", "default", "via", "10.71.3.1", "dev", "b0")

    def sysctl(self, role: str, *settings: str) -> None:
        _ip("netns", "exec", self.ns[role], "sysctl", "-q", "-w", *settings)

    def listen(self, role: str, address: str, port: int) -> None:
        """A TCP listener on `address`:`port` inside the `role` namespace."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[role], sys.executable, "-c", LISTENER,
             address, str(port)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.procs.append(proc)  # `ip netns exec` execs: this pid is the listener's
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"listener {address}:{port} in {role} did not start")

    def mac(self, role: str, dev: str) -> str:
        return str(json.loads(_ip("-n", self.ns[role], "-j", "link", "show", dev))[0]["address"])

    def tx_packets(self, dev: str) -> int:
        info = json.loads(_ip("-n", self.ns["client"], "-j", "-s", "link", "show", dev))[0]
        return int(info["stats64"]["tx"]["packets"])

    def doctor(
        self, *args: str, json_out: bool = True, env: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        """Run `tidings doctor ARGS` inside the client namespace: (exit code, report, stderr)."""
        cmd = [
            "ip", "netns", "exec", self.ns["client"], sys.executable, "-m", "tidings", "doctor",
            "--state-file", str(self.state_file), "--tries", "5", "--timeout", "2",
            *(["--json"] if json_out else []), *args,
        ]  # fmt: skip
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        run_env.update(env or {})
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=40, env=run_env, check=False
        )
        out = json.loads(done.stdout) if json_out and done.stdout.strip() else done.stdout
        return done.returncode, out, done.stderr

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        problems = []
        for name in self.created:
            try:
                _ip("netns", "del", name)
            except RuntimeError as exc:
                problems.append(str(exc))
        if problems:
            raise RuntimeError("; ".join(problems))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """The four namespaces with listeners: client 0.0.0.0:7000 (loopback and its own
    address), host 10.71.1.2:5432, behind 10.71.3.2:6379. Always removed afterwards."""
    built = Lab(tmp_path)
    try:
        built.build()
        built.listen("client", "0.0.0.0", 7000)
        built.listen("host", ON_LINK, 5432)
        built.listen("behind", BEHIND, 6379)
        yield built
    finally:
        built.teardown()


def _by_target(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in report["targets"]}


def _assert_rtt(target: dict[str, Any]) -> None:
    rtt = target["rtt_ms"]
    assert rtt["p50"] is not None, target
    assert 0 < rtt["p50"] <= rtt["p95"], target


@pytest.mark.timeout(60)
def test_routes_rtts_and_an_unreachable_port_from_inside_a_namespace(lab: Lab):
    """Loopback and the client's own address are local; the host in its subnet is on-link
    through c0; the host behind the router is via-gateway 10.71.2.1 on c1, with the routed
    warning; a port nobody listens on is reachable: false — and the doctor exits 1."""
    args = ["127.0.0.1:7000", f"{CLIENT_ON_LINK}:7000", f"postgresql://app@{ON_LINK}/db",
            f"redis://{BEHIND}/0", f"{ON_LINK}:5999"]  # fmt: skip
    code, report, stderr = lab.doctor(*args)
    assert code == 1, stderr
    assert [t["target"] for t in report["targets"]] == args
    targets = _by_target(report)

    loop = targets["127.0.0.1:7000"]
    assert (loop["address"], loop["route"], loop["interface"]) == ("127.0.0.1", "local", "lo")
    assert loop["gateway"] is None
    assert loop["reachable"] is True
    assert loop["warnings"] == []
    _assert_rtt(loop)

    own = targets[f"{CLIENT_ON_LINK}:7000"]
    assert own["route"] == "local"
    assert own["reachable"] is True

    on_link = targets[f"postgresql://app@{ON_LINK}/db"]
    assert (on_link["address"], on_link["port"]) == (ON_LINK, 5432)  # the scheme's port
    assert (on_link["route"], on_link["interface"], on_link["gateway"]) == ("on-link", "c0", None)
    assert on_link["reachable"] is True
    assert on_link["warnings"] == []
    _assert_rtt(on_link)

    routed = targets[f"redis://{BEHIND}/0"]
    assert (routed["address"], routed["port"]) == (BEHIND, 6379)
    assert (routed["route"], routed["interface"], routed["gateway"]) == (
        "via-gateway", "c1", ROUTER
    )  # fmt: skip
    assert routed["reachable"] is True
    _assert_rtt(routed)
    [warning] = routed["warnings"]
    assert ROUTED_WARNING in warning
    assert f"{routed['rtt_ms']['p50']} ms" in warning  # the measured cost

    closed = targets[f"{ON_LINK}:5999"]
    assert closed["reachable"] is False
    assert closed["rtt_ms"] == {"p50": None, "p95": None}
    assert closed["route"] == "on-link"
    assert any("refused" in w for w in closed["warnings"])

    # The default gateway, read from the client's neighbour table after the probes.
    assert report["gateway"]["address"] == ROUTER
    assert report["gateway"]["interface"] == "c1"
    assert report["gateway"]["mac"] == lab.mac("router", "r0")
    assert report["warnings"] == []


@pytest.mark.timeout(60)
def test_the_table_for_people_shows_the_same_report(lab: Lab):
    code, out, stderr = lab.doctor(
        f"{ON_LINK}:5432", f"{BEHIND}:6379", json_out=False, env={"COLUMNS": "160"}
    )
    assert code == 0, stderr
    assert "on-link" in out
    assert "via-gateway" in out
    assert "c0" in out
    assert ROUTER in out
    assert ROUTED_WARNING in out
    assert lab.mac("router", "r0") in out


@pytest.mark.timeout(60)
def test_spoofing_and_a_changed_gateway_mac_are_read_from_the_kernel_table(lab: Lab):
    """Another address on c1 showing the router's MAC, and a state file remembering another
    MAC, both become warnings; the state file then holds the MAC seen now."""
    router_mac = lab.mac("router", "r0")
    lab.state_file.write_text(
        json.dumps({"version": 1, "gateways": {ROUTER: {"mac": "02:00:00:00:00:99"}}})
    )
    _ip("-n", lab.ns["client"], "neigh", "replace", "10.71.2.77", "lladdr", router_mac,
        "dev", "c1", "nud", "permanent")  # fmt: skip
    code, report, stderr = lab.doctor(f"redis://{BEHIND}/0")
    assert code == 0, stderr
    gateway = report["gateway"]
    assert (gateway["address"], gateway["mac"]) == (ROUTER, router_mac)
    assert gateway["shares_mac_with"] == ["10.71.2.77"]
    assert gateway["previous_mac"] == "02:00:00:00:00:99"
    spoof = [w for w in report["warnings"] if "possible ARP spoofing" in w]
    changed = [w for w in report["warnings"] if "MAC changed" in w]
    assert len(spoof) == 1
    assert "10.71.2.77" in spoof[0]
    assert len(changed) == 1
    assert "02:00:00:00:00:99" in changed[0]
    assert json.loads(lab.state_file.read_text())["gateways"][ROUTER]["mac"] == router_mac

    # The twin gone and the MAC remembered: a clean report.
    _ip("-n", lab.ns["client"], "neigh", "del", "10.71.2.77", "dev", "c1")
    code, report, stderr = lab.doctor(f"redis://{BEHIND}/0")
    assert code == 0, stderr
    assert report["warnings"] == []
    assert report["gateway"]["previous_mac"] == router_mac


@pytest.mark.timeout(60)
def test_the_doctor_sends_packets_only_to_its_targets(lab: Lab):
    """Counted on the client's veths: a loopback target sends nothing on either, an on-link
    target nothing towards the router. The gateway check only reads the kernel's table."""
    before = {dev: lab.tx_packets(dev) for dev in ("c0", "c1")}
    code, report, stderr = lab.doctor("127.0.0.1:7000")
    assert code == 0, stderr
    assert report["gateway"]["address"] == ROUTER
    assert report["gateway"]["mac"] is None  # never talked to it, and did not ask
    assert {dev: lab.tx_packets(dev) for dev in ("c0", "c1")} == before

    code, report, stderr = lab.doctor(f"{ON_LINK}:5432")
    assert code == 0, stderr
    assert lab.tx_packets("c0") > before["c0"]
    assert lab.tx_packets("c1") == before["c1"]

    code, report, stderr = lab.doctor(f"{BEHIND}:6379")
    assert code == 0, stderr
    assert lab.tx_packets("c1") > before["c1"]  # the counters do count


@pytest.mark.timeout(60)
def test_with_no_target_the_store_host_is_checked(lab: Lab):
    code, report, stderr = lab.doctor("--store", "sqlite:///tidings.db")
    assert code == 0, stderr
    assert report["targets"] == []
    assert any("nothing to probe" in n for n in report["notes"])

    # From TIDINGS_STORE; the password is not repeated in the report.
    code, report, stderr = lab.doctor(env={"TIDINGS_STORE": f"redis://:s3cret@{BEHIND}/0"})
    assert code == 0, stderr
    [target] = report["targets"]
    assert target["target"] == f"redis://:***@{BEHIND}/0"
    assert (target["route"], target["gateway"], target["reachable"]) == (
        "via-gateway", ROUTER, True
    )  # fmt: skip
    assert "s3cret" not in json.dumps(report)


@pytest.mark.timeout(60)
def test_a_target_that_is_not_host_port_or_a_url_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "doctor", "--json", "db.internal"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr
    assert done.stdout == ""


# ---------------------------------------------------------------------------------------
# GET /v1/admin/network: the same report, for the server's store host


class _As:
    """Sets the request's principal, as the app does after authenticating it."""

    def __init__(self, app: ASGIApp, principal: Principal) -> None:
        self.app, self.principal = app, principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["tidings.principal"] = self.principal
        await self.app(scope, receive, send)


async def _tidings_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidingsError)
    return Response(json.dumps(exc.to_wire()), exc.status, media_type="application/json")


async def _get(app: ASGIApp, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
        return await client.get(path)


@pytest.fixture
def loopback_listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts (and closes) connections."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


@pytest.mark.timeout(60)
def test_admin_network_reports_the_store_host_to_admins_only(
    loopback_listener: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("TIDINGS_DOCTOR_STATE_FILE", str(tmp_path / "server-state.json"))
    store = f"redis://127.0.0.1:{loopback_listener}/0"
    inner = Starlette(routes=admin.routes, exception_handlers={TidingsError: _tidings_error})
    inner.state.settings = Settings(store=store)
    ops = Principal("ops", Permissions(admin=True))
    reader = Principal("reader", Permissions(subscribe=("*",)))

    answer = asyncio.run(_get(_As(inner, ops), "/v1/admin/network?tries=3"))
    assert answer.status_code == 200
    report = answer.json()
    assert set(report) == {"targets", "gateway", "warnings", "notes"}
    [target] = report["targets"]
    assert target["target"] == store
    assert (target["address"], target["port"]) == ("127.0.0.1", loopback_listener)
    assert (target["route"], target["reachable"]) == ("local", True)
    assert 0 < target["rtt_ms"]["p50"] <= target["rtt_ms"]["p95"]

    answer = asyncio.run(_get(_As(inner, reader), "/v1/admin/network"))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"]
