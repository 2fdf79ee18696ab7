"""The OpenAPI document: the committed copy equals the generated one, and it covers every route a worker serves."""

from __future__ import annotations

import json
from pathlib import Path

from core.settings import load_settings
from streams import dashboard
from streams.openapi import openapi_document, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_document_is_the_generated_one() -> None:
    assert DOC.read_text() == render(), "regenerate: python -m streams.openapi > docs/openapi.json"


def test_every_route_is_documented_with_its_methods_and_auth(tmp_path: Path) -> None:
    from streams.worker import create_app

    w = create_app(load_settings(env={}, home=str(tmp_path), model_path=str(tmp_path / "none")))
    served: dict[str, set[str]] = {}
    for route in w.app.web.web_app.router.routes():
        if route.method != "HEAD":
            served.setdefault(route.resource.canonical, set()).add(route.method.lower())
    doc = openapi_document()
    documented = {path: set(ops) for path, ops in doc["paths"].items()}
    assert documented == served
    open_paths = {p for p, ops in doc["paths"].items() for op in ops.values() if op.get("security") == []}
    assert open_paths == {"/livez", "/readyz", "/healthz"} | dashboard.OPEN_PATHS
    assert doc["security"] == [{"bearer": []}]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path not in open_paths:
                assert "401" in op["responses"], path
    json.dumps(doc)  # plain JSON all the way down
    assert doc["openapi"].startswith("3.1")
