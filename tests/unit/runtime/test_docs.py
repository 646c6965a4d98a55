"""The API pages' assets are served by the service itself (the browser test is in the gateway module)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runtime.docs import ASSETS, add_offline_docs


def test_the_pages_point_at_assets_the_service_serves_under_its_root_path():
    app = FastAPI(title="t", docs_url=None, redoc_url=None)
    add_offline_docs(app)
    with TestClient(app, root_path="/behind/proxy") as proxied:
        pages = {path: proxied.get(path).text for path in ("/docs", "/redoc")}
    for page in pages.values():
        assert "cdn." not in page and "googleapis" not in page
    assert "/behind/proxy/openapi.json" in pages["/docs"] and "/behind/proxy/openapi.json" in pages["/redoc"]
    with TestClient(app) as client:
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            assert f"/behind/proxy{ASSETS}/{asset}" in pages["/docs" if "swagger" in asset else "/redoc"]
            served = client.get(f"{ASSETS}/{asset}")
            assert served.status_code == 200 and len(served.content) > 100_000, asset


def test_an_app_with_fastapis_own_pages_is_refused():
    with pytest.raises(ValueError, match="docs_url=None"):
        add_offline_docs(FastAPI())
