"""The interactive API reference under ``/schema``, served whole by ctrlplane: nothing from a CDN.

Litestar's render plugins load their JavaScript, CSS, fonts and favicon from public CDNs by
default, so the pages were blank without Internet access. Here each page names assets that
ctrlplane serves itself from ``/schema/assets/...``, copied from the ``openapi-ui-bundles`` package
(Swagger UI, Redoc and RapiDoc, as released upstream; a Python dependency, so ``pip install`` ships
them and nothing is built or fetched at run time). Scalar and Stoplight Elements, which no package
ships, are not offered.

- ``/schema`` and ``/schema/swagger``: Swagger UI; ``/schema/redoc``: Redoc; ``/schema/rapidoc``:
  RapiDoc; ``/schema/openapi.json`` and ``/schema/openapi.yaml``: the document.
- ``/docs`` redirects to ``/schema``.
- Any other ``/schema/...`` path answers 404 in ctrlplane's error shape ``{message, code,
  request_id}``, not Litestar's HTML page (``_json_not_found``).
"""

from __future__ import annotations

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    RapidocRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import rapidoc, redoc, swagger_ui

SCHEMA_PATH = "/schema"
ASSETS = f"{SCHEMA_PATH}/assets"
_FAVICON = f"<link rel='icon' type='image/png' href='{ASSETS}/swagger-ui/favicon-32x32.png'>"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """The documentation pages, Swagger UI first (the page at ``/schema`` itself)."""
    return [
        SwaggerRenderPlugin(
            path=["/", "/swagger"],
            js_url=f"{ASSETS}/swagger-ui/swagger-ui-bundle.js",
            css_url=f"{ASSETS}/swagger-ui/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS}/swagger-ui/swagger-ui-standalone-preset.js",
            favicon=_FAVICON,
        ),
        RedocRenderPlugin(
            path="/redoc", js_url=f"{ASSETS}/redoc/redoc.standalone.js", google_fonts=False, favicon=_FAVICON
        ),
        RapidocRenderPlugin(path="/rapidoc", js_url=f"{ASSETS}/rapidoc/rapidoc-min.js", favicon=_FAVICON),
        YamlRenderPlugin(path="/openapi.yaml"),
    ]


def _json_not_found(response: Response[bytes]) -> Response[bytes]:
    """Litestar answers an unknown ``/schema/{page}`` with its own HTML 404 page; raising instead
    lets the app's one exception handler answer it like every other unknown path."""
    if response.status_code == 404:
        raise NotFoundException("no such API documentation page; the reference is at /schema")
    return response


def schema_router() -> Router:
    """The router Litestar adds the pages to, holding the pages' assets."""
    assets = [
        create_static_files_router(
            path=f"/assets/{name}", directories=[bundle.static_path], include_in_schema=False, name=f"apidocs-{name}"
        )
        for name, bundle in (("swagger-ui", swagger_ui), ("redoc", redoc), ("rapidoc", rapidoc))
    ]
    return Router(SCHEMA_PATH, route_handlers=assets, include_in_schema=False, after_request=_json_not_found)


@get("/docs", include_in_schema=False, sync_to_thread=False)
def docs_redirect() -> Redirect:
    """``/docs`` is where people look first."""
    return Redirect(SCHEMA_PATH)
