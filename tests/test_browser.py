"""A real browser (Debian's Chromium, driven by Playwright) against `python app.py` on loopback."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import load  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium: install Debian's with `apt-get install -y chromium` (.ci/run does) to run the browser test")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    proc, url = load.start_app(tmp_path_factory.mktemp("browser-app"))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            tab = browser.new_page(viewport={"width": 1300, "height": 1400})
            tab.set_default_timeout(60_000)
            tab.goto(url, wait_until="networkidle")
            yield tab
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def _cells(page, elem_id: str) -> list[str]:
    return [c.inner_text() for c in page.locator(f"#{elem_id} [role=gridcell]").all()]


def test_edit_a_row_submit_and_read_the_reranked_order(page):
    page.get_by_label("Query").fill("What is the future of AI?")
    cells = page.locator("#documents [role=gridcell]")
    assert "football" in cells.nth(9).inner_text()
    cells.nth(9).dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type("Artificial intelligence will shape the future of humanity and AI research.")
    page.keyboard.press("Enter")
    # the edit is committed once the table shows it (a cold browser can be slower than the next click)
    page.wait_for_function("[...document.querySelectorAll('#documents [role=gridcell]')]"
                           ".some(c => c.innerText.startsWith('Artificial intelligence will shape'))")
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('ranked')")
    out = _cells(page, "reranked")
    rows = [out[i:i + 3] for i in range(0, len(out), 3)]
    assert len(rows) == 4  # five rows in, one duplicate dropped
    assert rows[0][1].startswith("Artificial intelligence will shape the future")  # the edited row wins
    assert rows[0][0] == "https://example.org/football"  # its other cells came along unchanged
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert "bread" in rows[-1][1]
    assert "1 duplicate text(s) dropped" in page.locator("#status").inner_text()
    assert "Inference backend: torch" in page.locator("#inference").inner_text()  # which backend ran it
    page.screenshot(path=str(ARTIFACTS / "rerank.png"), full_page=True)


def test_retrieve_and_rerank_tab(page):
    page.get_by_role("tab", name="Retrieve & rerank").click()
    page.locator("#pipeline-query textarea").fill("How does rerank latency depend on batch size?")
    page.locator("#pipeline-run").click()
    page.wait_for_function("document.querySelector('#pipeline-status')?.innerText.includes('Retrieved')")
    out = _cells(page, "pipeline-reranked")
    assert any("batch size" in c for c in out)
    assert any("->" in c for c in out)  # each document's move is shown
    assert "local index" in page.locator("#backend").inner_text()
    page.screenshot(path=str(ARTIFACTS / "retrieve-and-rerank.png"), full_page=True)


def test_an_error_is_shown_on_the_page(page):
    page.get_by_role("tab", name="Rerank", exact=True).click()
    page.get_by_label("Query").fill("   ")
    page.locator("#submit").click()
    message = page.get_by_text("query is empty")
    message.first.wait_for()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Not ranked')")
    page.screenshot(path=str(ARTIFACTS / "error.png"), full_page=True)
    page.get_by_label("Query").fill("bread")
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('ranked')")
