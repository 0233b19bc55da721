"""A real browser (Debian's Chromium, driven by Playwright) against `python app.py` on loopback, key set."""

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
KEY = "browser-test-key"
RANKED = "document.querySelector('#status')?.innerText.match(/\\d+ ranked;/)"  # the success line, never 'Not ranked'

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium: install Debian's with `apt-get install -y chromium` (.ci/run does) to run the browser test")


@pytest.fixture(scope="module")
def browser_and_url(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    # an explicit backend: the page's backend line cannot change under the test when a measurement ends
    proc, url = load.start_app(tmp_path_factory.mktemp("browser-app"), RERANK_API_KEY=KEY, RERANK_BACKEND="torch")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            yield browser, url
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def _signed_in(browser, url: str):
    """A fresh browser session (its own cookies) that signs in with the key."""
    context = browser.new_context(viewport={"width": 1300, "height": 1400})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.goto(url, wait_until="networkidle")
    assert "/login" in tab.url  # no key yet: the page asks for it
    tab.fill("#key", KEY)
    tab.click("button[type=submit]")
    tab.wait_for_selector("#submit")
    tab.locator("#documents [role=gridcell]").nth(9).wait_for()
    return tab


@pytest.fixture(scope="module")
def page(browser_and_url):
    browser, url = browser_and_url
    return _signed_in(browser, url)


def _cells(page, elem_id: str) -> list[str]:
    return [c.inner_text() for c in page.locator(f"#{elem_id} [role=gridcell]").all()]


def test_the_page_asks_for_the_key(browser_and_url):
    browser, url = browser_and_url
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(url, wait_until="networkidle")
    assert "/login" in tab.url and tab.locator("#submit").count() == 0
    tab.fill("#key", "not-the-key")
    tab.click("button[type=submit]")
    assert "That key is wrong" in tab.content()
    tab.screenshot(path=str(ARTIFACTS / "login.png"), full_page=True)
    context.close()


def test_edit_a_row_submit_and_read_the_reranked_order(page):
    page.get_by_label("Query").fill("What is the future of AI?")
    cells = page.locator("#documents [role=gridcell]")
    assert "football" in cells.nth(9).inner_text()
    edited = "[...document.querySelectorAll('#documents [role=gridcell]')]" \
             ".some(c => c.innerText.startsWith('Artificial intelligence will shape'))"
    editor = page.locator('#documents textarea[aria-label="Edit cell"]')
    for attempt in range(3):  # a page still hydrating can drop the first edit; the table must show it before submit
        cells.nth(9).dblclick()
        try:
            editor.wait_for(timeout=10_000)  # the cell's editor is open before anything is typed
            editor.fill("Artificial intelligence will shape the future of humanity and AI research.")
            editor.press("Enter")
            page.wait_for_function(edited, timeout=15_000)
            break
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"edit-attempt-{attempt}.png"), full_page=True)
            assert attempt < 2, "the edited cell never showed in the table (see test-artifacts/edit-attempt-*.png)"
    page.locator("#submit").click()
    page.wait_for_function(RANKED)
    out = _cells(page, "reranked")
    rows = [out[i:i + 3] for i in range(0, len(out), 3)]
    assert len(rows) == 4  # five rows in, one duplicate dropped
    assert rows[0][1].startswith("Artificial intelligence will shape the future")  # the edited row wins
    assert rows[0][0] == "https://example.org/football"  # its other cells came along unchanged
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert "bread" in rows[-1][1]
    assert "1 duplicate text(s) dropped" in page.locator("#status").inner_text()
    assert "Inference backend: torch on cpu in fp32 (set by RERANK_BACKEND)" in page.locator("#inference").inner_text()
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


def test_an_upload_is_private_to_the_session_that_made_it(page, browser_and_url, tmp_path):
    upload = tmp_path / "shipping-faq.csv"
    upload.write_text("url,text\nhttps://shop.example/shipping,Parcels are delivered within three working days.\n"
                      "https://shop.example/returns,Items can be returned within thirty days.\n")
    page.get_by_role("tab", name="Retrieve & rerank").click()
    page.get_by_text("Index your own documents").click()
    page.locator("#upload input[type=file]").set_input_files(str(upload))
    page.locator("#index-upload").click()
    page.wait_for_function("document.querySelector('#backend')?.innerText.includes('your upload shipping-faq.csv')")
    question = "How long does delivery take?"
    page.locator("#pipeline-query textarea").fill(question)
    page.locator("#pipeline-run").click()
    page.wait_for_function("document.querySelector('#pipeline-status')?.innerText.includes('Retrieved 2 passages')")
    assert any("shop.example/shipping" in c for c in _cells(page, "pipeline-reranked"))
    page.screenshot(path=str(ARTIFACTS / "upload-session-a.png"), full_page=True)

    browser, url = browser_and_url
    other = _signed_in(browser, url)  # a second visitor, with a session of their own
    other.get_by_role("tab", name="Retrieve & rerank").click()
    assert "local index" in other.locator("#backend").inner_text()
    other.locator("#pipeline-query textarea").fill(question)
    other.locator("#pipeline-run").click()
    other.wait_for_function("document.querySelector('#pipeline-status')?.innerText.includes('Retrieved')")
    cells = _cells(other, "pipeline-reranked")
    assert not any("shop.example" in c for c in cells) and any("batch size" in c for c in cells)
    other.screenshot(path=str(ARTIFACTS / "upload-session-b.png"), full_page=True)
    other.context.close()


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
    page.wait_for_function(RANKED)  # the page recovers: the next question is ranked
    assert "bread" in _cells(page, "reranked")[1].lower()
