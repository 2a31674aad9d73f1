"""`--static DIR`: an application's own page, served by tidings under `/static/`.

A page on the same origin as the API needs no CORS and no second server: the JavaScript
client (`/client/tidings.js`), the API and the page share one origin and, over TLS, one
HTTP/2 connection. Starlette's StaticFiles finds the file (a path that leaves DIR through
`..` or a link is not found), guesses its content type, answers HEAD and conditional
requests (ETag, Last-Modified, 304) and serves `index.html` for a directory. The files
are public, like /docs: a page must load before its user logs in.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from tidings.protocol.errors import NotFound

__all__ = ["STATIC_PATH", "static_routes"]

STATIC_PATH = "/static/{path:path}"


def static_routes(directory: str) -> list[Route]:
    """The routes that serve `directory` under /static/ (none when it is empty)."""
    if not directory:
        return []
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(
            f"static: {directory!r} is not a directory; pass the folder of your page's "
            "files with --static (TIDINGS_STATIC)"
        )
    files = StaticFiles(directory=root, html=True)

    async def serve(request: Request) -> Response:
        path = request.path_params["path"]
        try:
            return await files.get_response(path, request.scope)
        except HTTPException as exc:  # StaticFiles' 404 (and 405): the API's JSON error
            raise NotFound(f"no file {path!r} in the --static directory") from exc

    async def to_slash(request: Request) -> Response:
        return Response(status_code=308, headers={"location": "/static/"})

    return [
        Route("/static", to_slash, methods=["GET"]),
        Route(STATIC_PATH, serve, methods=["GET"]),
    ]
