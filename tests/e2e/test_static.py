"""`tidings serve --static DIR`: a page's files on the API's origin, under /static/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>page</title>")
    (root / "app.js").write_text("export const x = 1;\n")
    (root / "sub" / "index.html").write_text("sub page")
    (tmp_path / "secret.txt").write_text("not served")
    return root


@pytest.mark.timeout(30)
def test_static_serves_the_page_with_types_index_and_conditional_requests(
    tidings_server: ServerFactory, site: Path
) -> None:
    srv = tidings_server(args=["--static", str(site), "--require-auth"])
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        # Public even with --require-auth: the page loads before its user logs in.
        index = http.get("/static/")
        assert index.status_code == 200, index.text
        assert index.text.startswith("<!doctype html>")
        assert index.headers["content-type"].startswith("text/html")
        assert http.get("/static", follow_redirects=True).text == index.text
        script = http.get("/static/app.js")
        assert script.headers["content-type"].split(";")[0] in (
            "text/javascript",
            "application/javascript",
        )
        again = http.get("/static/app.js", headers={"if-none-match": script.headers["etag"]})
        assert again.status_code == 304
        assert http.head("/static/app.js").headers["content-length"] == str(len(script.content))
        assert http.get("/static/sub/").text == "sub page"
        assert http.get("/static/missing.js").status_code == 404
        # Nothing outside the directory, however the path is spelled.
        for path in (
            "/static/../secret.txt",
            "/static/%2e%2e/secret.txt",
            "/static/sub/../../secret.txt",
        ):
            assert http.get(path).status_code == 404, path
        # The API itself still needs credentials.
        assert http.get("/v1/channels").status_code == 401


@pytest.mark.timeout(30)
def test_static_without_the_option_serves_nothing_and_a_missing_dir_is_one_clear_error(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    srv = tidings_server()
    assert httpx.get(f"{srv.url}/static/index.html", timeout=5).status_code == 404
    missing = tmp_path / "nope"
    out = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--static", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    assert "is not a directory" in out.stderr and "--static" in out.stderr, out.stderr
