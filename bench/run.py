#!/usr/bin/env python3
"""tidings benchmarks, side by side with a named peer, alternating A B A B in one run.

Usage: `.venv/bin/python bench/run.py [--quick] [--rounds N] [--only NAME,...] [--lp N]`
(`make bench`). NAMEs: sse, publish, jobs, longpoll, ws, msgpack, attack, h2, lists,
schedules, limits, bridges.

It installs what it compares with when missing (Debian `nginx`, `libnginx-mod-nchan`,
`wrk`, `redis-server`, `nghttp2-client` for h2load; a separate venv bench/.peers-venv
with sse-starlette, uvicorn, starlette, celery, redis and aio-pika), compiles the C load client
(bench/sseload.c) into bench/.build/, starts every server on a free loopback port, and
stops everything it started. Each round starts fresh server processes, so memory is
measured on a fresh process. Where it may, it raises net.core.somaxconn to 8192 for the
run and restores it after (see `accept_queue`; `--default-somaxconn` keeps the kernel's
setting, to measure connecting on a default machine). `bridges` needs a RabbitMQ on
127.0.0.1:5672 (guest/guest; skipped when none answers): it declares a queue of its own
per round and deletes it after (bench/bridges.py). The machine is shared: only ratios
measured in the same run mean anything.

Prints one table per measurement (`measure | tidings | peer | ratio | target | ok?`, the
figures being medians over the rounds) and the raw per-round figures, and writes them to
bench/.build/results.json. Exits 0 when targets are missed: it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / ".build"
PEERS = BENCH / "peers"
PEERS_VENV = BENCH / ".peers-venv"
PEERS_BIN = PEERS_VENV / "bin"
PEER_PACKAGES = [
    "sse-starlette",
    "uvicorn[standard]",
    "starlette",
    "celery[redis]",
    "redis",
    "aio-pika",
]
PEER_IMPORTS = (
    "import sse_starlette, uvicorn, uvloop, httptools, starlette, celery, redis, aio_pika"
)
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
HOST = "127.0.0.1"
CHANNEL = "bench"


def tidings_bin() -> str:
    """The `tidings` script next to the running interpreter (the project's .venv)."""
    here = Path(sys.executable).parent / "tidings"
    if here.exists():
        return str(here)
    found = shutil.which("tidings")
    if found is None:
        sys.exit("tidings is not installed: run `make venv` first")
    return found


# ---------------------------------------------------------------------------- processes


class Procs:
    """Every process this run started, stopped by PID (never by name) on exit."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[Any]] = []
        self.logs = Path(tempfile.mkdtemp(prefix="tidings-bench-logs-"))

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[Any]:
        log = (self.logs / f"{name}.log").open("ab")
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        log.close()
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
        """Stop one process we started, and any children it left behind (by PID)."""
        children = child_pids(proc.pid)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in children:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


PROCS = Procs()


def child_pids(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
# The accept queue the peers here ask for (uvicorn's backlog=8192 in the Starlette peers,
# Nchan's listen backlog=16384): Linux caps it at net.core.somaxconn, 4096 by default.
# tidings asks for 16384 and, under a lower cap, splits its port into a group of
# SO_REUSEPORT sockets (src/tidings/server/runner.py).
ACCEPT_QUEUE = 8192


@contextlib.contextmanager
def accept_queue(keep: bool = False) -> Iterator[str]:
    """Raise net.core.somaxconn to ACCEPT_QUEUE for the run (restored after) where it is
    lower and this process may, unless `keep`; yields a note saying what was done.

    8,000 subscribers connecting at once overflow a 4096-connection accept queue while a
    Python server is busy with the first thousands: the kernel drops a SYN, and that
    client's connect() waits 1 s for its retransmission — a second added to connect_ms
    (the `listen_overflows` column counts it). Production push servers raise this limit.
    """
    try:
        before = int(SOMAXCONN.read_text())
    except OSError:
        yield "net.core.somaxconn unreadable: accept-queue overflows are counted, not avoided"
        return
    if keep:
        yield f"net.core.somaxconn {before} kept (--default-somaxconn)"
        return
    if before >= ACCEPT_QUEUE:
        yield f"net.core.somaxconn {before} (no change)"
        return
    try:
        SOMAXCONN.write_text(f"{ACCEPT_QUEUE}\n")
    except OSError:
        yield (
            f"net.core.somaxconn {before}, not raisable here: a burst larger than the accept "
            "queue costs its client a 1 s SYN retransmission (listen_overflows counts them)"
        )
        return
    try:
        yield f"net.core.somaxconn raised {before} -> {ACCEPT_QUEUE} for this run (restored after)"
    finally:
        with contextlib.suppress(OSError):
            SOMAXCONN.write_text(f"{before}\n")


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        names, values = (ln.split() for ln in lines if ln.startswith("TcpExt:"))
        return int(values[names.index("ListenOverflows")])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} (logs in {PROCS.logs})")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s")


# ---------------------------------------------------------------------------- setup


def sh(argv: list[str], check: bool = True) -> int:
    print("  $", " ".join(argv), flush=True)
    return subprocess.run(argv, check=check, stdout=subprocess.DEVNULL).returncode


def ensure_debian(packages: dict[str, Callable[[], bool]]) -> None:
    """apt-get install the packages whose check fails (apt-get update first if needed)."""
    missing = [name for name, present in packages.items() if not present()]
    if not missing:
        return
    print(f"installing Debian packages: {' '.join(missing)}")
    sudo = ["sudo"] if os.geteuid() != 0 and shutil.which("sudo") else []
    os.environ["DEBIAN_FRONTEND"] = "noninteractive"
    install = [*sudo, "apt-get", "install", "-y", "-q", *missing]
    if sh(install, check=False) != 0:
        sh([*sudo, "apt-get", "update", "-q"], check=False)
        sh(install, check=False)


def ensure_peers_venv() -> bool:
    def importable() -> bool:
        py = PEERS_BIN / "python"
        return (
            py.exists()
            and subprocess.run(
                [str(py), "-c", PEER_IMPORTS], capture_output=True, check=False
            ).returncode
            == 0
        )

    if importable():
        return True
    print(f"creating {PEERS_VENV.relative_to(ROOT)} with {' '.join(PEER_PACKAGES)}")
    base = getattr(sys, "_base_executable", sys.executable)
    sh([base, "-m", "venv", str(PEERS_VENV)])
    sh([str(PEERS_BIN / "python"), "-m", "pip", "install", "-q", *PEER_PACKAGES])
    return importable()


def build_sseload() -> Path:
    BUILD.mkdir(exist_ok=True)
    out = BUILD / "sseload"
    src = BENCH / "sseload.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        cc = os.environ.get("CC", "cc")
        sh([cc, "-O2", "-o", str(out), str(src)])
    return out


@dataclass
class Tools:
    sseload: Path
    nchan: bool
    wrk: bool
    redis: bool
    peers: bool
    h2load: bool


def setup() -> Tools:
    print("== setup")
    ensure_debian(
        {
            "nginx": lambda: shutil.which("nginx") is not None,
            "libnginx-mod-nchan": NCHAN_MODULE.exists,
            "wrk": lambda: shutil.which("wrk") is not None,
            "redis-server": lambda: shutil.which("redis-server") is not None,
            "nghttp2-client": lambda: shutil.which("h2load") is not None,
        }
    )
    tools = Tools(
        sseload=build_sseload(),
        nchan=shutil.which("nginx") is not None and NCHAN_MODULE.exists(),
        wrk=shutil.which("wrk") is not None,
        redis=shutil.which("redis-server") is not None,
        peers=ensure_peers_venv(),
        h2load=shutil.which("h2load") is not None,
    )
    for name in ("nchan", "wrk", "redis", "peers", "h2load"):
        if not getattr(tools, name):
            print(f"  ! {name} unavailable: its comparisons are skipped")
    return tools


# ---------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running server under test: where to subscribe and publish, whose memory to read."""

    name: str
    port: int
    pid: int  # the process whose RSS is measured (nginx: the worker)
    sub_path: str = ""
    ws_path: str = ""
    lp_path: str = ""
    pub_path: str = ""


@contextlib.contextmanager
def tidings_server(
    store: str,
    name: str,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    before: Callable[[str], None] | None = None,
) -> Iterator[Server]:
    """A `tidings serve` on `store` (`@TMP@` is a fresh folder) with extra `args`;
    `before(store_url)` runs before it starts (e.g. to add users)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        url = store.replace("@TMP@", tmp)
        if before is not None:
            before(url)
        proc = PROCS.start(
            name,
            [
                tidings_bin(),
                "serve",
                "--host",
                HOST,
                "--port",
                str(port),
                "--store",
                url,
                "--log-level",
                "warning",
                *(args or []),
            ],
            env=env,
        )
        try:
            wait_port(port, proc)
            c = f"/v1/channels/{CHANNEL}"
            yield Server(
                name,
                port,
                proc.pid,
                f"{c}/events",
                f"{c}/ws",
                f"{c}/messages?after=@AFTER@&wait=30",
                f"{c}/messages",
            )
        finally:
            PROCS.stop(proc)


@contextlib.contextmanager
def nchan_server() -> Iterator[Server]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-nchan-") as tmp:
        conf = Path(tmp) / "nchan.conf"
        text = (PEERS / "nchan.conf.in").read_text()
        conf.write_text(text.replace("@PORT@", str(port)).replace("@MODULE@", str(NCHAN_MODULE)))
        proc = PROCS.start(
            "nchan", ["nginx", "-c", str(conf), "-p", tmp + "/", "-g", "daemon off;"]
        )
        try:
            wait_port(port, proc)
            deadline = time.monotonic() + 5
            while not (workers := child_pids(proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(workers) != 1:
                raise RuntimeError(f"expected one nginx worker, found {workers}")
            q = f"?ch={CHANNEL}"
            yield Server("nchan", port, workers[0], f"/sub{q}", f"/ws{q}", f"/lp{q}", f"/pub{q}")
        finally:
            PROCS.stop(proc)


@contextlib.contextmanager
def uvicorn_peer(module: str, name: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    proc = PROCS.start(
        name,
        [
            str(PEERS_BIN / "uvicorn"),
            f"{module}:app",
            "--app-dir",
            str(PEERS),
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "8192",
        ],
        env=env,
    )
    try:
        wait_port(port, proc)
        yield Server(name, port, proc.pid, f"/events/{CHANNEL}", "", "", f"/publish/{CHANNEL}")
    finally:
        PROCS.stop(proc)


# ---------------------------------------------------------------------------- clients


def publish(
    port: int,
    path: str,
    count: int,
    template: str = "msg {i} ts={ts}",
    context: ssl.SSLContext | None = None,
) -> str:
    """POST `count` bodies back to back on one keep-alive connection (HTTP/1.1; over TLS
    with `context`); the last answer."""
    conn = (
        http.client.HTTPSConnection(HOST, port, timeout=60, context=context)
        if context is not None
        else http.client.HTTPConnection(HOST, port, timeout=60)
    )
    answer = b""
    try:
        for i in range(count):
            body = template.format(i=i, ts=time.time_ns() // 1000).encode()
            conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"publish {i} to {path}: HTTP {resp.status} {answer[:200]!r}")
    finally:
        conn.close()
    return answer.decode()


DONE_RE = re.compile(r"(\w+)=([0-9.]+)")


@dataclass
class Load:
    """One sseload run."""

    proc: subprocess.Popen[str]
    ready_ms: float


def start_load(
    tools: Tools,
    port: int,
    path: str,
    conns: int,
    events: int,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Load:
    argv = [str(tools.sseload), HOST, str(port), path, str(conns), str(events), str(timeout)]
    return start_load_argv(argv, env)


def start_load_argv(
    argv: list[str], env: dict[str, str] | None = None, name: str = "sseload"
) -> Load:
    """Start a load client that prints `READY <ms>` then a `DONE` line (sseload, h2sse)."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.wait(5)
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{name} did not get ready: {line!r} {err[-500:]!r}")
    return Load(proc, float(line.split()[1]))


def finish_load(load: Load, timeout: float) -> dict[str, float]:
    out, err = load.proc.communicate(timeout=timeout)
    done = [ln for ln in out.splitlines() if ln.startswith("DONE")]
    if not done:
        raise RuntimeError(f"sseload printed no DONE line: {out[-300:]!r} {err[-300:]!r}")
    return {k: float(v) for k, v in DONE_RE.findall(done[-1])}


# ---------------------------------------------------------------------------- results


@dataclass
class Metric:
    """One row: `target` is ("ratio>=", x), ("ratio<=", x), ("<=", x), ("all", None) or
    None (reported)."""

    name: str
    unit: str
    target: tuple[str, float | None] | None = None
    fmt: str = "{:,.0f}"


@dataclass
class Measurement:
    title: str
    peer: str
    metrics: list[Metric]
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, system: str, figures: dict[str, float]) -> None:
        self.rounds.setdefault(system, []).append(figures)
        shown = "  ".join(f"{k}={v:,.2f}" if v % 1 else f"{k}={v:,.0f}" for k, v in figures.items())
        print(f"    {system:<18} {shown}", flush=True)

    def median(self, system: str, metric: str) -> float | None:
        vals = [r[metric] for r in self.rounds.get(system, []) if metric in r]
        return statistics.median(vals) if vals else None


