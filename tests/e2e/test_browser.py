"""A real browser (Debian's Chromium, driven by Playwright) against `python app.py` on loopback, key set,
at 1280x800 and on a 390x844 phone. Screenshots of every view land in test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evaluation import load
from tests.support import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
KEY = "browser-test-key"
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
RANKED = "document.querySelector('#status')?.innerText.match(/\\d+ ranked;/)"  # the success line, never 'Not ranked'

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium: install Debian's with `apt-get install -y chromium` (.ci/run does) to run the browser test")


@pytest.fixture(scope="module")
def browser_and_url(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    # an explicit backend (the header cannot change under the test); 1,500 more passages: the index takes a while
    proc, url = load.start_app(tmp_path_factory.mktemp("browser-app"), filler=1500, RERANK_API_KEY=KEY,
                               RERANK_BACKEND="torch")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            yield browser, url
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def _signed_in(browser, url: str, viewport: str = "desktop"):
    """A fresh browser session (its own cookies) that signs in with the key."""
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height})
    tab = context.new_page()
    tab.set_default_timeout(90_000)
    tab.goto(url)
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


def _visible_column(page, elem_id: str, name: str) -> bool:
    """The column's header lies inside the viewport horizontally (no sideways scrolling needed to see it)."""
    box = page.locator(f"#{elem_id} th[role=columnheader]", has_text=name).first.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]


def test_the_index_status_turns_ready_without_a_click(page):
    page.get_by_role("tab", name="Retrieve & rerank").click()
    status = page.locator("#backend")
    assert "building" in status.inner_text()  # 1,500 passages: still embedding when the page opens
    page.screenshot(path=str(ARTIFACTS / "index-building.png"))
    page.wait_for_function("document.querySelector('#backend')?.innerText.includes('ready')", timeout=240_000)
    assert "passages" in status.inner_text() and "building" not in status.inner_text()
    page.get_by_role("tab", name="Rerank", exact=True).click()


def test_the_page_asks_for_the_key(browser_and_url):
    browser, url = browser_and_url
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(url)
    assert "/login" in tab.url and tab.locator("#submit").count() == 0
    tab.fill("#key", "not-the-key")
    tab.click("button[type=submit]")
    assert "That key is wrong" in tab.content()
    tab.screenshot(path=str(ARTIFACTS / "login.png"), full_page=True)
    context.close()


