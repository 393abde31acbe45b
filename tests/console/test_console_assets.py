"""The console's files are served by ctrlplane itself, with a CSP that allows nothing from
elsewhere, and reference nothing outside the server."""

from __future__ import annotations

import re

from ctrlplane.console import STATIC
from tests.conftest import Api


async def test_console_pages_and_assets_come_from_the_server_with_a_strict_csp(api: Api) -> None:
    page = await api.client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in [
        ("/console/js/app.js", "javascript"),
        ("/console/vendor/uplot/uPlot.iife.min.js", "javascript"),
    ]:
        response = await api.client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
    missing = await api.client.get("/console/no-such-file.js")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_console_sources_load_nothing_from_another_origin() -> None:
    for path in [STATIC / "index.html", STATIC / "console.css", *sorted((STATIC / "js").glob("*.js"))]:
        assert not re.search(
            r"""(src|href)=["']?(https?:)?//|import\s.*["']https?:|url\(["']?https?:""", path.read_text()
        ), path
