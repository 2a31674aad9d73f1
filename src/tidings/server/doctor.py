"""Network path checks: how this host reaches what it depends on, and who its gateway is.

`tidings doctor` and `GET /v1/admin/network` build the same report. Its parts are kept
apart so each can be tested on its own (docs/decisions/0013):

* **Probes**, the only code that sends packets, and only to the targets given:
  `time_connect` times TCP handshakes to one address and port.
* **Kernel tables**, read over netlink (pyroute2), which sends nothing on the wire:
  `lookup_route` asks the kernel how it would reach an address (`ip route get`),
  `read_default_gateway` and `read_neighbours` read the routing and neighbour tables.
* **Analysis**, pure: `analyse_neighbours` turns neighbour entries, the default gateway
  and the previous run's state into the gateway report, its warnings and the next state.
  The gateway check is passive: it never sends ARP, it reads what the kernel has seen.

`run` ties them together: resolve, route, time, read the gateway, remember its MAC.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_TRIES",
    "MAX_TRIES",
    "ConnectTiming",
    "Gateway",
    "GatewayCheck",
    "Neighbour",
    "RouteInfo",
    "Target",
    "analyse_neighbours",
    "check_gateway",
    "default_state_file",
    "load_state",
    "lookup_route",
    "parse_target",
    "percentile",
    "read_default_gateway",
    "read_neighbours",
    "run",
    "save_state",
    "store_report",
    "store_targets",
    "time_connect",
]

DEFAULT_TRIES = 5
MAX_TRIES = 100
DEFAULT_TIMEOUT = 2.0
STATE_ENV = "TIDINGS_DOCTOR_STATE_FILE"

# Ports a URL's scheme implies when it names none.
DEFAULT_PORTS = {
    "redis": 6379,
    "rediss": 6379,
    "postgres": 5432,
    "postgresql": 5432,
    "mysql": 3306,
    "mariadb": 3306,
    "mongodb": 27017,
    "amqp": 5672,
    "amqps": 5671,
    "nats": 4222,
    "memcached": 11211,
    "http": 80,
    "https": 443,
    "ws": 80,
    "wss": 443,
}
# Store schemes that live in this process: nothing on the network to probe.
LOCAL_STORES = frozenset({"sqlite", "memory"})

ROUTE_LOCAL = "local"
ROUTE_ON_LINK = "on-link"
ROUTE_VIA_GATEWAY = "via-gateway"

_RTN_LOCAL = 2  # rtmsg type of an address of this host
_RT_TABLE_MAIN = 254
# Linux neighbour (NUD_*) states, a bit each.
_NUD_STATES = (
    (0x01, "incomplete"),
    (0x02, "reachable"),
    (0x04, "stale"),
    (0x08, "delay"),
    (0x10, "probe"),
    (0x20, "failed"),
    (0x40, "noarp"),
    (0x80, "permanent"),
)
# Entries in these states carry no link-layer address worth comparing.
_NO_MAC_STATES = frozenset({"incomplete", "failed", "none"})
_ZERO_MAC = "00:00:00:00:00:00"
_GATEWAY_KEYS = ("address", "interface", "mac", "state", "previous_mac", "shares_mac_with")


# ---------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe: `given` is the argument as the user wrote it (shown in the report)."""

    given: str
    host: str
    port: int