def test_edit_a_row_submit_and_read_the_reranked_order(page):
    page.locator("#query textarea").fill("What is the future of AI?")
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
    rows = [out[i:i + 5] for i in range(0, len(out), 5)]  # #, score, row, text, url
    assert len(rows) == 4  # five rows in, one duplicate dropped
    assert rows[0][3].startswith("Artificial intelligence will shape the future")  # the edited row wins
    assert rows[0][2] == "4" and rows[0][4] == "https://example.org/football"  # input row 4, its url came along
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True) and [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert "bread" in rows[-1][3]
    assert "1 duplicate(s) dropped: row 3 (same text as row 0)" in page.locator("#status").inner_text()
    assert "below min_score" not in page.locator("#status").inner_text()  # the box's 0 drops nothing
    assert "torch on cpu, fp32" in page.locator("#header").inner_text()  # what runs, in one line
    page.locator("#reranked").scroll_into_view_if_needed()
    assert _visible_column(page, "reranked", "score")
    page.screenshot(path=str(ARTIFACTS / "rerank-desktop.png"))
    cut = (scores[1] + scores[2]) / 2  # a minimum score between the second and the third
    page.locator("#min-score input").fill(f"{cut:.4f}")
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('below min_score')")
    assert "5 documents in, 2 ranked" in page.locator("#status").inner_text()
    assert "2 below min_score" in page.locator("#status").inner_text()
    assert len(_cells(page, "reranked")) == 2 * 5  # the two above it, nothing else
    page.locator("#min-score input").fill("0")


def test_an_example_runs_on_click(page):
    page.get_by_role("tab", name="Rerank", exact=True).click()
    page.locator("#rerank-examples tr.tr-body").nth(1).click()  # "How do I bake bread?"
    page.wait_for_function("[...document.querySelectorAll('#reranked [role=gridcell]')]"
                           ".some(c => c.innerText.includes('Preheat the oven'))")
    cells = _cells(page, "reranked")
    assert "3 documents in, 3 ranked" in page.locator("#status").inner_text()
    assert "Stock markets" in [cells[i + 3] for i in range(0, len(cells), 4)][-1]  # the unrelated text is last
    page.screenshot(path=str(ARTIFACTS / "example-desktop.png"))


def test_an_instruction_to_a_model_that_takes_none_is_reported_ignored(page):
    page.get_by_role("tab", name="Rerank", exact=True).click()
    assert "takes no instruction" in page.locator("#instruction").inner_text()  # said before anything is sent
    page.locator("#query textarea").fill("What is the future of AI?")
    page.locator("#instruction textarea").fill("Find passages about bread")
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Instruction ignored')")
    page.locator("#instruction textarea").fill("")


def test_retrieve_and_rerank_shows_scores_and_moves(page):
    page.get_by_role("tab", name="Retrieve & rerank").click()
    page.locator("#pipeline-query textarea").fill("How does rerank latency depend on batch size?")
    page.locator("#pipeline-run").click()
    page.wait_for_function("document.querySelector('#pipeline-status')?.innerText.includes('Retrieved')")
    out = _cells(page, "pipeline-reranked")
    assert any("batch size" in c for c in out)
    assert any(c in ("=", ) or c.startswith(("▲", "▼")) for c in out)  # each passage's move is shown
    page.locator("#pipeline-reranked").scroll_into_view_if_needed()
    assert _visible_column(page, "pipeline-reranked", "score") and _visible_column(page, "pipeline-reranked", "move")
    assert page.locator("#pictures img, #pictures svg, #pictures canvas").count() >= 1  # scores and rank shift drawn
    page.screenshot(path=str(ARTIFACTS / "retrieve-and-rerank-desktop.png"), full_page=True)


def test_the_first_stage_mode_is_a_choice_on_the_page(page):
    page.get_by_role("tab", name="Retrieve & rerank").click()
    page.locator("#pipeline-query textarea").fill("Note 681 question rerank")
    page.locator("#pipeline-mode").get_by_text("lexical", exact=True).click()
    page.locator("#search-only").click()
    page.wait_for_function("document.querySelector('#pipeline-status')?.innerText.includes('first stage only')")
    out = _cells(page, "pipeline-reranked")
    assert any(c.startswith("Note 681:") for c in out)  # words alone find the numbered note
    page.locator("#pipeline-mode").get_by_text("hybrid", exact=True).click()


def test_the_phone_layout_keeps_score_and_move_in_view(browser_and_url):
    browser, url = browser_and_url
    phone = _signed_in(browser, url, "phone")
    phone.locator("#query textarea").fill("What is the future of AI?")
    phone.locator("#submit").click()
    phone.wait_for_function(RANKED)
    phone.locator("#reranked").scroll_into_view_if_needed()
    assert _visible_column(phone, "reranked", "score")
    phone.screenshot(path=str(ARTIFACTS / "rerank-phone.png"))
    phone.get_by_role("tab", name="Retrieve & rerank").click()
    phone.locator("#pipeline-query textarea").fill("How does rerank latency depend on batch size?")
    phone.locator("#pipeline-run").click()
    phone.wait_for_function("document.querySelector('#pipeline-status')?.innerText.includes('Retrieved')")
    phone.locator("#pipeline-reranked").scroll_into_view_if_needed()
    assert _visible_column(phone, "pipeline-reranked", "score") and _visible_column(phone, "pipeline-reranked", "move")
    phone.screenshot(path=str(ARTIFACTS / "retrieve-and-rerank-phone.png"))
    phone.screenshot(path=str(ARTIFACTS / "retrieve-and-rerank-phone-full.png"), full_page=True)
    phone.context.close()


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
    assert not any("shop.example" in c for c in cells)
    other.screenshot(path=str(ARTIFACTS / "upload-session-b.png"), full_page=True)
    other.context.close()


def test_an_error_is_shown_on_the_page(page):
    page.get_by_role("tab", name="Rerank", exact=True).click()
    page.locator("#query textarea").fill("   ")
    page.locator("#submit").click()
    message = page.get_by_text("query is empty")
    message.first.wait_for()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Not ranked')")
    page.screenshot(path=str(ARTIFACTS / "error.png"), full_page=True)
    page.locator("#query textarea").fill("bread")
    page.locator("#submit").click()
    page.wait_for_function(RANKED)  # the page recovers: the next question is ranked
    top = _cells(page, "reranked")[3].lower()
    assert any(word in top for word in ("bread", "loaf", "dough")) and "stock markets" not in top


def test_image_documents_are_uploaded_ranked_and_shown(browser_and_url, page, tmp_path):
    """A multimodal reranker's page takes image files beside the table's rows and shows them ranked; a text-only
    model's page offers no upload."""
    from PIL import Image

    import app as app_module
    import rerank
    from scoring.synthetic import build_vision_reranker
    from service.settings import Settings
    from tests.support import serve_in_thread, stop_server

    assert not page.locator("#image-upload").is_visible()  # the packaged model reads text only
    scorer = rerank.load_scorer(str(build_vision_reranker(tmp_path / "tiny-vision", seed=3)), allow_fallback=False)
    files = []
    for n, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        files.append(tmp_path / f"picture-{n}.png")
        Image.new("RGB", (48 + 8 * n, 40), colour).save(files[-1])
    url, server = serve_in_thread(app_module.build_server(Settings(), scorer, None, []))
    browser, _ = browser_and_url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tab = context.new_page()
        tab.set_default_timeout(90_000)
        tab.goto(url)
        tab.locator("#documents [role=gridcell]").nth(9).wait_for()
        tab.locator("#image-upload").wait_for()
        with tab.expect_file_chooser() as chooser:
            tab.locator("#image-upload").click()
        chooser.value.set_files([str(f) for f in files])
        tab.wait_for_function("document.querySelectorAll('#image-documents img').length === 3")
        tab.locator("#query textarea").fill("a red picture")
        tab.locator("#submit").click()
        tab.wait_for_function(RANKED)
        assert "8 documents in, 7 ranked" in tab.locator("#status").inner_text()  # 5 rows (one repeated) + 3 images
        tab.wait_for_function("document.querySelectorAll('#ranked-images img').length === 3")
        cells = _cells(tab, "reranked")
        named = [cells[i + 3] for i in range(0, len(cells), 5)]
        assert sum(text.startswith("[image ") for text in named) == 3  # named in the table, pictured below it
        captions = tab.locator("#ranked-images").inner_text()
        positions = [int(line.split(" · ")[0][1:]) for line in captions.splitlines() if line.startswith("#")]
        assert len(positions) == 3 and positions == sorted(positions)
        tab.locator("#ranked-images").scroll_into_view_if_needed()
        tab.screenshot(path=str(ARTIFACTS / "image-documents.png"), full_page=True)
    finally:
        context.close()
        stop_server(server)