def fmt_value(m: Metric, v: float | None) -> str:
    return "—" if v is None else m.fmt.format(v) + (f" {m.unit}" if m.unit else "")


def judge(m: Metric, ours: float | None, peer: float | None, expected: float | None) -> str:
    if m.target is None or ours is None:
        return "—"
    kind, x = m.target
    if kind == "ratio>=":
        if peer is None or not peer:
            return "—"
        return "yes" if ours / peer >= (x or 0) else "NO"
    if kind == "ratio<=":
        if peer is None or not peer:
            return "—"
        return "yes" if ours / peer <= (x or 0) else "NO"
    if kind == "<=":
        return "yes" if ours <= (x or 0) else "NO"
    if kind == "all":
        return "yes" if expected is not None and ours >= expected else "NO"
    return "—"


def target_text(m: Metric) -> str:
    if m.target is None:
        return "reported"
    kind, x = m.target
    if kind == "ratio>=":
        return f">= {x:g}x"
    if kind == "ratio<=":
        return f"<= {x:g}x"
    if kind == "<=":
        return f"<= {x:g} {m.unit}".strip()
    return "all"


def render(
    meas: Measurement,
    ours: list[str],
    expected: dict[str, float] | None = None,
    column: str = "tidings",
) -> str:
    rows = [["measure", column, meas.peer, "ratio", "target", "ok?"]]
    for system in ours:
        for m in meas.metrics:
            a, b = meas.median(system, m.name), meas.median(meas.peer, m.name)
            ratio = f"{a / b:.2f}x" if a is not None and b else "—"
            label = f"{m.name} [{system}]" if len(ours) > 1 else m.name
            exp = (expected or {}).get(m.name)
            rows.append(
                [
                    label,
                    fmt_value(m, a),
                    fmt_value(m, b),
                    ratio,
                    target_text(m),
                    judge(m, a, b, exp),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"### {meas.title}", ""]
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append("")
    lines.append("raw rounds:")
    for system, rounds in meas.rounds.items():
        for i, r in enumerate(rounds, 1):
            shown = ", ".join(f"{k}={v:,.2f}" if v % 1 else f"{k}={v:,.0f}" for k, v in r.items())
            lines.append(f"  {system} #{i}: {shown}")
    lines.extend(f"note: {n}" for n in meas.notes)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- measurements


@dataclass
class Config:
    rounds: int
    subs: int
    msgs: int
    lp: int
    jobs: int
    wrk_secs: int
    starlette_subs: int
    attack_slowloris: int = 1000
    attack_requests: int = 300
    bridge_subs: int = 2000
    bridge_paced: int = 25
    bridge_burst: int = 100


def fanout_round(
    tools: Tools, srv: Server, path: str, cfg: Config, subs: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    rss0 = rss_kib(srv.pid)
    overflows = listen_overflows()
    load = start_load(tools, srv.port, path, subs, cfg.msgs, 300, env)
    overflows = listen_overflows() - overflows
    time.sleep(0.5)  # let the server finish the last handshakes before reading its memory
    rss1 = rss_kib(srv.pid)
    pub = time.perf_counter()
    publish(srv.port, srv.pub_path, cfg.msgs)
    pub_secs = time.perf_counter() - pub
    done = finish_load(load, 330)
    return {
        "deliveries_s": done["rate"],
        "p50_ms": done["p50_ms"],
        "p99_ms": done["p99_ms"],
        "connect_ms": load.ready_ms,
        "listen_overflows": overflows,
        "rss_kib_sub": (rss1 - rss0) / subs,
        "delivered": done["events"],
        "publish_s": pub_secs,
    }


FANOUT_METRICS = [
    Metric("deliveries_s", "/s", ("ratio>=", 0.8)),
    Metric("p99_ms", "ms", None, "{:,.1f}"),
    Metric("connect_ms", "ms", ("<=", 1500)),
    Metric("listen_overflows", "", None, "{:,.0f}"),
    Metric("rss_kib_sub", "KiB", ("<=", 12), "{:,.1f}"),
    Metric("delivered", "", ("all", None)),
]


def bench_sse(tools: Tools, cfg: Config) -> list[str]:
    meas = Measurement(
        f"1. SSE fan-out: {cfg.subs:,} subscribers, one channel, {cfg.msgs} back-to-back "
        "publishes of ~30 bytes",
        "nchan",
        FANOUT_METRICS,
    )
    systems: list[tuple[str, Callable[[], Any]]] = [
        ("tidings-memory", lambda: tidings_server("memory://", "tidings-memory")),
        ("tidings-sqlite", lambda: tidings_server("sqlite:///@TMP@/bench.db", "tidings-sqlite")),
    ]
    if tools.nchan:
        systems.append(("nchan", nchan_server))
    else:
        meas.notes.append("Nchan unavailable: no peer figures")
    sse_st = Measurement(
        f"1b. SSE fan-out vs sse-starlette: {cfg.starlette_subs:,} subscribers, {cfg.msgs} "
        "publishes (tidings-memory measured again at this size)",
        "sse-starlette",
        [
            Metric("deliveries_s", "/s"),
            Metric("p99_ms", "ms", None, "{:,.1f}"),
            Metric("connect_ms", "ms"),
            Metric("rss_kib_sub", "KiB", None, "{:,.1f}"),
            Metric("delivered", "", ("all", None)),
        ],
    )
    print(f"== {meas.title}")
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        for name, start in systems:
            with start() as srv:
                meas.add(name, fanout_round(tools, srv, srv.sub_path, cfg, cfg.subs))
        if tools.peers:
            for name, start in [
                ("tidings-memory", lambda: tidings_server("memory://", "tidings-memory")),
                ("sse-starlette", lambda: uvicorn_peer("sse_starlette_app", "sse-starlette")),
            ]:
                with start() as srv:
                    sse_st.add(
                        name, fanout_round(tools, srv, srv.sub_path, cfg, cfg.starlette_subs)
                    )
    expected = {"delivered": float(cfg.subs * cfg.msgs)}
    out = [render(meas, ["tidings-memory", "tidings-sqlite"], expected)]
    if tools.peers:
        out.append(
            render(sse_st, ["tidings-memory"], {"delivered": float(cfg.starlette_subs * cfg.msgs)})
        )
    RESULTS["sse"] = meas.rounds
    RESULTS["sse_starlette"] = sse_st.rounds
    return out


def wrk_round(port: int, path: str, secs: int, body: str, ctype: str) -> dict[str, float]:
    env = {**os.environ, "BENCH_BODY": body, "BENCH_CTYPE": ctype}
    url = f"http://{HOST}:{port}{path}"
    argv = ["wrk", "-t1", "-c64", "--latency", "-s", str(BENCH / "wrk_post.lua"), url]
    subprocess.run([*argv[:4], "-d1s", *argv[4:]], env=env, capture_output=True, check=True)
    out = subprocess.run(
        [*argv[:4], f"-d{secs}s", *argv[4:]], env=env, capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s*([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "req_s": rps,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": float(sum(int(x) for x in re.findall(r"\d+", errs.group(0))))
        if errs
        else 0.0,
    }


def bench_publish(tools: Tools, cfg: Config) -> list[str]:
    meas = Measurement(
        f"2. Durable publish: wrk -t1 -c64 -d{cfg.wrk_secs}s, ~30-byte text to one channel "
        "(tidings on SQLite) vs a bare Starlette route parsing a JSON body",
        "starlette-json",
        [
            Metric("req_s", "/s", ("ratio>=", 0.5)),
            Metric("p99_ms", "ms", None, "{:,.1f}"),
            Metric("non2xx", "", None),
        ],
    )
    if not (tools.wrk and tools.peers):
        return [f"### {meas.title}\n\nskipped: wrk or the peers' venv is unavailable"]
    print(f"== {meas.title}")
    text = "msg 0 ts=1700000000000000"
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        with tidings_server("sqlite:///@TMP@/bench.db", "tidings-sqlite") as srv:
            meas.add(
                "tidings-sqlite",
                wrk_round(srv.port, srv.pub_path, cfg.wrk_secs, text, "text/plain"),
            )
        with uvicorn_peer("starlette_json", "starlette-json") as srv:
            meas.add(
                "starlette-json",
                wrk_round(
                    srv.port,
                    srv.pub_path,
                    cfg.wrk_secs,
                    json.dumps({"data": text}),
                    "application/json",
                ),
            )
    RESULTS["publish"] = meas.rounds
    return [render(meas, ["tidings-sqlite"])]


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[int, int]]:
    """A private redis-server that keeps nothing on disk: (its port, its pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-redis-") as tmp:
        proc = PROCS.start(
            "redis",
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
        )
        try:
            wait_port(port, proc)
            yield port, proc.pid
        finally:
            PROCS.stop(proc)


def run_json(
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> dict[str, float]:
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{argv[1]} failed: {res.stderr[-800:]}")
    data: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return data


def wait_for_worker(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Return once the server lists a worker (`GET /v1/workers`): it has started leasing,
    so its start-up is not counted in the measured run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} (logs in {PROCS.logs})")
        with contextlib.suppress(OSError, ValueError):
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            try:
                conn.request("GET", "/v1/workers")
                if json.loads(conn.getresponse().read())["workers"]:
                    return
            finally:
                conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"no worker was listed after {timeout}s (logs in {PROCS.logs})")


def cpu_pids(**named: list[int]) -> dict[str, str]:
    """The environment that has a jobs client report the CPU of these processes."""
    return {"BENCH_CPU_PIDS": ",".join(f"{k}={p}" for k, pids in named.items() for p in pids)}


def jobs_figures(got: dict[str, float], jobs: int) -> dict[str, float]:
    """A jobs client's answer as the table's figures: rate, seconds, CPU µs per job."""
    per_job = {
        f"{name}_us": got.get(f"cpu_{name}", 0.0) / jobs * 1e6
        for name in ("server", "worker", "redis")
    }
    per_job["client_us"] = got["cpu_s"] / jobs * 1e6
    return {"jobs_s": got["rate"], "secs": got["secs"], "cpu_us": sum(per_job.values()), **per_job}


def tidings_jobs_round(
    store: str,
    name: str,
    cfg: Config,
    redis_pid: int,
    env: dict[str, str] | None = None,
    target: str = "noop_worker:worker",
) -> dict[str, float]:
    """One tidings server on `store`, one default `tidings worker` (`--concurrency` only
    when BENCH_WORKER_CONCURRENCY is set), the jobs client; its figures."""
    concurrency = os.environ.get("BENCH_WORKER_CONCURRENCY")
    flags = ["--concurrency", concurrency] if concurrency else []
    with tidings_server(store, name, env) as srv:
        worker = PROCS.start(
            "tidings-worker",
            [
                tidings_bin(),
                "worker",
                target,
                "--url",
                f"http://{HOST}:{srv.port}",
                *flags,
                "--log-level",
                "warning",
            ],
            env={"PYTHONPATH": str(BENCH)},
        )
        try:
            wait_for_worker(srv.port, worker)
            client = [sys.executable, str(BENCH / "jobs_client.py"), HOST, str(srv.port)]
            pids = cpu_pids(server=[srv.pid], worker=[worker.pid], redis=[redis_pid])
            return jobs_figures(run_json([*client, str(cfg.jobs)], env=pids), cfg.jobs)
        finally:
            PROCS.stop(worker)


def celery_jobs_round(cfg: Config, renv: dict[str, str], redis_pid: int) -> dict[str, float]:
    """Celery's worker (prefork, 2 processes) and its client on the private Redis."""
    celery = PROCS.start(
        "celery",
        [
            str(PEERS_BIN / "celery"),
            "-A",
            "celery_app",
            "worker",
            "--pool",
            "prefork",
            "-c",
            "2",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=renv,
        cwd=PEERS,
    )
    try:
        # Its two pool processes, forked at start: their CPU is the worker's too.
        deadline = time.monotonic() + 30
        while len(child_pids(celery.pid)) < 2:
            if celery.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery did not start its pool (logs in {PROCS.logs})")
            time.sleep(0.05)
        pids = cpu_pids(worker=[celery.pid, *child_pids(celery.pid)], redis=[redis_pid])
        got = run_json(
            [str(PEERS_BIN / "python"), str(PEERS / "celery_client.py"), str(cfg.jobs)],
            env={**renv, **pids},
            cwd=PEERS,
        )
    finally:
        PROCS.stop(celery)
    return jobs_figures(got, cfg.jobs)


# Fewest rounds of the jobs measurement in a full run.
JOBS_MIN_ROUNDS = 3

# The jobs measurement's second SQLite row: acknowledged once in the WAL, not yet fsynced.
NORMAL_SYNC = {"TIDINGS_SQLITE_SYNCHRONOUS": "NORMAL"}


def bench_jobs(tools: Tools, cfg: Config) -> list[str]:
    meas = Measurement(
        f"3. Jobs: {cfg.jobs:,} no-op jobs end to end, submitted from 4 threads then each "
        "result awaited; one default `tidings worker` (SQLite store, then Redis store) vs "
        "Celery, 2 prefork workers; all on one private Redis",
        "celery",
        [
            Metric("jobs_s", "/s", ("ratio>=", 3.0)),
            Metric("secs", "s", None, "{:,.2f}"),
            Metric("cpu_us", "µs/job"),
            Metric("server_us", "µs/job"),
            Metric("worker_us", "µs/job"),
            Metric("client_us", "µs/job"),
            Metric("redis_us", "µs/job"),
        ],
    )
    if not (tools.redis and tools.peers):
        return [f"### {meas.title}\n\nskipped: redis-server or the peers' venv is unavailable"]
    try:
        subprocess.run(
            [sys.executable, "-c", "from tidings import Worker; Worker"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError:
        return [f"### {meas.title}\n\nskipped: tidings.Worker is not importable yet"]
    print(f"== {meas.title}")
    concurrency = os.environ.get("BENCH_WORKER_CONCURRENCY")
    meas.notes.append(
        "tidings worker as the README runs it, no flags: "
        + (
            f"--concurrency {concurrency} (BENCH_WORKER_CONCURRENCY)"
            if concurrency
            else "its default concurrency (a plain-function handler: 32; an async one: 64)"
        )
        + ", jobs leased in batches of up to that many per round trip; tidings-sqlite-async "
        "runs an `async def` no-op handler (bench/noop_worker.py). Celery: --pool prefork "
        "-c 2, default prefetch (-c 4 or --prefetch-multiplier 16 made it slower here: "
        "BENCHMARKS.md)"
    )
    meas.notes.append(
        "durability: tidings-sqlite acknowledges a job once it is fsynced (synchronous=FULL, "
        "the default); tidings-sqlite-normal once it is in the WAL (synchronous=NORMAL: it "
        "survives the server's crash, not the machine's); the Redis of Celery and of "
        "tidings-redis keeps nothing on disk (--save '' --appendonly no)"
    )
    meas.notes.append(
        "CPU per job over the measured run (the client's 20 warm-up jobs excluded): server = "
        "tidings serve; worker = tidings worker, or Celery's main process and its 2 pool "
        "processes; client = the jobs client; redis = the private redis-server (Celery's "
        "broker and results; tidings-redis's store)"
    )
    # A jobs round is short (~30 s for all five rows) and moves by a third with the
    # machine: at least 3 rounds, so the median is not the mean of two.
    rounds = cfg.rounds if cfg.rounds == 1 else max(cfg.rounds, JOBS_MIN_ROUNDS)
    meas.notes.append(f"{rounds} rounds (jobs rounds: at least {JOBS_MIN_ROUNDS} unless --quick)")
    with redis_server() as (rport, rpid):
        renv = {"BENCH_REDIS_URL": f"redis://{HOST}:{rport}/0", "PYTHONPATH": str(PEERS)}
        for r in range(rounds):
            print(f"  round {r + 1}")
            sqlite, sync = "sqlite:///@TMP@/bench.db", "noop_worker:worker"
            for system, store, env, target in (
                ("tidings-sqlite", sqlite, None, sync),
                ("tidings-sqlite-async", sqlite, None, "noop_worker:async_worker"),
                ("tidings-sqlite-normal", sqlite, NORMAL_SYNC, sync),
                ("tidings-redis", f"redis://{HOST}:{rport}/0?prefix=bench{r}:", None, sync),
            ):
                meas.add(system, tidings_jobs_round(store, system, cfg, rpid, env, target))
            subprocess.run(
                ["redis-cli", "-p", str(rport), "flushall"], capture_output=True, check=False
            )
            meas.add("celery", celery_jobs_round(cfg, renv, rpid))
    RESULTS["jobs"] = meas.rounds
    systems = ["tidings-sqlite", "tidings-sqlite-async", "tidings-sqlite-normal", "tidings-redis"]
    return [render(meas, systems)]


def longpoll_round(tools: Tools, srv: Server, n: int) -> dict[str, float]:
    path = srv.lp_path
    if "@AFTER@" in path:
        ack = json.loads(publish(srv.port, srv.pub_path, 1, "seed ts=0"))
        path = path.replace("@AFTER@", ack["id"])
    load = start_load(tools, srv.port, path, n, 1, 60, {"SSELOAD_MATCH": "ts="})
    time.sleep(1.0)  # READY means sent; give the server time to park every request
    publish(srv.port, srv.pub_path, 1)
    done = finish_load(load, 90)
    return {
        "answered": done["events"],
        "p50_ms": done["p50_ms"],
        "p99_ms": done["p99_ms"],
        "max_ms": done["max_ms"],
    }


def bench_longpoll(tools: Tools, cfg: Config) -> list[str]:
    meas = Measurement(
        f"4. Long poll: {cfg.lp:,} parked long polls on one channel, one publish",
        "nchan",
        [
            Metric("answered", "", ("all", None)),
            Metric("p50_ms", "ms", None, "{:,.1f}"),
            Metric("p99_ms", "ms", None, "{:,.1f}"),
        ],
    )
    print(f"== {meas.title}")
    systems: list[tuple[str, Callable[[], Any]]] = [
        ("tidings-memory", lambda: tidings_server("memory://", "tidings-memory")),
        ("tidings-sqlite", lambda: tidings_server("sqlite:///@TMP@/bench.db", "tidings-sqlite")),
    ]
    if tools.nchan:
        systems.append(("nchan", nchan_server))
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        for name, start in systems:
            with start() as srv:
                meas.add(name, longpoll_round(tools, srv, cfg.lp))
    meas.notes.append(
        "wake-up latency: from the publisher's timestamp (taken just before its "
        "POST) to the answer's arrival; SQLite includes the commit"
    )
    RESULTS["longpoll"] = meas.rounds
    return [render(meas, ["tidings-memory", "tidings-sqlite"], {"answered": float(cfg.lp)})]


def bench_ws(tools: Tools, cfg: Config) -> list[str]:
    metrics = [
        Metric(m.name, m.unit, None if m.name != "delivered" else m.target, m.fmt)
        for m in FANOUT_METRICS
    ]
    meas = Measurement(
        f"5. WebSocket fan-out: {cfg.subs:,} subscribers, one channel, {cfg.msgs} publishes "
        "(Nchan's websocket subscriber as the peer)",
        "nchan-ws",
        metrics,
    )
    print(f"== {meas.title}")
    systems: list[tuple[str, Callable[[], Any]]] = [
        ("tidings-memory", lambda: tidings_server("memory://", "tidings-memory")),
    ]
    if tools.nchan:
        systems.append(("nchan-ws", nchan_server))
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        for name, start in systems:
            with start() as srv:
                meas.add(
                    name, fanout_round(tools, srv, srv.ws_path, cfg, cfg.subs, {"SSELOAD_WS": "1"})
                )
    sse = RESULTS.get("sse", {}).get("tidings-memory")
    if sse:
        rate = statistics.median(r["deliveries_s"] for r in sse)
        p99 = statistics.median(r["p99_ms"] for r in sse)
        meas.notes.append(
            f"beside SSE (measurement 1, tidings-memory): {rate:,.0f}/s, p99 {p99:,.1f} ms"
        )
    RESULTS["ws"] = meas.rounds
    return [render(meas, ["tidings-memory"], {"delivered": float(cfg.subs * cfg.msgs)})]


MSGPACK = "application/msgpack"
PAGE = 100  # messages per poll answer in measurement 6


def lua_bytes(raw: bytes) -> str:
    """A Lua string literal of arbitrary bytes (decimal escapes: plain Lua and LuaJIT)."""
    return '"' + "".join(f"\\{b}" for b in raw) + '"'


def wrk_script(name: str, method: str, body: bytes | None, headers: dict[str, str]) -> Path:
    """A wrk script sending one fixed request; written under bench/.build/."""
    BUILD.mkdir(exist_ok=True)
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {lua_bytes(body)}")
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path = BUILD / f"wrk_{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk_script_round(port: int, path: str, secs: int, script: Path) -> dict[str, float]:
    """wrk -t1 -c64 (1 s warm-up, then `secs`) with `script`: req/s, p99, non-2xx."""
    url = f"http://{HOST}:{port}{path}"
    argv = ["wrk", "-t1", "-c64", "--latency", "-s", str(script)]
    subprocess.run([*argv, "-d1s", url], capture_output=True, check=True)
    out = subprocess.run(
        [*argv, f"-d{secs}s", url], capture_output=True, text=True, check=True
    ).stdout
    rps = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec: {out[-400:]!r}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "req_s": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "non2xx": float(bad.group(1)) if bad else 0.0,
    }


def fetch(port: int, path: str, accept: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or resp.getheader("content-type") != accept:
            raise RuntimeError(f"GET {path} as {accept}: {resp.status} {resp.headers}")
        return body
    finally:
        conn.close()


def bench_msgpack(tools: Tools, cfg: Config) -> list[str]:
    """Publish and poll, JSON vs MessagePack bodies, on one tidings (memory store) per round."""
    import msgspec  # the project's dependency; bench runs in the project's venv

    meas = Measurement(
        f"6. MessagePack vs JSON: wrk -t1 -c64 -d{cfg.wrk_secs}s, publish of ~30-byte data "
        f"and poll of a {PAGE}-message page; tidings = MessagePack, tidings-json = JSON "
        "(same server, memory store, alternating)",
        "tidings-json",
        [
            Metric("publish_req_s", "/s"),
            Metric("poll_req_s", "/s"),
            Metric("publish_p99_ms", "ms", None, "{:,.1f}"),
            Metric("poll_p99_ms", "ms", None, "{:,.1f}"),
            Metric("page_bytes", "B"),
            Metric("non2xx", "", None),
        ],
    )
    if not tools.wrk:
        return [f"### {meas.title}\n\nskipped: wrk is unavailable"]
    print(f"== {meas.title}")
    data = {"n": 1, "ts": 1700000000000000}  # 29 bytes as JSON, 16 as MessagePack
    body = {"data": data, "event": "tick"}
    scripts = {
        "json": (
            wrk_script(
                "pub_json", "POST", json.dumps(body).encode(), {"Content-Type": "application/json"}
            ),
            wrk_script("poll_json", "GET", None, {"Accept": "application/json"}),
        ),
        "msgpack": (
            wrk_script(
                "pub_msgpack",
                "POST",
                msgspec.msgpack.encode(body),
                {"Content-Type": MSGPACK, "Accept": MSGPACK},
            ),
            wrk_script("poll_msgpack", "GET", None, {"Accept": MSGPACK}),
        ),
    }
    poll_path = f"/v1/channels/{CHANNEL}-page/messages?after=0&limit={PAGE}"
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        with tidings_server("memory://", "tidings-memory") as srv:
            publish(srv.port, f"/v1/channels/{CHANNEL}-page/messages", PAGE, "msg {i} ts={ts}")
            order = ["json", "msgpack"] if r % 2 == 0 else ["msgpack", "json"]
            figures: dict[str, dict[str, float]] = {k: {} for k in order}
            for kind in order:  # publishes A B, then polls A B
                pub = wrk_script_round(srv.port, srv.pub_path, cfg.wrk_secs, scripts[kind][0])
                figures[kind].update(
                    publish_req_s=pub["req_s"], publish_p99_ms=pub["p99_ms"], non2xx=pub["non2xx"]
                )
            for kind in order:
                got = wrk_script_round(srv.port, poll_path, cfg.wrk_secs, scripts[kind][1])
                page = fetch(
                    srv.port, poll_path, MSGPACK if kind == "msgpack" else "application/json"
                )
                figures[kind].update(
                    poll_req_s=got["req_s"],
                    poll_p99_ms=got["p99_ms"],
                    page_bytes=float(len(page)),
                    non2xx=figures[kind]["non2xx"] + got["non2xx"],
                )
            for kind in ("msgpack", "json"):
                meas.add("tidings" if kind == "msgpack" else "tidings-json", figures[kind])
    meas.notes.append(
        "the poll page holds ~30-byte text messages (id, channel, event, data, RFC 3339 time "
        "each); publish bodies are {data: {n, ts}, event} in the named codec, answered in it"
    )
    RESULTS["msgpack"] = meas.rounds
    return [render(meas, ["tidings"])]


def add_user(store: str) -> None:
    """The account the attack's wrong passwords aim at."""
    subprocess.run(
        [tidings_bin(), "users", "add", "alice", "--store", store, "--password-stdin"],
        input="the right password\n",
        text=True,
        check=True,
        capture_output=True,
    )


def bench_attack(tools: Tools, cfg: Config) -> list[str]:
    """Normal requests alone, then while hostile clients run from another address."""
    attackers = f"{cfg.attack_slowloris:,} slowloris connections, 300 wrong-password logins"
    meas = Measurement(
        f"7. Under attack: /healthz and publish, each on a fresh connection from 127.0.0.1, "
        f"alone and while {attackers} and one endless header run from 127.0.0.2 "
        "(tidings on SQLite, --limit-loopback so 127.0.0.2 is limited as a remote address)",
        "alone",
        [
            Metric("healthz_p50_ms", "ms", None, "{:,.2f}"),
            Metric("healthz_p99_ms", "ms", ("ratio<=", 3), "{:,.2f}"),
            Metric("publish_p50_ms", "ms", None, "{:,.2f}"),
            Metric("publish_p99_ms", "ms", ("ratio<=", 3), "{:,.2f}"),
            Metric("refused", "", ("<=", 0)),
        ],
    )
    print(f"== {meas.title}")
    script = BENCH / "attack.py"
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        with tidings_server(
            "sqlite:///@TMP@/bench.db", "tidings-attack", args=["--limit-loopback"], before=add_user
        ) as srv:
            argv = [sys.executable, str(script), "timed", "--port", str(srv.port)]
            argv += ["--count", str(cfg.attack_requests)]
            alone = json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)
            meas.add("alone", alone)
            hostile = [sys.executable, str(script), "attack", "--port", str(srv.port)]
            hostile += ["--source", "127.0.0.2", "--slowloris", str(cfg.attack_slowloris)]
            hostile += ["--logins", "300", "--endless", "1", "--secs", "600"]
            attack = PROCS.start("attackers", hostile)
            time.sleep(5)  # every attacker connected, the slowloris ones sending their bytes
            under = json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)
            meas.add("under-attack", under)
            PROCS.stop(attack)
    RESULTS["attack"] = meas.rounds
    return [render(meas, ["under-attack"])]


# ---------------------------------------------------------------------------- HTTP/2


# HTTP/2 streams per connection in the fan-out (within the server's h2_protocol.MAX_STREAMS),
# and the processes the Python SSE client splits its subscribers across.
H2_STREAMS = 100
H2_CLIENT_PROCS = 2
# Requests in flight in the publish rows, the same for both protocols: HTTP/1.1 on as
# many connections, HTTP/2 on H2_PUB_CONNS connections of H2_PUB_STREAMS streams each.
H2_PUB_CONNS = 8
H2_PUB_STREAMS = 8
H2_PUB_INFLIGHT = H2_PUB_CONNS * H2_PUB_STREAMS
H2_LABEL, H1_LABEL = "tidings HTTP/2", "tidings HTTP/1.1"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is missing: the HTTP/2 measurement needs it for TLS")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Tls:
    """The certificate the TLS servers present and the clients check."""

    cert: Path
    key: Path

    def args(self) -> list[str]:
        return ["--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key)]

    def context(self) -> ssl.SSLContext:
        """A client context that trusts the certificate (no ALPN: HTTP/1.1)."""
        return ssl.create_default_context(cafile=str(self.cert))


def h2_fanout_round(
    srv: Server, cfg: Config, argv: list[str], name: str, tls: Tls | None
) -> dict[str, float]:
    """One fan-out: the client `argv` subscribes, then the publisher (HTTP/1.1) sends
    cfg.msgs messages; the figures, with the server's and the client's CPU."""
    rss0, cpu0, client0 = rss_kib(srv.pid), cpu_seconds(srv.pid), children_cpu()
    overflows = listen_overflows()
    load = start_load_argv(argv, name=name)
    try:
        cpu1 = cpu_seconds(srv.pid)
        overflows = listen_overflows() - overflows
        time.sleep(0.5)  # let the server finish the last handshakes before reading its memory
        rss1, cpu2 = rss_kib(srv.pid), cpu_seconds(srv.pid)
        pub = time.perf_counter()
        publish(srv.port, srv.pub_path, cfg.msgs, context=tls.context() if tls else None)
        pub_secs = time.perf_counter() - pub
        done = finish_load(load, 330)
    finally:
        if load.proc.poll() is None:
            load.proc.kill()
            load.proc.wait(5)
    cpu3 = cpu_seconds(srv.pid)
    figures = {
        "deliveries_s": done["rate"],
        "p50_ms": done["p50_ms"],
        "p99_ms": done["p99_ms"],
        "connect_ms": load.ready_ms,
        "srv_cpu_connect_s": cpu1 - cpu0,
        "srv_us_delivery": (cpu3 - cpu2) / max(done["events"], 1) * 1e6,
        "rss_kib_sub": (rss1 - rss0) / cfg.subs,
        "listen_overflows": overflows,
        "delivered": done["events"],
        "publish_s": pub_secs,
    }
    if "cpu_deliver_s" in done:
        figures["client_cpu_connect_s"] = done["cpu_connect_s"]
        figures["client_cpu_deliver_s"] = done["cpu_deliver_s"]
    else:  # sseload reports no CPU: its whole run, read once it was waited for
        figures["client_cpu_s"] = children_cpu() - client0
    return figures


def h2sse_argv(srv: Server, cfg: Config, proto: str, tls: Tls | None) -> list[str]:
    argv = [sys.executable, str(BENCH / "h2sse.py"), HOST, str(srv.port), srv.sub_path]
    argv += [str(cfg.subs), str(cfg.msgs), "--proto", proto, "--streams", str(H2_STREAMS)]
    argv += ["--procs", str(H2_CLIENT_PROCS), "--timeout", "300"]
    return argv + (["--tls", str(tls.cert)] if tls else [])


H2_FANOUT_METRICS = [
    Metric("deliveries_s", "/s"),
    Metric("p50_ms", "ms", None, "{:,.1f}"),
    Metric("p99_ms", "ms", None, "{:,.1f}"),
    Metric("connect_ms", "ms"),
    Metric("srv_cpu_connect_s", "s", None, "{:,.2f}"),
    Metric("srv_us_delivery", "µs", None, "{:,.2f}"),
    Metric("rss_kib_sub", "KiB", None, "{:,.1f}"),
    Metric("client_cpu_connect_s", "s", None, "{:,.2f}"),
    Metric("client_cpu_deliver_s", "s", None, "{:,.2f}"),
    Metric("publish_s", "s", None, "{:,.2f}"),
    Metric("delivered", "", ("all", None)),
]


def h2load_round(srv: Server, url: str, args: list[str], secs: int, body: Path) -> dict[str, float]:
    """h2load POSTing `body` as JSON to `url` (1 s warm-up run, then `secs`): req/s,
    latency percentiles from its request log, the server's and h2load's CPU per request."""
    with tempfile.TemporaryDirectory(prefix="tidings-bench-h2load-") as tmp:
        log = Path(tmp) / "requests.log"
        argv = ["h2load", *args, "-d", str(body), "-H", "content-type: application/json"]
        subprocess.run([*argv, "-D", "1", url], capture_output=True, check=True)
        cpu0, client0 = cpu_seconds(srv.pid), children_cpu()
        out = subprocess.run(
            [*argv, "-D", str(secs), "--log-file", str(log), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu, client = cpu_seconds(srv.pid) - cpu0, children_cpu() - client0
        rps = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", out)
        done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
        codes = re.search(r"status codes: (\d+) 2xx", out)
        if rps is None or done is None or codes is None:
            raise RuntimeError(f"h2load printed no figures: {out[-600:]!r}")
        proto = re.search(r"Application protocol: (\S+)", out)
        want = "http/1.1" if "--h1" in args else "h2" if url.startswith("https") else "h2c"
        if proto is None or proto.group(1) != want:
            raise RuntimeError(f"h2load spoke {proto.group(1) if proto else '?'}, not {want}")
        micros = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line)
    total = int(done.group(1))
    n = max(len(micros), 1)
    return {
        "req_s": float(rps.group(1)),
        "p50_ms": micros[n // 2] / 1000 if micros else 0.0,
        "p99_ms": micros[min(n - 1, int(n * 0.99))] / 1000 if micros else 0.0,
        "srv_us_req": cpu / max(total, 1) * 1e6,
        "client_us_req": client / max(total, 1) * 1e6,
        "failed": float(total - int(codes.group(1))),
    }


def h2_jobs_round(srv: Server, cfg: Config, proto: str, tls: Tls | None) -> dict[str, float]:
    """bench/h2jobs.py's worker and client, both speaking `proto`, on one server."""
    url = f"{'https' if tls else 'http'}://{HOST}:{srv.port}"
    cafile = ["--cafile", str(tls.cert)] if tls else []
    script = str(BENCH / "h2jobs.py")
    worker = PROCS.start(
        "h2jobs-worker", [sys.executable, script, "worker", url, "--proto", proto, *cafile]
    )
    try:
        cpu0, wcpu0 = cpu_seconds(srv.pid), cpu_seconds(worker.pid)
        got = run_json(
            [sys.executable, script, "client", url, str(cfg.jobs), "--proto", proto, *cafile]
        )
        cpu, wcpu = cpu_seconds(srv.pid) - cpu0, cpu_seconds(worker.pid) - wcpu0
    finally:
        PROCS.stop(worker)
    return {
        "jobs_s": got["rate"],
        "secs": got["secs"],
        "srv_us_job": cpu / cfg.jobs * 1e6,
        "worker_us_job": wcpu / cfg.jobs * 1e6,
        "client_us_job": got["cpu_s"] / cfg.jobs * 1e6,
    }


def bench_h2(tools: Tools, cfg: Config) -> list[str]:
    """tidings over HTTP/2 against tidings over HTTP/1.1: fan-out, publish, jobs; over
    TLS (ALPN) and in cleartext (h2c with prior knowledge)."""
    n_conns = -(-cfg.subs // H2_STREAMS)
    sse_title = (
        f"SSE fan-out: {cfg.subs:,} subscribers on one channel (HTTP/2: {n_conns} "
        f"connections x {H2_STREAMS} streams; HTTP/1.1: {cfg.subs:,} connections), "
        f"{cfg.msgs} back-to-back publishes over HTTP/1.1; one Python client for both "
        f"(bench/h2sse.py, {H2_CLIENT_PROCS} processes)"
    )
    pub_title = (
        f"Publish: h2load -D {cfg.wrk_secs}s, {H2_PUB_INFLIGHT} requests in flight (HTTP/2: "
        f"-c {H2_PUB_CONNS} -m {H2_PUB_STREAMS}; HTTP/1.1: --h1 -c {H2_PUB_INFLIGHT}), "
        "JSON {data} of ~40 bytes to one channel, memory store"
    )
    jobs_title = (
        f"Jobs: {cfg.jobs:,} no-op jobs end to end (bench/h2jobs.py: httpx client, 4 tasks "
        "submitting then awaiting; the SDK worker, --concurrency 16, on an httpx client), "
        "both speaking the protocol named, memory store"
    )
    jobs_metrics = [
        Metric("jobs_s", "/s"),
        Metric("secs", "s", None, "{:,.2f}"),
        Metric("srv_us_job", "µs", None, "{:,.0f}"),
        Metric("worker_us_job", "µs", None, "{:,.0f}"),
        Metric("client_us_job", "µs", None, "{:,.0f}"),
    ]
    pub_metrics = [
        Metric("req_s", "/s"),
        Metric("p50_ms", "ms", None, "{:,.2f}"),
        Metric("p99_ms", "ms", None, "{:,.2f}"),
        Metric("srv_us_req", "µs", None, "{:,.0f}"),
        Metric("client_us_req", "µs", None, "{:,.1f}"),
        Metric("failed", "", ("<=", 0)),
    ]
    tables: dict[str, Measurement] = {
        "sse_tls": Measurement(f"8a. HTTP/2 vs HTTP/1.1 over TLS: {sse_title}", H1_LABEL, []),
        "sse_clear": Measurement(f"8b. h2c vs HTTP/1.1, cleartext: {sse_title}", H1_LABEL, []),
        "pub_tls": Measurement(f"8c. HTTP/2 vs HTTP/1.1 over TLS: {pub_title}", H1_LABEL, []),
        "pub_clear": Measurement(f"8d. h2c vs HTTP/1.1, cleartext: {pub_title}", H1_LABEL, []),
        "jobs_tls": Measurement(f"8e. HTTP/2 vs HTTP/1.1 over TLS: {jobs_title}", H1_LABEL, []),
        "jobs_clear": Measurement(f"8f. h2c vs HTTP/1.1, cleartext: {jobs_title}", H1_LABEL, []),
    }
    for key, meas in tables.items():
        meas.metrics = (
            H2_FANOUT_METRICS
            if key.startswith("sse")
            else pub_metrics
            if key.startswith("pub")
            else jobs_metrics
        )
    c_ref = Measurement("C sseload, HTTP/1.1 cleartext", H1_LABEL, H2_FANOUT_METRICS)
    print("== 8. HTTP/2 vs HTTP/1.1 (tidings on both)")
    with tempfile.TemporaryDirectory(prefix="tidings-bench-tls-") as tmp:
        tls = Tls(*make_cert(Path(tmp)))
        body = Path(tmp) / "publish.json"
        body.write_text(json.dumps({"data": "msg 0 ts=1700000000000000"}))
        for r in range(cfg.rounds):
            print(f"  round {r + 1}")
            protos = ["h2", "h1"] if r % 2 == 0 else ["h1", "h2"]
            for secure, suffix in ((tls, "tls"), (None, "clear")):
                args = tls.args() if secure else []
                label = "TLS" if secure else "cleartext"
                print(f"   SSE fan-out, {label}")
                for proto in protos:
                    name = H2_LABEL if proto == "h2" else H1_LABEL
                    with tidings_server("memory://", f"h2-sse-{proto}", args=args) as srv:
                        argv = h2sse_argv(srv, cfg, proto, secure)
                        tables[f"sse_{suffix}"].add(
                            name, h2_fanout_round(srv, cfg, argv, "h2sse", secure)
                        )
                if secure is None:
                    with tidings_server("memory://", "h2-sse-c") as srv:
                        argv = [str(tools.sseload), HOST, str(srv.port), srv.sub_path]
                        argv += [str(cfg.subs), str(cfg.msgs), "300"]
                        c_ref.add("C sseload", h2_fanout_round(srv, cfg, argv, "sseload", None))
            if tools.h2load:
                for secure, suffix in ((tls, "tls"), (None, "clear")):
                    print(f"   publish, {'TLS' if secure else 'cleartext'}")
                    for proto in protos:
                        args = tls.args() if secure else []
                        with tidings_server("memory://", f"h2-pub-{proto}", args=args) as srv:
                            scheme = "https" if secure else "http"
                            url = f"{scheme}://{HOST}:{srv.port}{srv.pub_path}"
                            load = (
                                ["-c", str(H2_PUB_CONNS), "-m", str(H2_PUB_STREAMS)]
                                if proto == "h2"
                                else ["--h1", "-c", str(H2_PUB_INFLIGHT)]
                            )
                            tables[f"pub_{suffix}"].add(
                                H2_LABEL if proto == "h2" else H1_LABEL,
                                h2load_round(srv, url, load, cfg.wrk_secs, body),
                            )
            for secure, suffix in ((tls, "tls"), (None, "clear")):
                print(f"   jobs, {'TLS' if secure else 'cleartext'}")
                for proto in protos:
                    args = tls.args() if secure else []
                    with tidings_server("memory://", f"h2-jobs-{proto}", args=args) as srv:
                        tables[f"jobs_{suffix}"].add(
                            H2_LABEL if proto == "h2" else H1_LABEL,
                            h2_jobs_round(srv, cfg, proto, secure),
                        )
    expected = {"delivered": float(cfg.subs * cfg.msgs)}
    for meas in tables.values():
        meas.notes.append(
            "ratio = HTTP/2 / HTTP/1.1; alternating which goes first; a fresh server "
            "(memory store) for every row of every round"
        )
    for key in ("sse_tls", "sse_clear"):
        tables[key].notes += [
            "srv_cpu_connect_s: the server's CPU while every stream was opened; "
            f"srv_us_delivery: its CPU from the first publish to the last delivery (the {cfg.msgs} "
            "publishes included) per delivery; client_cpu_*: the client's CPU, all its "
            "processes (where client_cpu_deliver_s nears the delivery window, delivered / "
            "deliveries_s, times its processes, the client sets the pace); publish_s: how "
            "long the publisher's "
            "back-to-back POSTs (HTTP/1.1, one connection) took while the fan-out ran",
            "each stream's HTTP/2 window is the protocol's 65,535 bytes and the connection's "
            "16 MiB; the client gives every byte back as it parses it (WINDOW_UPDATE)",
        ]
    c_rounds = c_ref.rounds.get("C sseload", [])
    if c_rounds:

        def med(metric: str) -> float:
            return statistics.median(r[metric] for r in c_rounds)

        tables["sse_clear"].notes.append(
            f"reference, the C client bench/sseload.c on HTTP/1.1 cleartext: "
            f"{med('deliveries_s'):,.0f} deliveries/s, p50 {med('p50_ms'):,.1f} ms, p99 "
            f"{med('p99_ms'):,.1f} ms, connected in {med('connect_ms'):,.0f} ms, server "
            f"{med('srv_us_delivery'):,.2f} µs CPU per delivery, client CPU "
            f"{med('client_cpu_s'):,.2f} s in all ({len(c_rounds)} rounds: "
            + "; ".join(f"{x['deliveries_s']:,.0f}/s p99 {x['p99_ms']:,.1f} ms" for x in c_rounds)
            + ")"
        )
    for key in ("pub_tls", "pub_clear"):
        tables[key].notes.append(
            "srv_us_req / client_us_req: CPU of the server / of h2load per request; "
            "p50/p99 from h2load's per-request log"
        )
    for key in ("jobs_tls", "jobs_clear"):
        tables[key].notes.append(
            "*_us_job: CPU of the server, the worker process and the client per job "
            "(the client's 20 warm-up jobs included in the server's and the worker's)"
        )
    RESULTS["h2"] = {key: meas.rounds for key, meas in tables.items()}
    RESULTS["h2"]["sse_c_sseload"] = c_ref.rounds
    out = []
    for key, meas in tables.items():
        if key.startswith("pub") and not tools.h2load:
            out.append(f"### {meas.title}\n\nskipped: h2load (nghttp2-client) is unavailable")
            continue
        out.append(
            render(meas, [H2_LABEL], expected if key.startswith("sse") else None, column=H2_LABEL)
        )
    return out


def _own_table(script: str, args: list[str]) -> list[str]:
    """Run bench/`script` with --json (it starts its own servers and prints its own table,
    titled) and keep its results."""
    res = subprocess.run(
        [sys.executable, str(BENCH / script), "--json", *args],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{script} failed: {res.stderr[-800:]}")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    RESULTS[script.removesuffix(".py")] = data["results"]
    return [str(data["table"])]


def bench_lists(tools: Tools, cfg: Config) -> list[str]:
    """Pages of the channel and job lists on SQLite and Redis (bench/lists.py; smaller with
    --quick or --rounds 1)."""
    if not tools.redis:
        return ["### Lists\n\nskipped: redis-server is unavailable"]
    return _own_table(
        "lists.py", ["--channels", "2000", "--jobs", "20000"] if cfg.rounds == 1 else []
    )


def bench_schedules(tools: Tools, cfg: Config) -> list[str]:
    """A schedule every second on two nodes sharing Redis (bench/schedules.py): firings,
    none twice, drift; 60 s, 10 s with --quick or --rounds 1."""
    if not tools.redis:
        return ["### Schedules\n\nskipped: redis-server is unavailable"]
    return _own_table("schedules.py", ["--seconds", "10" if cfg.rounds == 1 else "60"])


def bench_limits(tools: Tools, cfg: Config) -> list[str]:
    """A type limited to 50 jobs/s under a backlog of 2,000, on SQLite and on Redis with
    two nodes (bench/limits.py)."""
    if not tools.redis:
        return ["### Limits\n\nskipped: redis-server is unavailable"]
    return _own_table("limits.py", [])


class CpuSampler:
    """A process's CPU seconds read every `every` seconds in a thread, each with the
    wall-clock time of the read: `at(t)` is the last read made no later than `t`, so the
    CPU spent up to a moment (the last delivery) leaves out what came after it."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = [(time.time(), cpu_seconds(pid))]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.every):
            with contextlib.suppress(OSError):
                self.samples.append((time.time(), cpu_seconds(self.pid)))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)

    def at(self, wall: float) -> float:
        return max((cpu for t, cpu in self.samples if t <= wall), default=self.samples[0][1])


def bridge_phase(
    tools: Tools,
    srv: Server,
    path: str,
    subs: int,
    msgs: int,
    publish_all: Callable[[], float],
    timeout: float,
) -> dict[str, float]:
    """`subs` SSE subscribers on `path`, then `publish_all()` (publishes `msgs` messages
    on the bus, returns the wall-clock time of the first): latency, throughput from the
    first publish to the last delivery, the server's CPU over that span, messages lost."""
    load = start_load(tools, srv.port, path, subs, msgs, timeout)
    time.sleep(1.0)  # let the server finish the last handshakes
    cpu = CpuSampler(srv.pid)
    try:
        began = publish_all()
        done = finish_load(load, timeout + 30)
    finally:
        cpu.stop()
    last = done["last_us"] / 1e6 if done["last_us"] else time.time()
    span = max(last - began, 1e-6)
    events = done["events"]
    return {
        "p50_ms": done["p50_ms"],
        "p99_ms": done["p99_ms"],
        "msgs_s": msgs / span if events >= msgs * subs else 0.0,
        "deliveries_s": events / span,
        "cpu_ms_msg": 1000 * (cpu.at(last) - cpu.at(began)) / msgs,
        "lost": msgs * subs - events,
    }


BRIDGE_PEER = "aio-pika+sse-starlette"
BRIDGE_RATE = 5.0  # messages a second in the paced phase


@contextlib.contextmanager
def bridge_system(system: str, queue: str) -> Iterator[tuple[Server, str]]:
    """The server under test consuming `queue`, and the path its subscribers GET."""
    import bridges  # bench/bridges.py, next to this file

    if system == "tidings":
        bridge = f"{bridges.AMQP_URL}?queue={queue}&channel={CHANNEL}&format=text"
        with tidings_server(
            "sqlite:///@TMP@/bench.db", "tidings-bridge", args=["--bridge", bridge]
        ) as srv:
            yield srv, srv.sub_path
    else:
        env = {"BENCH_AMQP_URL": bridges.AMQP_URL, "BENCH_AMQP_QUEUE": queue}
        with uvicorn_peer("amqp_sse_peer", BRIDGE_PEER, env) as srv:
            yield srv, "/events"


def bridge_round(tools: Tools, cfg: Config, system: str, queue: str) -> dict[str, float]:
    """One server on a fresh queue: the paced phase, then the burst, each with its own
    `cfg.bridge_subs` subscribers; the queue is deleted after."""
    import bridges

    bridges.declare_queue(queue)
    try:
        with bridge_system(system, queue) as (srv, path):
            bridges.wait_consumer(queue)
            paced = bridge_phase(
                tools,
                srv,
                path,
                cfg.bridge_subs,
                cfg.bridge_paced,
                lambda: bridges.publish_paced(queue, cfg.bridge_paced, BRIDGE_RATE),
                cfg.bridge_paced / BRIDGE_RATE + 60,
            )
            burst = bridge_phase(
                tools,
                srv,
                path,
                cfg.bridge_subs,
                cfg.bridge_burst,
                lambda: bridges.publish_burst(queue, cfg.bridge_burst)[0],
                180,
            )
    finally:
        bridges.delete_queue(queue)
    return {
        "paced_p50_ms": paced["p50_ms"],
        "paced_p99_ms": paced["p99_ms"],
        "paced_lost": paced["lost"],
        "burst_msgs_s": burst["msgs_s"],
        "burst_deliveries_s": burst["deliveries_s"],
        "burst_p99_ms": burst["p99_ms"],
        "burst_cpu_ms_msg": burst["cpu_ms_msg"],
        "burst_lost": burst["lost"],
    }


def bench_bridges(tools: Tools, cfg: Config) -> list[str]:
    """RabbitMQ -> tidings (`--bridge amqp://...`, SQLite store) -> SSE subscribers,
    beside a hand-written aio-pika consumer in an sse-starlette app (bench/peers/
    amqp_sse_peer.py), alternating rounds."""
    title = (
        f"Bridges: RabbitMQ -> server -> {cfg.bridge_subs:,} SSE subscribers; "
        f"{cfg.bridge_paced} messages at {BRIDGE_RATE:g}/s, then a burst of "
        f"{cfg.bridge_burst} (publisher confirms)"
    )
    try:
        socket.create_connection((HOST, 5672), 2).close()
    except OSError:
        return [f"### {title}\n\nskipped: RabbitMQ is not reachable on {HOST}:5672"]
    if not tools.peers:
        return [f"### {title}\n\nskipped: the peers' venv (aio-pika, sse-starlette) is missing"]
    meas = Measurement(
        title,
        BRIDGE_PEER,
        [
            Metric("paced_p50_ms", "ms", None, "{:,.1f}"),
            Metric("paced_p99_ms", "ms", None, "{:,.1f}"),
            Metric("paced_lost", "", ("<=", 0)),
            Metric("burst_msgs_s", "/s", None, "{:,.1f}"),
            Metric("burst_deliveries_s", "/s"),
            Metric("burst_p99_ms", "ms"),
            Metric("burst_cpu_ms_msg", "ms", None, "{:,.2f}"),
            Metric("burst_lost", "", ("<=", 0)),
        ],
    )
    print(f"== {meas.title}")
    for r in range(cfg.rounds):
        print(f"  round {r + 1}")
        for system, tag in (("tidings", "tidings"), (BRIDGE_PEER, "peer")):
            queue = f"tidings-bench-{os.getpid()}-{r}-{tag}"
            meas.add(system, bridge_round(tools, cfg, system, queue))
    meas.notes.append(
        "latency: from the publisher's timestamp (taken just before its basic.publish) to "
        "the event's arrival at a subscriber; tidings includes its SQLite commit"
    )
    meas.notes.append(
        "burst_msgs_s: messages over the span from the first publish to the last delivery "
        "(0 when any was lost); burst_cpu_ms_msg: the server process's CPU over that span, "
        "per message; each phase has its own subscribers"
    )
    RESULTS["bridges"] = meas.rounds
    return [render(meas, ["tidings"])]


BENCHES: dict[str, Callable[[Tools, Config], list[str]]] = {
    "sse": bench_sse,
    "publish": bench_publish,
    "jobs": bench_jobs,
    "longpoll": bench_longpoll,
    "ws": bench_ws,
    "msgpack": bench_msgpack,
    "attack": bench_attack,
    "h2": bench_h2,
    "lists": bench_lists,
    "schedules": bench_schedules,
    "limits": bench_limits,
    "bridges": bench_bridges,
}
RESULTS: dict[str, Any] = {}


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return (
        f"{os.cpu_count()} cores, {model}, {mem:,} MiB RAM, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small smoke run (1 round)")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 2)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument(
        "--lp", type=int, help="parked long polls in measurement 4 (default 5000; 500 quick)"
    )
    parser.add_argument(
        "--default-somaxconn",
        action="store_true",
        help="keep net.core.somaxconn as the kernel has it (measure a default machine)",
    )
    args = parser.parse_args()
    if args.quick:
        cfg = Config(
            rounds=1,
            subs=1000,
            msgs=20,
            lp=500,
            jobs=300,
            wrk_secs=3,
            starlette_subs=500,
            attack_slowloris=300,
            attack_requests=100,
            bridge_subs=500,
            bridge_paced=10,
            bridge_burst=30,
        )
    else:
        cfg = Config(
            rounds=2, subs=8000, msgs=100, lp=5000, jobs=4000, wrk_secs=10, starlette_subs=8000
        )
    if args.rounds:
        cfg.rounds = args.rounds
    if args.lp:
        cfg.lp = args.lp
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; choose from {', '.join(BENCHES)}")

    def on_signal(signum: int, _frame: object) -> None:
        PROCS.stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    tools = setup()
    queue = contextlib.ExitStack()
    accept_note = queue.enter_context(accept_queue(keep=args.default_somaxconn))
    print(f"machine: {machine()}\nstarted: {started}\nconfig: {cfg}\nlogs: {PROCS.logs}")
    print(f"accept queue: {accept_note}\n")
    tables: list[str] = []
    failed = []
    try:
        for name in names:
            try:
                tables.extend(BENCHES[name](tools, cfg))
            except Exception as exc:  # one broken measurement must not hide the others
                msg = f"### {name}\n\nfailed: {type(exc).__name__}: {exc}"
                print(msg, flush=True)
                tables.append(msg)
                failed.append(name)
                PROCS.stop_all()
    finally:
        PROCS.stop_all()
        queue.close()
    print("\n\n## Results\n")
    print(f"machine: {machine()}\nstarted: {started}\nconfig: {cfg}\naccept queue: {accept_note}\n")
    print("\n\n".join(tables))
    BUILD.mkdir(exist_ok=True)
    (BUILD / "results.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "started": started,
                "config": cfg.__dict__,
                "accept_queue": accept_note,
                "rounds": RESULTS,
            },
            indent=1,
        )
    )
    if failed:
        print(f"\nFAILED measurements: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
