"""What an idle WebSocket subscriber costs the server: RSS and Python heap per socket.

Usage: PYTHONPATH=src .venv/bin/python bench/wsmem.py [--conns 2000] [--top 25] [--rss-only]
       [--path /v1/channels/bench/ws] [--src DIR]

Starts `tidings serve --store memory://` on a free loopback port (the tidings of this
checkout, or of the source folder `--src`: `python -m tidings` with it first on the
path), opens `--conns` idle
subscribers with bench/sseload.c in WebSocket mode, and reports:

* the server's VmRSS growth per socket, in a run without tracemalloc (its own
  bookkeeping would be counted too); the median of `--rss-rounds` servers;
* in a second server, run with tracemalloc on, the Python heap growth per socket and the
  lines that allocated it, largest first, and the objects alive per socket by type.

tracemalloc is started inside the server by a sitecustomize.py written to a temporary
folder put on that server's PYTHONPATH only: a thread there takes a snapshot whenever a
request file appears. Nothing of it is in the product.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SSELOAD = BENCH / ".build" / "sseload"

SITECUSTOMIZE = """
import os
if os.environ.get("WSMEM_DIR"):
    import collections, gc, pickle, threading, time, tracemalloc
    from pathlib import Path

    _dir = Path(os.environ["WSMEM_DIR"])
    tracemalloc.start(int(os.environ.get("WSMEM_FRAMES", "6")))

    def _census():
        counts = collections.Counter()
        for obj in gc.get_objects():
            t = type(obj)
            counts[f"{t.__module__}.{t.__qualname__}"] += 1
        return dict(counts)

    def _watch():
        while True:
            for req in sorted(_dir.glob("*.req")):
                gc.collect()
                snap_census = _census()
                data = {"census": snap_census, "snapshot": tracemalloc.take_snapshot()}
                out = req.with_suffix(".snap")
                out.with_suffix(".tmp").write_bytes(pickle.dumps(data))
                out.with_suffix(".tmp").rename(out)
                req.unlink()
                del data, snap_census
            time.sleep(0.1)

    threading.Thread(target=_watch, daemon=True).start()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the server exited before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not listen in time")


def build_sseload() -> None:
    src = BENCH / "sseload.c"
    if not SSELOAD.exists() or SSELOAD.stat().st_mtime < src.stat().st_mtime:
        SSELOAD.parent.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-o", str(SSELOAD), str(src)], check=True)


SRC = ROOT / "src"


def start_server(src: Path, port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(extra_env)
    path = [str(src)]
    if "WSMEM_DIR" in extra_env:
        path.insert(0, extra_env["WSMEM_DIR"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    argv = [sys.executable, "-m", "tidings", "serve", "--host", HOST, "--port", str(port)]
    argv += ["--store", "memory://", "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    try:
        # With tracemalloc on from the first import, a server starts several times slower.
        wait_port(port, proc, 90 if "WSMEM_DIR" in extra_env else 20)
    except BaseException:
        proc.kill()  # a server that did not come up is not left behind
        proc.wait(10)
        raise
    return proc


def open_idle(port: int, path: str, conns: int) -> subprocess.Popen[str]:
    """`conns` WebSocket subscribers that wait for one event they never get."""
    env = dict(os.environ, SSELOAD_WS="1")
    argv = [str(SSELOAD), HOST, str(port), path, str(conns), "1", "3600"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"sseload: {line!r}")
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def warm_up(port: int, path: str) -> None:
    # The first sockets fill caches (imports, interned strings): not per socket. A few
    # only, so that the memory they free is not what the measured sockets reuse.
    load = open_idle(port, path, 10)
    time.sleep(0.3)
    stop(load)
    time.sleep(0.5)


def rss_round(src: Path, port_path: str, conns: int) -> float:
    port = free_port()
    server = start_server(src, port, {})
    try:
        warm_up(port, port_path)
        time.sleep(0.5)
        before = rss_kib(server.pid)
        load = open_idle(port, port_path, conns)
        time.sleep(1.0)
        after = rss_kib(server.pid)
        stop(load)
        return (after - before) / conns
    finally:
        stop(server)


def snapshot(folder: Path, name: str) -> dict[str, object]:
    req = folder / f"{name}.req"
    req.write_text("")
    out = folder / f"{name}.snap"
    end = time.monotonic() + 120
    while not out.exists():
        if time.monotonic() > end:
            raise RuntimeError("no snapshot from the server")
        time.sleep(0.1)
    # Written by the server this script started, for it.
    data: dict[str, object] = pickle.loads(out.read_bytes())  # noqa: S301
    return data


def heap_round(src: Path, path: str, conns: int, top: int, frames: int) -> None:
    import tracemalloc

    with tempfile.TemporaryDirectory(prefix="wsmem-") as tmp:
        folder = Path(tmp)
        (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
        port = free_port()
        server = start_server(src, port, {"WSMEM_DIR": tmp, "WSMEM_FRAMES": str(frames)})
        try:
            warm_up(port, path)
            time.sleep(0.5)
            before = snapshot(folder, "before")
            load = open_idle(port, path, conns)
            time.sleep(1.0)
            after = snapshot(folder, "after")
            stop(load)
        finally:
            stop(server)
    snap0 = before["snapshot"]
    snap1 = after["snapshot"]
    assert isinstance(snap0, tracemalloc.Snapshot)
    assert isinstance(snap1, tracemalloc.Snapshot)
    snap0 = snap0.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    snap1 = snap1.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    total = sum(s.size for s in snap1.statistics("filename")) - sum(
        s.size for s in snap0.statistics("filename")
    )
    print(f"python heap: {total / conns:,.0f} B per socket ({conns} sockets)")
    print(f"largest growth by line (B per socket, blocks per socket), top {top}:")
    for stat in snap1.compare_to(snap0, "lineno")[:top]:
        frame = stat.traceback[0]
        where = shorten(frame.filename) + f":{frame.lineno}"
        print(f"  {stat.size_diff / conns:8,.0f}  {stat.count_diff / conns:5.1f}  {where}")
    print("objects alive per socket, by type (>= 0.5):")
    c0 = before["census"]
    c1 = after["census"]
    assert isinstance(c0, dict)
    assert isinstance(c1, dict)
    grown = {k: (c1.get(k, 0) - c0.get(k, 0)) / conns for k in c1}
    for name, n in sorted(grown.items(), key=lambda kv: -kv[1]):
        if n >= 0.5:
            print(f"  {n:6.1f}  {name}")


def shorten(filename: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--path", default="/v1/channels/bench/ws")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=6, help="tracemalloc frames kept")
    parser.add_argument("--rss-rounds", type=int, default=3)
    parser.add_argument("--rss-only", action="store_true")
    parser.add_argument("--heap-only", action="store_true")
    parser.add_argument("--src", type=Path, default=SRC, help="the tidings sources to serve")
    args = parser.parse_args()
    src = args.src.resolve()
    build_sseload()
    if not args.heap_only:
        rounds = [rss_round(src, args.path, args.conns) for _ in range(args.rss_rounds)]
        shown = ", ".join(f"{r:.2f}" for r in rounds)
        print(f"VmRSS: {statistics.median(rounds):.2f} KiB per socket (median of {shown})")
    if not args.rss_only:
        heap_round(src, args.path, args.conns, args.top, args.frames)


if __name__ == "__main__":
    main()