def parse_target(arg: str) -> Target:
    """`host:port`, `[v6]:port` or a URL (`redis://…`, `postgresql://…`, `http://…`).

    A URL without a port gets its scheme's default one. ValueError says what to write.
    """
    text = arg.strip()
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"target {arg!r}: the port is not a number from 1 to 65535") from None
        host = parts.hostname
        if not host:
            raise ValueError(f"target {arg!r} names no host: write {scheme}://HOST[:PORT]/…")
        if port is None:
            port = DEFAULT_PORTS.get(scheme)
            if port is None:
                raise ValueError(
                    f"target {arg!r}: no default port for {scheme}://, write {scheme}://HOST:PORT"
                )
        return Target(arg, host, port)
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not text.startswith("[")):
        raise ValueError(
            f"target {arg!r}: write HOST:PORT, [IPv6]:PORT or a URL such as redis://HOST:6379"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"target {arg!r}: the port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"target {arg!r}: the port must be from 1 to 65535")
    return Target(arg, host, port)


def _redacted(url: str) -> str:
    """`url` with any password replaced by `***` (store URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def store_targets(store_url: str) -> tuple[list[Target], list[str]]:
    """The targets implied by a store URL, and notes (why there are none)."""
    scheme = urlsplit(store_url).scheme.lower()
    if scheme in LOCAL_STORES:
        return [], [f"the store is {scheme} ({_redacted(store_url)}): nothing to probe"]
    if scheme == "unix":
        return [], [f"the store is a Unix socket ({store_url}): nothing to probe"]
    target = parse_target(store_url)
    return [Target(_redacted(store_url), target.host, target.port)], []


# ---------------------------------------------------------------------------------------
# Probes: the kernel's routing decision, and TCP connect timing


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """How the kernel would send to an address.

    `route` is `local`, `on-link` or `via-gateway`; None when there is no route (then
    `error` says why).
    """

    route: str | None
    interface: str | None = None
    gateway: str | None = None
    source: str | None = None
    error: str | None = None


@contextlib.contextmanager
def _netlink() -> Iterator[Any]:
    """An open pyroute2 IPRoute socket (this process's network namespace), or None."""
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
    except ImportError:  # not Linux, or the dependency is missing
        yield None
        return
    try:
        ipr = IPRoute()
    except OSError:  # netlink refused (a sandbox without it)
        yield None
        return
    try:
        yield ipr
    finally:
        ipr.close()


def _link_name(ipr: Any, index: int | None, cache: dict[int, str]) -> str | None:
    if index is None:
        return None
    if index not in cache:
        from pyroute2 import NetlinkError

        try:
            cache[index] = str(ipr.link("get", index=index)[0].get("IFLA_IFNAME"))
        except NetlinkError:  # the link went away meanwhile: show its index
            cache[index] = f"if{index}"
    return cache[index]


def lookup_route(address: str, ipr: Any) -> RouteInfo:
    """The kernel's own routing decision for `address` (`ip route get`, over netlink).

    Sends nothing on the network: the kernel answers from its tables.
    """
    ip = ipaddress.ip_address(address)
    if ipr is None:
        if ip.is_loopback:
            return RouteInfo(ROUTE_LOCAL, "lo")
        return RouteInfo(None, error="route lookup needs Linux netlink (pyroute2)")
    from pyroute2 import NetlinkError

    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        answer = ipr.route("get", dst=address, family=family)
    except NetlinkError as exc:  # ENETUNREACH, EHOSTUNREACH (a blackhole or prohibit route)
        reason = os.strerror(exc.code) if isinstance(exc.code, int) else str(exc)
        return RouteInfo(None, error=f"no route to {address}: {reason}")
    if not answer:
        return RouteInfo(None, error=f"no route to {address}: the kernel gave no answer")
    msg = answer[0]
    names: dict[int, str] = {}
    interface = _link_name(ipr, msg.get("RTA_OIF"), names)
    source = msg.get("RTA_PREFSRC")
    if msg["type"] == _RTN_LOCAL or ip.is_loopback:
        return RouteInfo(ROUTE_LOCAL, interface, None, source)
    gateway = msg.get("RTA_GATEWAY")
    if gateway is not None:
        return RouteInfo(ROUTE_VIA_GATEWAY, interface, str(gateway), source)
    return RouteInfo(ROUTE_ON_LINK, interface, None, source)


@dataclass(frozen=True, slots=True)
class ConnectTiming:
    """TCP connect times in ms. `reachable`: at least one handshake completed."""

    reachable: bool
    samples_ms: tuple[float, ...] = ()
    failures: int = 0
    error: str | None = None


def time_connect(address: str, port: int, tries: int, timeout: float) -> ConnectTiming:
    """Time `tries` TCP handshakes to `address`:`port`; refused or timed out is reported.

    Each try opens a connection and closes it at once (one SYN/SYN-ACK round trip plus
    the kernel's own work). The first failure ends the probe when nothing has answered
    yet: repeating a refusal or a timeout only costs time.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    samples: list[float] = []
    failures = 0
    error: str | None = None
    for _ in range(tries):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            start = time.perf_counter()
            sock.connect((address, port))
            samples.append((time.perf_counter() - start) * 1000.0)
        except ConnectionRefusedError:
            failures += 1
            error = "connection refused"
        except TimeoutError:
            failures += 1
            error = f"timed out after {timeout:g} s"
        except OSError as exc:
            failures += 1
            error = exc.strerror or str(exc)
        finally:
            sock.close()
        if error is not None and not samples:
            break
    return ConnectTiming(bool(samples), tuple(samples), failures, error)


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0 < q <= 100) of `samples`; None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------------------------------
# The gateway: kernel tables (read), then a pure analysis


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One entry of the kernel's neighbour (ARP / NDP) table."""

    address: str
    mac: str | None
    interface: str
    state: str


@dataclass(frozen=True, slots=True)
class Gateway:
    """The default route's next hop."""

    address: str
    interface: str


@dataclass(slots=True)
class GatewayCheck:
    """What `analyse_neighbours` found: the report's `gateway` object, its warnings, and
    the state to remember for the next run."""

    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def _nud_state(bits: int) -> str:
    names = [name for bit, name in _NUD_STATES if bits & bit]
    return ",".join(names) or "none"


def read_default_gateway(ipr: Any) -> Gateway | None:
    """The main table's default route with the lowest metric (IPv4 first, else IPv6)."""
    if ipr is None:
        return None
    names: dict[int, str] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        best: tuple[int, Gateway] | None = None
        for msg in ipr.route("dump", family=family):
            if msg["dst_len"] != 0 or msg.get("RTA_TABLE", msg["table"]) != _RT_TABLE_MAIN:
                continue
            address = msg.get("RTA_GATEWAY")
            interface = _link_name(ipr, msg.get("RTA_OIF"), names)
            if address is None or interface is None:
                continue  # multipath or a device route: no single next hop to watch
            metric = msg.get("RTA_PRIORITY") or 0
            if best is None or metric < best[0]:
                best = (metric, Gateway(str(address), interface))
        if best is not None:
            return best[1]
    return None


def read_neighbours(ipr: Any) -> list[Neighbour]:
    """The kernel's neighbour table, read over netlink (no ARP or NDP is sent)."""
    if ipr is None:
        return []
    names: dict[int, str] = {}
    out: list[Neighbour] = []
    for msg in ipr.get_neighbours():
        address = msg.get("NDA_DST")
        interface = _link_name(ipr, msg.get("ifindex"), names)
        if address is None or interface is None:
            continue
        mac = msg.get("NDA_LLADDR")
        out.append(
            Neighbour(str(address), None if mac is None else str(mac), interface,
                      _nud_state(int(msg.get("state") or 0)))
        )  # fmt: skip
    return out


def _family(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


def analyse_neighbours(
    neighbours: Sequence[Neighbour],
    gateway: Gateway | None,
    previous: dict[str, Any],
    now: float,
) -> GatewayCheck:
    """The default gateway's MAC, and what looks wrong about it. Pure: no I/O.

    Warns when another address of the same family on the gateway's interface shows the
    gateway's MAC (one device answers for both: possible ARP spoofing), and when the
    gateway's MAC differs from the one `previous` (the last run's state) remembers. The
    returned state remembers the MAC seen now.
    """
    state: dict[str, Any] = {
        "version": 1,
        "gateways": dict(previous.get("gateways") or {}),
    }
    if gateway is None:
        empty: dict[str, Any] = dict.fromkeys(_GATEWAY_KEYS)
        empty["shares_mac_with"] = []
        return GatewayCheck(empty, [], state)
    remembered = state["gateways"].get(gateway.address)
    previous_mac = remembered.get("mac") if isinstance(remembered, dict) else None
    entry = next(
        (n for n in neighbours
         if n.address == gateway.address and n.interface == gateway.interface),
        None,
    )  # fmt: skip
    mac = None
    if entry is not None and entry.mac and entry.state not in _NO_MAC_STATES:
        mac = entry.mac.lower()
    report: dict[str, Any] = {
        "address": gateway.address,
        "interface": gateway.interface,
        "mac": mac,
        "state": None if entry is None else entry.state,
        "previous_mac": previous_mac,
        "shares_mac_with": [],
    }
    warnings: list[str] = []
    if mac is None or mac == _ZERO_MAC:
        return GatewayCheck(report, warnings, state)
    family = _family(gateway.address)
    twins = sorted(
        {n.address for n in neighbours
         if n.interface == gateway.interface and n.address != gateway.address
         and n.mac is not None and n.mac.lower() == mac and n.state not in _NO_MAC_STATES
         and _family(n.address) == family},
        key=ipaddress.ip_address,
    )  # fmt: skip
    if twins:
        report["shares_mac_with"] = twins
        warnings.append(
            f"possible ARP spoofing: {', '.join(twins)} on {gateway.interface} "
            f"show{'s' if len(twins) == 1 else ''} the gateway {gateway.address}'s MAC {mac}; "
            "one device answers for both. Find which device owns that MAC (a router with "
            "several addresses on this link also looks like this)"
        )
    if previous_mac is not None and previous_mac.lower() != mac:
        seen = remembered.get("seen_at", "the last run") if isinstance(remembered, dict) else ""
        warnings.append(
            f"the gateway {gateway.address}'s MAC changed since {seen}: was {previous_mac}, "
            f"now {mac}. A replaced router or a failover does this; so does a device "
            "impersonating the gateway. The new MAC is remembered from now on"
        )
    state["gateways"][gateway.address] = {
        "mac": mac,
        "interface": gateway.interface,
        "seen_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
    }
    return GatewayCheck(report, warnings, state)


# ---------------------------------------------------------------------------------------
# The state file: the gateway MACs seen before


def default_state_file() -> Path:
    """$TIDINGS_DOCTOR_STATE_FILE, else $XDG_STATE_HOME/tidings/doctor.json, else
    ~/.local/state/tidings/doctor.json."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "tidings" / "doctor.json"


def load_state(path: Path) -> tuple[dict[str, Any], str | None]:
    """The previous run's state (empty on the first run), and a warning if unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"state file {path} is unreadable ({exc}): starting afresh"
    if not isinstance(data, dict):
        return {}, f"state file {path} does not hold a JSON object: starting afresh"
    return data, None


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (a reader sees the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".doctor-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_gateway(
    neighbours: Sequence[Neighbour],
    gateway: Gateway | None,
    state_file: Path,
    now: float | None = None,
) -> GatewayCheck:
    """Load the state file, analyse, write the new state; file problems become warnings."""
    previous, problem = load_state(state_file)
    check = analyse_neighbours(neighbours, gateway, previous, time.time() if now is None else now)
    if problem is not None:
        check.warnings.append(problem)
    if check.state["gateways"] != (previous.get("gateways") or {}):
        try:
            save_state(state_file, check.state)
        except OSError as exc:
            check.warnings.append(
                f"cannot remember the gateway's MAC in {state_file} ({exc}): "
                "pass --state-file PATH (or TIDINGS_DOCTOR_STATE_FILE) somewhere writable"
            )
    return check


# ---------------------------------------------------------------------------------------
# The report


def _resolve(host: str, port: int) -> str:
    """The first address the system resolver gives (an IP literal is not looked up)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def _probe(target: Target, ipr: Any, tries: int, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": target.given,
        "address": None,
        "port": target.port,
        "route": None,
        "interface": None,
        "gateway": None,
        "reachable": False,
        "rtt_ms": {"p50": None, "p95": None},
        "warnings": [],
    }
    warnings: list[str] = out["warnings"]
    try:
        address = _resolve(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        warnings.append(f"cannot resolve {target.host}: {exc}")
        return out
    out["address"] = address
    route = lookup_route(address, ipr)
    out.update(route=route.route, interface=route.interface, gateway=route.gateway)
    if route.error is not None:
        warnings.append(route.error)
    timing = time_connect(address, target.port, tries, timeout)
    p50, p95 = percentile(timing.samples_ms, 50), percentile(timing.samples_ms, 95)
    out["reachable"] = timing.reachable
    out["rtt_ms"] = {"p50": _ms(p50), "p95": _ms(p95)}
    if not timing.reachable:
        warnings.append(f"not reachable on port {target.port}: {timing.error}")
    elif timing.failures:
        warnings.append(f"{timing.failures} of {tries} connects failed: {timing.error}")
    if route.route == ROUTE_VIA_GATEWAY:
        cost = (
            f"each round trip here costs {_ms(p50)} ms (p50 TCP connect; p95 {_ms(p95)} ms)"
            if p50 is not None
            else "its cost was not measured (not reachable)"
        )
        warnings.append(
            f"through a router: put the app and its database in one subnet. Traffic goes "
            f"via {route.gateway} on {route.interface}, a layer-3 hop; {cost}"
        )
    return out


def run(
    targets: Sequence[Target],
    tries: int = DEFAULT_TRIES,
    timeout: float = DEFAULT_TIMEOUT,
    state_file: Path | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The report: each target probed in turn, then the gateway check. Blocking.

    Packets go only to `targets` (and to the resolver, for names that are not IP
    literals); everything else is read from the kernel over netlink.
    """
    if not 1 <= tries <= MAX_TRIES:
        raise ValueError(f"tries must be from 1 to {MAX_TRIES}, got {tries}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    report_notes = list(notes)
    with _netlink() as ipr:
        if ipr is None:
            report_notes.append(
                "cannot ask the kernel here (netlink needs Linux and pyroute2): routes and "
                "the gateway are not checked"
            )
        probed = [_probe(t, ipr, tries, timeout) for t in targets]
        # After the probes, so the kernel has fresh entries for the hops they used.
        gateway = read_default_gateway(ipr)
        neighbours = read_neighbours(ipr)
    check = check_gateway(neighbours, gateway, state_file or default_state_file())
    if gateway is None and ipr is not None:
        report_notes.append("no default route: no gateway to check")
    elif gateway is not None and check.report["mac"] is None:
        report_notes.append(
            f"the gateway {gateway.address} has no entry in the neighbour table (no recent "
            "traffic through it), so its MAC was not checked; nothing was sent to find it"
        )
    return {
        "targets": probed,
        "gateway": check.report,
        "warnings": check.warnings,
        "notes": report_notes,
    }


def store_report(
    store_url: str,
    tries: int = DEFAULT_TRIES,
    timeout: float = DEFAULT_TIMEOUT,
    state_file: Path | None = None,
) -> dict[str, Any]:
    """The report for the host of a store URL (nothing to probe for SQLite or memory)."""
    targets, notes = store_targets(store_url)
    return run(targets, tries, timeout, state_file, notes)
