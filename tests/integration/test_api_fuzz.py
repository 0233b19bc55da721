"""Schemathesis against the FastAPI OpenAPI schema: every generated request gets a 4xx or a valid answer."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

import app as app_module
from service.settings import Settings
from tests.support import serve_in_thread, stop_server

KEY = "fuzz-key-123"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def open_server(packaged_scorer):
    url, srv = serve_in_thread(app_module.build_server(Settings(max_documents=30, max_body_bytes=50_000),
                                                       packaged_scorer, None, mcp_server=False))
    yield url
    stop_server(srv)


@pytest.fixture(scope="module")
def keyed_server(packaged_scorer):
    url, srv = serve_in_thread(app_module.build_server(Settings(max_documents=30, max_body_bytes=50_000, api_key=KEY),
                                                       packaged_scorer, None, mcp_server=False))
    yield url
    stop_server(srv)


OPERATIONS = [("/v2/rerank", "POST"), ("/v1/rerank", "POST"), ("/rerank", "POST"), ("/health", "GET"),
              ("/info", "GET"), ("/metrics", "GET")]


def _fuzz(base_url: str, path: str, method: str, mode: GenerationMode, check) -> int:
    """Run generated cases of one operation through ``check``; returns how many were tried."""
    operation = schemathesis.openapi.from_url(f"{base_url}/openapi.json")[path][method]
    tried = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def run(case):
        tried.append(1)
        check(case)

    run()
    return len(tried)


@pytest.mark.parametrize(("path", "method", "mode"),
                         [(p, m, GenerationMode.POSITIVE) for p, m in OPERATIONS]
                         + [(p, m, GenerationMode.NEGATIVE) for p, m in OPERATIONS if m == "POST"],
                         ids=lambda v: v.value if isinstance(v, GenerationMode) else str(v))
def test_fuzz_without_auth(open_server, path, method, mode):
    def check(case):
        response = case.call(base_url=open_server, timeout=60)
        assert response.status_code < 500, (path, response.text[:300])
        if response.status_code >= 400:
            assert response.json()["message"]
        elif mode is GenerationMode.POSITIVE:
            case.validate_response(response)

    assert _fuzz(open_server, path, method, mode, check) > 0
    assert httpx.get(f"{open_server}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(("path", "method"), OPERATIONS[:3])
def test_fuzz_with_auth(keyed_server, path, method):
    def check(case):
        authorised = case.call(base_url=keyed_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert authorised.status_code < 500, (path, authorised.text[:300])
        anonymous = case.call(base_url=keyed_server, timeout=60)
        assert anonymous.status_code == 401, anonymous.text[:200]  # the key is checked before anything else

    assert _fuzz(keyed_server, path, method, GenerationMode.POSITIVE, check) > 0
