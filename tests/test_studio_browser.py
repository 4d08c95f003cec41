"""bachvid studio in a real browser: Debian's headless chromium driven by playwright.

Starts `bachvid studio` on a free loopback port, writes a two-shot story, generates it with few
steps, checks that the videos play and that the zip downloads with the story's files, and that
an empty part shows the CLI's error beside the story. Screenshots go to the test's tmp folder:
00-loading.png (the page as first served, the model still loading), 01-story.png (the written
story), 01b-second-tab-queued.png (a second tab waiting its turn), 02-generated.png (videos,
masks, contact sheet), 02b-saved-character.png (the character library with its thumbnail),
03-error.png (the error beside the story); a cancel ends the test. Skipped only when no
chromium or playwright is installed (`.ci/run` installs both)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest

pytest.importorskip("gradio", reason="the studio extra is not installed: pip install -e '.[studio]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[browser]'")
CHROMIUM = os.environ.get("BACHVID_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (as .ci/run does)")]

STORY = ("a green meadow # a red robot # stands still\n"
         "a green meadow # a red robot # walks to the left\n"
         "a green meadow # a red robot # jumps\n")
MODEL_READY = ("(document.querySelector('#model')?.innerText || '').includes('Model: ') && "
               "!document.querySelector('#model').innerText.includes('loading')")
BROKEN = "a green meadow # a red robot # stands still\na green meadow #  # jumps\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def studio_url(tmp_path):
    port = _free_port()
    log = open(tmp_path / "studio.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "bachvid.cli", "studio", "--host", "127.0.0.1", "--port",
                                str(port), "--out", str(tmp_path / "out")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() - start > 60:
                    pytest.fail("the studio did not serve its page: " + (tmp_path / "studio.log").read_text())
                time.sleep(0.2)
        print(f"studio up in {time.perf_counter() - start:.1f} s")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _durations(page, selector):
    return page.eval_on_selector_all(selector, """videos => Promise.all(videos.map(v => v.readyState >= 1
        ? v.duration : new Promise(done => { v.addEventListener('loadedmetadata', () => done(v.duration));
                                             v.load(); })))""")


def test_write_generate_watch_download_and_see_an_error(studio_url, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    started = time.perf_counter()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
            page.goto(studio_url)
            page.wait_for_selector("#generate", timeout=30_000)
            page.screenshot(path=str(shots / "00-loading.png"))
            # the page is served while the model loads; then its defaults fill the settings
            page.wait_for_function(MODEL_READY, timeout=60_000)
            page.wait_for_function("document.querySelector('#steps input')?.value === '30'",
                                   timeout=15_000)  # the toy model's default, filled once it is loaded
            # the form writes the story text: move the first shot below the second
            text = "document.querySelector('#story-text textarea').value"
            assert page.locator("#story-text textarea").input_value().index("walks to the left") < \
                page.locator("#story-text textarea").input_value().index("jumps")
            page.locator("#form-shots .body-cell", has_text="walks to the left").first.click()
            page.get_by_role("button", name="Move down").click()
            page.wait_for_function(f"{text}.indexOf('jumps') >= 0 && {text}.indexOf('jumps') < "
                                   f"{text}.indexOf('walks to the left')", timeout=15_000)
            # write the story in its text form, fewer steps
            page.locator("#story-text textarea").fill(STORY)
            steps = page.locator("#steps input")
            steps.fill("4")
            steps.press("Tab")
            page.screenshot(path=str(shots / "01-story.png"), full_page=True)
            assert page.locator("#story-errors").inner_text().strip() == ""

            # a second tab (its own session) asks while the first one generates: it waits its turn
            other = browser.new_page(viewport={"width": 1400, "height": 900})
            other.goto(studio_url)
            other.wait_for_function(MODEL_READY, timeout=60_000)
            other.locator("#story-text textarea").fill(STORY)
            other.locator("#steps input").fill("2")
            other.locator("#steps input").press("Tab")

            page.click("#generate")
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('identity')",
                                   timeout=60_000)
            other.click("#generate")
            other.wait_for_function("/queue: \\d+\\/\\d+/.test(document.body.innerText)", timeout=20_000)  # gradio's
            other.screenshot(path=str(shots / "01b-second-tab-queued.png"))
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=150_000)
            page.wait_for_function("document.querySelectorAll('#videos video').length >= 3", timeout=30_000)
            durations = _durations(page, "#videos video")
            assert len(durations) >= 3 and all(d and d > 0 for d in durations), durations
            assert all(d > 0 for d in _durations(page, "#masks video"))
            page.wait_for_selector("#sheet img", timeout=30_000)
            page.screenshot(path=str(shots / "02-generated.png"), full_page=True)

            with page.expect_download(timeout=30_000) as download:
                page.click("#download")
            zipped = tmp_path / "story.zip"
            download.value.save_as(zipped)
            with zipfile.ZipFile(zipped) as archive:
                names = set(archive.namelist())
            assert {"story-000/identity.mp4", "story-000/shot-01.mp4", "story-000/shot-02.mp4",
                    "story-000/masks/identity-mask.mp4", "story-000/contact-sheet.png",
                    "story-000/manifest.json"} <= names, names

            # save the story's identity as a character: it is listed with its thumbnail
            page.click("#characters button")  # open the accordion
            page.locator("#character-name input, #character-name textarea").first.fill("robot")
            page.click("#save-character")
            page.wait_for_function("document.querySelector('#character-message')?.innerText.includes('saved robot')",
                                   timeout=60_000)
            page.wait_for_selector("#character-gallery img", timeout=15_000)
            page.locator("#character-gallery").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "02b-saved-character.png"))

            # the second tab got its turn, and its story went to its own session's folder
            other.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')",
                                    timeout=120_000)
            mine, theirs = (p.locator("#status").inner_text().split(": ", 1)[1].strip() for p in (page, other))
            assert mine != theirs and mine.endswith("/story-000") and theirs.endswith("/story-000")
            assert page.locator("#videos video").count() == other.locator("#videos video").count() == 3
            other.close()

            page.locator("#story-text textarea").fill(BROKEN)
            page.wait_for_function(
                "document.querySelector('#story-errors')?.innerText.includes('story:2: the character is empty')",
                timeout=15_000)
            page.locator("#story-text").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "03-error.png"))

            # cancel: a longer run stops at the next denoising step and says so
            page.locator("#story-text textarea").fill(STORY.replace("jumps", "comes closer"))
            steps.fill("30")
            steps.press("Tab")
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('identity: step')",
                                   timeout=60_000)
            page.click("#cancel")
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('cancelled')",
                                   timeout=60_000)
        finally:
            browser.close()
    print(f"browser session {time.perf_counter() - started:.1f} s; screenshots in {shots}")
    assert time.perf_counter() - started < 150  # the whole test, studio start included, stays under 3 minutes
