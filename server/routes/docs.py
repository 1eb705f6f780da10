"""``/docs`` (Swagger UI) served with its JavaScript and CSS from this server, not a CDN.

FastAPI's own docs page loads Swagger UI from a CDN, so on an offline or firewalled server the page stays
blank. The assets come from the ``fastapi-offline`` package (Swagger UI 5, which reads OpenAPI 3.1) and are
served under ``/docs-assets/``; the page is FastAPI's own HTML with those URLs (FastAPI's self-hosted docs
pattern). ``/redoc`` is off: ReDoc's bundle fetches its logo from Redocly's CDN whatever it is told, and
Swagger UI already shows every operation (and can try them).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS = {
    "swagger_js": "swagger-ui-bundle.js",
    "swagger_css": "swagger-ui.css",
    "favicon": "favicon.png",
}

router = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    """The folder holding the Swagger UI / ReDoc files (inside the installed ``fastapi_offline`` package)."""
    return Path(str(files("fastapi_offline") / "static"))


def _asset(request: Request, key: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{ASSETS[key]}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - API docs",
        swagger_js_url=_asset(request, "swagger_js"),
        swagger_css_url=_asset(request, "swagger_css"),
        swagger_favicon_url=_asset(request, "favicon"),
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


def install_docs(app: FastAPI) -> None:
    """The docs page and its assets on ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    app.include_router(router)
