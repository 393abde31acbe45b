"""The interactive API reference (/schema/...) works offline: every script, stylesheet and icon its
pages name is served by ctrlplane itself (ctrlplane/apidocs.py)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.conftest import Api

PAGES = ["/schema", "/schema/swagger", "/schema/redoc", "/schema/rapidoc"]


class Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and (name == "src" or (tag == "link" and name == "href")):
                self.urls.append(value)


@pytest.mark.parametrize("page", PAGES)
async def test_a_documentation_page_loads_every_asset_from_ctrlplane(api: Api, page: str) -> None:
    response = await api.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    parser = Assets()
    parser.feed(response.text)
    assert len(parser.urls) >= 2, parser.urls  # the icon and at least the page's script
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
        asset = await api.client.get(url)
        assert asset.status_code == 200, (page, url)
        assert len(asset.content) > 0
    assert "googleapis" not in response.text and "cdn." not in response.text and "unpkg" not in response.text


async def test_docs_redirects_to_the_reference_and_the_document_is_there(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 302
    assert docs.headers["location"].endswith("/schema")
    assert (await api.client.get("/schema/openapi.json")).json()["info"]["title"] == "ctrlplane"
    assert (await api.client.get("/schema/openapi.yaml")).text.startswith(("components:", "info:", "openapi:"))


@pytest.mark.parametrize(
    "path", ["/schema/nope", "/schema/elements", "/schema/nope.json", "/schema/a/b", "/schema/assets/redoc/x.js"]
)
async def test_an_unknown_schema_path_is_a_404_in_the_api_error_shape(api: Api, path: str) -> None:
    response = await api.client.get(path)
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"message", "code", "request_id"}
    assert body["code"] == "not_found"
    assert body["request_id"] == response.headers["x-request-id"]
