"""``GET /``: the web page (plain static files, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/app.js")
def script() -> FileResponse:
    return FileResponse(STATIC / "app.js", media_type="text/javascript")


@router.get("/static/style.css")
def style() -> FileResponse:
    return FileResponse(STATIC / "style.css", media_type="text/css")
