"""The console as the server serves it: `GET /console` is the page `make console` built from
console/ (copied into the package), `GET /console/{asset}` its modules and stylesheet; public,
revalidated on every use (ETag, 304), the page under a Content-Security-Policy of this
origin only; nothing else under /console, however the path is spelled; a 503 saying how to
build it when the package lacks it; `GET /` lists it first.
"""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import httpx
import pytest

import tidings
from tests.conftest import ServerFactory

BUILT = Path(tidings.__file__).parent / "server" / "assets" / "console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def built_files() -> list[Path]:
    """The modules and the stylesheet of the build (missing: `make console` did not run)."""
    files = sorted(p for p in BUILT.glob("*") if p.suffix in TYPES)
    assert files, f"no console files in {BUILT}: run `make console`"
    return files


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client normalises its dots or escapes): the
    status and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.timeout(30)
def test_the_page_is_the_build_with_a_strict_csp_an_etag_and_no_cache(
    tidings_server: ServerFactory,
) -> None:
    """/console is the built index.html under a CSP that allows only this origin's scripts,
    styles and connections; it loads its files by relative URLs (a proxy's path prefix is
    kept) and has no inline script or style; an ETag answers 304; HEAD has the head only."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        page = http.get("/console")
        assert page.status_code == 200, page.text[:200]
        assert page.content == (BUILT / "index.html").read_bytes()
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CSP
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text and "<style" not in page.text
        assert " style=" not in page.text
        loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert "console/main.js" in loaded and "console/console.css" in loaded
        for url in loaded:
            assert url.startswith(("console/", "data:", "openapi.json", "docs")), url
        etag = page.headers["etag"]
        again = http.get("/console", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["content-security-policy"] == CSP
        head = http.head("/console")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["etag"] == etag


@pytest.mark.timeout(30)
def test_every_module_and_the_stylesheet_are_served_with_their_type_and_etag(
    tidings_server: ServerFactory,
) -> None:
    """Each built file is served by its name with its media type, `no-cache` and an ETag
    that a conditional request answers 304; the modules import the client from
    ../client/tidings.js, which the server has too."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for path in built_files():
            r = http.get(f"/console/{path.name}")
            assert r.status_code == 200, (path.name, r.text[:200])
            assert r.content == path.read_bytes(), path.name
            assert r.headers["content-type"] == TYPES[path.suffix]
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-content-type-options"] == "nosniff"
            etag = r.headers["etag"]
            assert etag.startswith('"') and etag.endswith('"')
            again = http.get(f"/console/{path.name}", headers={"If-None-Match": etag})
            assert again.status_code == 304, path.name
            assert again.content == b""
            other = http.get(f"/console/{path.name}", headers={"If-None-Match": '"stale"'})
            assert other.status_code == 200
        api = http.get("/console/api.js").text
        assert 'from "../client/tidings.js"' in api
        assert http.get("/client/tidings.js").status_code == 200


@pytest.mark.timeout(30)
def test_unknown_files_under_console_are_404(tidings_server: ServerFactory) -> None:
    """Only the build's modules and stylesheet: not its sources, not the page by another
    name, not a name that was never built."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for name in ("nothing.js", "main.ts", "index.html", "tsconfig.json", "console.css.map"):
            r = http.get(f"/console/{name}")
            assert r.status_code == 404, (name, r.status_code)
            assert r.json()["error"]["code"] == "not_found"


@pytest.mark.timeout(30)
def test_no_path_reaches_a_file_outside_the_console(tidings_server: ServerFactory) -> None:
    """Dots, escaped slashes and backslashes in the asset's name reach nothing else: the
    server's own sources, the client by a detour, or the system's files."""
    srv = tidings_server()
    secrets = (b"from __future__", b"root:", b"export class Tidings", b"[tool.hatch")
    for target in (
        "/console/../client/tidings.js",
        "/console/..%2Fclient%2Ftidings.js",
        "/console/%2e%2e%2fclient%2ftidings.js",
        "/console/..%2F..%2Fops.py",
        "/console/..%2F..%2F..%2F..%2F..%2F..%2Fpyproject.toml",
        "/console/%2e%2e",
        "/console/..%5c..%5cops.py",
        "/console/..%5C..%5Cmain.js",
        "/console/%2Fetc%2Fpasswd",
        "/console//etc/passwd",
        "/console/main.js%00.css",
    ):
        status, body = raw_get(srv.port, target)
        assert status in (400, 404), (target, status)
        assert not any(secret in body for secret in secrets), target
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(30)
def test_the_console_is_public_under_require_auth(tidings_server: ServerFactory) -> None:
    """The page and its files load before anyone logs in (the page asks for the login);
    the API it calls does not answer them."""
    srv = tidings_server(args=["--require-auth"])
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/console").status_code == 200
        for path in built_files():
            assert http.get(f"/console/{path.name}").status_code == 200, path.name
        assert http.get("/v1/auth/me").status_code == 401
        assert http.get("/v1/channels").status_code == 401


@pytest.mark.timeout(30)
def test_the_index_lists_the_console_first(tidings_server: ServerFactory) -> None:
    """`GET /` points to the console before anything else, as a page and as JSON."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        page = http.get("/", headers={"Accept": "text/html"})
        links = re.findall(r'href="([^"]+)"', page.text)
        assert links[0] == "console", links
        body = http.get("/", headers={"Accept": "application/json"}).json()
        assert next(iter(body["links"].items())) == ("console", "/console")


@pytest.mark.timeout(30)
def test_a_new_build_is_served_without_a_restart_and_a_missing_one_is_a_503(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """A tidings whose package lacks the console answers 503 saying to run `make console`
    (and serves the rest); once the files are there they are served, and when the page is
    rebuilt the new files are, with a new ETag."""
    copy = tmp_path / "src"
    shutil.copytree(
        Path(tidings.__file__).parent,
        copy / "tidings",
        ignore=shutil.ignore_patterns("console", "__pycache__"),
    )
    target = copy / "tidings" / "server" / "assets" / "console"
    srv = tidings_server(env={"PYTHONPATH": str(copy)})
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for path in ("/console", "/console/main.js"):
            r = http.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            error = r.json()["error"]
            assert error["code"] == "assets_missing"
            assert "make console" in error["message"]
        assert http.get("/healthz").status_code == 200
        assert http.get("/client/tidings.js").status_code == 200

        shutil.copytree(BUILT, target)
        first = http.get("/console")
        assert first.status_code == 200
        assert http.get("/console/main.js").content == (BUILT / "main.js").read_bytes()

        (target / "main.js").write_text("// rebuilt\n")
        page = target / "index.html"
        page.write_bytes(page.read_bytes().replace(b"<title>", b"<title>rebuilt "))
        second = http.get("/console")
        assert b"rebuilt" in second.content
        assert second.headers["etag"] != first.headers["etag"]
        assert http.get("/console/main.js").text == "// rebuilt\n"
    assert "Traceback" not in srv.log()
