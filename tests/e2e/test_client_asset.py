"""The JavaScript client as the server serves it: `GET /client/tidings.js` is the module
`make client` built from clients/js (copied into the package), with its types beside it;
public, revalidated on every use (ETag, 304), and a 503 saying how to build it when the
package lacks it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

import tidings
from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "clients" / "js" / "dist"
TYPES = {
    "tidings.js": "text/javascript; charset=utf-8",
    "tidings.d.ts": "application/typescript; charset=utf-8",
}


@pytest.mark.timeout(30)
def test_the_served_client_is_the_built_module_with_its_type_and_etag(
    tidings_server: ServerFactory,
) -> None:
    """Each file's bytes are the build's, with its media type, `no-cache` and an ETag that
    a conditional request answers 304 (empty); HEAD answers the same head, no body."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for name, media_type in TYPES.items():
            built = (BUILT / name).read_bytes()  # missing: `make client` did not run
            r = http.get(f"/client/{name}")
            assert r.status_code == 200, r.text[:200]
            assert r.content == built, name
            assert r.headers["content-type"] == media_type
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["access-control-allow-origin"] == "*"
            etag = r.headers["etag"]
            assert etag.startswith('"') and etag.endswith('"')
            again = http.get(f"/client/{name}", headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert again.content == b""
            assert again.headers["etag"] == etag
            other = http.get(f"/client/{name}", headers={"If-None-Match": '"something-else"'})
            assert other.status_code == 200
            assert other.content == built
            head = http.head(f"/client/{name}")
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["etag"] == etag
            assert head.headers["content-type"] == media_type
        assert b"export class Tidings" in http.get("/client/tidings.js").content
        missing = http.get("/client/index.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


@pytest.mark.timeout(30)
def test_the_client_is_public_under_require_auth(tidings_server: ServerFactory) -> None:
    """A page must load the client before its user logs in."""
    srv = tidings_server(args=["--require-auth"])
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for name in TYPES:
            assert http.get(f"/client/{name}").status_code == 200, name
        assert http.get("/v1/channels").status_code == 401


@pytest.mark.timeout(30)
def test_without_the_built_client_the_server_answers_503_saying_to_run_make_client(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """A tidings whose package lacks the client's files serves everything else."""
    copy = tmp_path / "src"
    shutil.copytree(
        Path(tidings.__file__).parent,
        copy / "tidings",
        ignore=shutil.ignore_patterns("client", "__pycache__"),
    )
    srv = tidings_server(env={"PYTHONPATH": str(copy)})
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for name in TYPES:
            r = http.get(f"/client/{name}")
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/json"
            error = r.json()["error"]
            assert error["code"] == "assets_missing"
            assert "make client" in error["message"]
        assert http.get("/healthz").status_code == 200
