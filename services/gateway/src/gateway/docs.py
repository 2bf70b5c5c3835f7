"""The API's interactive documentation: Swagger UI served by the gateway itself.

The page shares its origin with the web app, whose access token sits in `sessionStorage`, so it
loads no third-party script: the Swagger UI assets come from the `swagger-ui-bundle` package, the
start-up script is a file rather than inline code, and a CSP allows only this origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from servicekit.errors import NotFound

ASSETS = "/docs/assets"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": DOCS_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Real Staging API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""

# The validator badge would send the document to a third party: off.
INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""


# Only what the page needs: the package also ships demo pages that must not run on this origin.
ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


async def docs_page() -> HTMLResponse:
    """Swagger UI for the merged public OpenAPI document."""
    return HTMLResponse(PAGE, headers=HEADERS)


async def docs_init() -> Response:
    """The script that starts Swagger UI (a file, so the CSP needs no inline scripts)."""
    return Response(INIT, media_type="text/javascript", headers=HEADERS)


async def docs_asset(name: str) -> FileResponse:
    """One Swagger UI asset from the installed package."""
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        raise NotFound("Not found.")
    headers = {**HEADERS, "Cache-Control": "public, max-age=3600"}
    return FileResponse(Path(swagger_ui_path) / name, media_type=media_type, headers=headers)


def mount_docs(app: FastAPI) -> None:
    """Serve `/docs` and its assets from this process."""
    app.add_api_route("/docs", docs_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs/init.js", docs_init, methods=["GET"], include_in_schema=False)
    app.add_api_route(ASSETS + "/{name}", docs_asset, methods=["GET"], include_in_schema=False)
