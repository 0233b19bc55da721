"""The README's client snippets, executed as written against `python app.py` with a key set."""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

from evaluation import load
from tests.support import ROOT

KEY = "clients-key-5"
README = (ROOT / "README.md").read_text()
SNIPPETS = dict(re.findall(r"```python\n# snippet: ([\w-]+)\n(.*?)```", README, flags=re.S))


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM fetches a price list at import otherwise
    proc, base = load.start_app(tmp_path_factory.mktemp("clients-app"), RERANK_API_KEY=KEY, RERANK_BACKEND="torch")
    yield base
    proc.terminate()
    proc.wait(30)


def test_every_client_has_a_snippet():
    assert set(SNIPPETS) == {"cohere-v2", "cohere-v1", "langchain", "llamaindex-cohere", "llamaindex-tei", "haystack",
                             "litellm"}


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_readme_snippet_runs_as_written(url, name):
    code = SNIPPETS[name].replace("http://127.0.0.1:7860", url).replace("YOUR_RERANK_API_KEY", KEY)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README:{name}", "exec"), {"__name__": f"snippet_{name}"})  # noqa: S102
    printed = out.getvalue().strip().splitlines()[-1]
    assert printed in ("1", "AI will transform science and work."), (name, printed)


def test_a_wrong_key_is_refused_through_a_framework(url):
    import cohere

    with pytest.raises(Exception, match="401|[Uu]nauthori"):
        cohere.ClientV2(api_key="wrong", base_url=url).rerank(model="m", query="q", documents=["a"])
