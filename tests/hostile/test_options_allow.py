"""OPTIONS and wrong methods: every known path names all of its methods (RFC 9110).

Reproduced: `OPTIONS /v1/channels/x` answered 405 with `Allow: GET, HEAD` (PUT and DELETE
missing: Starlette's 405 named the methods of the first route that matched the path only),
and the stream paths answered 404 to any method but GET.
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerFactory, ServerProcess

# The methods each path accepts, as a client would list them from /openapi.json: HEAD is
# served beside every request/response GET; the streams (SSE, WebSocket) answer GET only.
EXPECTED = {
    "/v1/channels": "GET, HEAD, OPTIONS",
    "/v1/channels/news": "GET, HEAD, PUT, DELETE, OPTIONS",
    "/v1/channels/news/messages": "GET, HEAD, POST, OPTIONS",
    "/v1/channels/news/events": "GET, OPTIONS",
    "/v1/channels/news/ws": "GET, OPTIONS",
    "/v1/events": "GET, OPTIONS",
    "/v1/jobs": "GET, HEAD, POST, OPTIONS",
    "/v1/jobs/abc": "GET, HEAD, OPTIONS",
    "/v1/jobs/abc/events": "GET, OPTIONS",
    "/v1/jobs/abc/ws": "GET, OPTIONS",
    "/v1/jobs/abc/cancel": "POST, OPTIONS",
    "/v1/workers/lease": "POST, OPTIONS",
    "/v1/admin/users/bob": "PUT, DELETE, OPTIONS",
    "/v1/auth/login": "POST, OPTIONS",
    "/healthz": "GET, HEAD, OPTIONS",
    "/metrics": "GET, HEAD, OPTIONS",
}


def methods(allow: str) -> set[str]:
    return {m.strip() for m in allow.split(",") if m.strip()}


@pytest.fixture
def srv(tidings_server: ServerFactory) -> ServerProcess:
    return tidings_server()


@pytest.mark.timeout(30)
def test_options_on_every_known_path_answers_204_with_all_its_methods(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        for path, allow in EXPECTED.items():
            r = http.options(path)
            assert r.status_code == 204, (path, r.status_code, r.text)
            assert r.headers["allow"] == allow, path
            assert r.content == b""


@pytest.mark.timeout(30)
def test_a_wrong_method_answers_405_json_with_the_same_allow_as_options(
    srv: ServerProcess,
) -> None:
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        for path, allow in EXPECTED.items():
            wrong = next(m for m in ("PATCH", "PUT", "DELETE") if m not in methods(allow))
            r = http.request(wrong, path)
            assert r.status_code == 405, (wrong, path, r.status_code, r.text)
            assert r.headers["allow"] == allow, (wrong, path)
            assert r.headers["content-type"] == "application/json"
            error = r.json()["error"]
            assert error["code"] == "method_not_allowed"
            assert wrong in error["message"] and path in error["message"]


@pytest.mark.timeout(30)
def test_every_method_in_allow_is_documented_and_every_documented_method_is_in_allow(
    srv: ServerProcess,
) -> None:
    """The answer to OPTIONS and the OpenAPI document agree on every path (HEAD and
    OPTIONS being implied by the server)."""
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        paths = http.get("/openapi.json").json()["paths"]
        for template, operations in paths.items():
            path = template.replace("{channel}", "c").replace("{job_id}", "j")
            path = path.replace("{name}", "n").replace("{key}", "k")
            r = http.options(path)
            assert r.status_code == 204, (path, r.status_code)
            documented = {m.upper() for m in operations}
            assert methods(r.headers["allow"]) - {"HEAD", "OPTIONS"} == documented, path


@pytest.mark.timeout(30)
def test_the_streams_do_not_answer_head_and_say_so_with_405(srv: ServerProcess) -> None:
    """An event stream never ends, so there are no headers of a finished answer for HEAD
    to describe: HEAD on a stream path is 405 naming GET (it used to be 404)."""
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        for path in ("/v1/channels/news/events", "/v1/events?channel=a", "/v1/jobs/abc/events"):
            r = http.head(path)
            assert r.status_code == 405, path
            assert r.headers["allow"] == "GET, OPTIONS"


@pytest.mark.timeout(30)
def test_a_plain_get_on_a_websocket_path_answers_426_and_the_socket_still_opens(
    srv: ServerProcess,
) -> None:
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        for path in ("/v1/channels/news/ws", "/v1/jobs/abc/ws"):
            r = http.get(path)
            assert r.status_code == 426, (path, r.text)
            assert r.headers["upgrade"] == "websocket"
            assert r.json()["error"]["code"] == "upgrade_required"
    with ws_connect(f"{srv.ws_url}/v1/channels/news/ws") as ws:
        ws.send(json.dumps({"data": "hi", "ref": "r"}))
        frames = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        assert any(f.get("type") == "ack" for f in frames), frames


@pytest.mark.timeout(30)
def test_options_star_names_every_method_the_server_serves(srv: ServerProcess) -> None:
    """`OPTIONS *` (RFC 9110 §9.3.7) asks about the server as a whole."""
    with httpx.Client(timeout=5) as http:
        request = http.build_request("OPTIONS", srv.url)
        request.extensions["target"] = b"*"
        r = http.send(request)
    assert r.status_code == 204
    assert r.headers["allow"] == "GET, HEAD, POST, PUT, DELETE, OPTIONS"


@pytest.mark.timeout(30)
def test_unknown_paths_stay_404_for_every_method_including_options(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        for method in ("OPTIONS", "GET", "PATCH"):
            r = http.request(method, "/v1/nope")
            assert r.status_code == 404, method
            assert r.json()["error"]["code"] == "not_found"


@pytest.mark.timeout(30)
def test_cors_preflights_are_still_answered_by_the_cors_layer(
    tidings_server: ServerFactory,
) -> None:
    """With --cors-origins, a preflight (Origin + Access-Control-Request-Method) gets the
    CORS answer; a plain OPTIONS from that origin gets the Allow answer with CORS headers."""
    srv = tidings_server(args=["--cors-origins", "https://app.example"])
    origin = {"Origin": "https://app.example"}
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        pre = http.options(
            "/v1/channels/news",
            headers={**origin, "Access-Control-Request-Method": "PUT"},
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "PUT" in pre.headers["access-control-allow-methods"]
        bad = http.options(
            "/v1/channels/news",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
        )
        assert bad.status_code == 400
        plain = http.options("/v1/channels/news", headers=origin)
        assert plain.status_code == 204
        assert plain.headers["allow"] == "GET, HEAD, PUT, DELETE, OPTIONS"
        assert plain.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.timeout(30)
def test_options_needs_no_credentials_on_a_server_that_requires_them(
    tidings_server: ServerFactory,
) -> None:
    """What methods a path takes is public (it is in /openapi.json): OPTIONS is answered
    before authentication, like a CORS preflight; the methods themselves still need it."""
    srv = tidings_server(args=["--require-auth", "--sessions", "memory"])
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        r = http.options("/v1/channels/news")
        assert r.status_code == 204
        assert r.headers["allow"] == "GET, HEAD, PUT, DELETE, OPTIONS"
        assert http.get("/v1/channels/news").status_code == 401
