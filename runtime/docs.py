"""The API pages, ``/docs`` (Swagger UI) and ``/redoc``, with every asset served by the service itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN: without internet access
(an air-gapped cluster, a laptop on a plane, this project's CI) they are blank
white pages. Here the scripts and styles come from the pinned ``fastapi-offline``
package (its files only) and are served under :data:`ASSETS`; the pages honour
the ASGI ``root_path``, so they work behind a proxy that mounts the service on a
prefix too.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS = "/docs-assets"


def assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's files in the installed ``fastapi-offline`` package."""
    spec = find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package fastapi-offline (requirements.txt) is not installed: the API pages need it")
    return Path(spec.submodule_search_locations[0]) / "static"


def add_offline_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` for ``app``, created with ``docs_url=None, redoc_url=None``."""
    if app.docs_url or app.redoc_url:
        raise ValueError("create the app with docs_url=None and redoc_url=None: these pages replace FastAPI's")
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        """The schema's and the assets' URLs, under the proxy's prefix if there is one."""
        root = request.scope.get("root_path", "")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=schema, title=f"{app.title} - Swagger UI", swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css", swagger_favicon_url=f"{assets}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_redoc_html(
            openapi_url=schema, title=f"{app.title} - ReDoc", redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png", with_google_fonts=False)


def amend_openapi(app: FastAPI, amend: Callable[[dict[str, Any]], None]) -> None:
    """Change ``app``'s OpenAPI document in place once, when it is first built (amendments chain)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        amend(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
