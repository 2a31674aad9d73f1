"""Errors as answers: statuses, headers (Retry-After, Allow), JSON bodies, close codes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tidings.protocol.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    StoreError,
    TidingsError,
    Unauthorized,
)
from tidings.server.http.errors import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    close_code,
    close_socket,
    error_frame,
    error_response,
    rpc_error,
    send_error,
    starlette_error_response,
    unexpected_response,
    unserved_method,
)
from tidings.server.ratelimit import TooManyLogins


def sent(coro: Any) -> list[dict[str, Any]]:
    """The ASGI messages a raw-ASGI answer sends."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(coro(send))
    return messages


def test_an_error_response_has_the_errors_status_and_json_body() -> None:
    response = error_response(NotFound("no channel 'x': publish to create it"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {
        "error": {"code": "not_found", "message": "no channel 'x': publish to create it"}
    }
    assert "retry-after" not in response.headers


def test_an_error_that_says_when_to_retry_carries_retry_after_in_header_and_body() -> None:
    exc = TooManyLogins("slow down", 7)
    response = error_response(exc)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert json.loads(response.body)["error"]["retry_after"] == 7


def test_a_refused_stream_gets_the_same_body_and_headers_as_raw_asgi() -> None:
    exc = TooManyLogins("slow down", 3)
    start, body = sent(lambda send: send_error(send, exc))
    assert start["status"] == 429
    assert start["headers"][:2] == [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body["body"])),
    ]
    assert (b"retry-after", b"3") in start["headers"]
    assert body["body"] == error_response(exc).body


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadRequest("x"), CLOSE_POLICY),
        (Unauthorized("x"), CLOSE_POLICY),
        (Forbidden("x"), CLOSE_POLICY),
        (NotFound("x"), CLOSE_POLICY),
        (StoreError("x"), CLOSE_INTERNAL),
        (TidingsError("x"), CLOSE_INTERNAL),
    ],
)
def test_a_refused_socket_closes_1008_for_client_errors_and_1011_for_server_ones(
    exc: TidingsError, code: int
) -> None:
    assert close_code(exc) == code


def test_a_closed_socket_is_accepted_first_and_its_reason_is_cut_to_fit_a_close_frame() -> None:
    accept, close = sent(lambda send: close_socket(send, CLOSE_POLICY, "x" * 500))
    assert accept == {"type": "websocket.accept"}
    assert close["code"] == CLOSE_POLICY
    assert close["reason"] == "x" * 120


def test_an_error_frame_answers_the_ref_with_the_error_body() -> None:
    assert error_frame(5, Forbidden("no")) == {
        "type": "error",
        "ref": 5,
        "error": {"code": "forbidden", "message": "no"},
    }


def test_an_unexpected_error_is_a_500_that_points_to_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = unexpected_response("POST", "/v1/x", RuntimeError("boom"))
    assert response.status_code == 500
    assert json.loads(response.body) == {
        "error": {
            "code": "internal_error",
            "message": "unexpected server error; see the server log",
        }
    }
    assert "unexpected error on POST /v1/x" in caplog.text
    assert "boom" in caplog.text


def test_starlettes_404_names_the_path_and_the_api_description() -> None:
    response = starlette_error_response(404, "Not Found", None, "GET", "/nope", None)
    assert response.status_code == 404
    assert json.loads(response.body)["error"] == {
        "code": "not_found",
        "message": "no endpoint /nope: see /openapi.json for the API",
    }


def test_starlettes_405_carries_the_whole_paths_allow() -> None:
    response = starlette_error_response(405, "x", {"allow": "GET"}, "PATCH", "/p", "GET, POST")
    assert response.headers["allow"] == "GET, POST"
    assert json.loads(response.body)["error"]["code"] == "method_not_allowed"


def test_options_on_a_known_path_is_204_with_its_allow_and_no_body() -> None:
    assert unserved_method("OPTIONS", "/p", "GET, OPTIONS", False) == (
        204,
        [(b"allow", b"GET, OPTIONS")],
        b"",
    )


def test_an_unserved_method_is_405_naming_what_to_use() -> None:
    status, headers, body = unserved_method("PATCH", "/p", "GET, OPTIONS", False)
    assert status == 405
    assert (b"allow", b"GET, OPTIONS") in headers
    assert (b"content-length", b"%d" % len(body)) in headers
    assert json.loads(body)["error"]["message"] == "PATCH is not allowed on /p: use GET, OPTIONS"


def test_a_plain_get_on_a_websocket_path_is_426_naming_the_upgrade() -> None:
    status, headers, body = unserved_method("GET", "/v1/channels/c/ws", "GET, OPTIONS", True)
    assert status == 426
    assert (b"upgrade", b"websocket") in headers
    assert json.loads(body)["error"]["code"] == "upgrade_required"


def test_a_json_rpc_error_leaves_data_out_unless_given() -> None:
    assert rpc_error(1, -32601, "no") == {
        "jsonrpc": "2.0",
        "error": {"code": -32601, "message": "no"},
        "id": 1,
    }
    assert rpc_error(None, -32000, "failed", {"job_id": "j"})["error"]["data"] == {"job_id": "j"}
