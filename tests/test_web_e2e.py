"""The web page in a real browser: ``xai-recipes serve`` in a subprocess, driven by Playwright through
Debian's Chromium (headless; Playwright's own browser download is not used).

Skips, with the reason printed (``-ra``), only where /usr/bin/chromium, Playwright or Gradio is missing
(.ci/run installs Chromium with apt and the ``web`` extra). Screenshots go to ``$XAI_RECIPES_ARTEFACTS``
(default ``tests/artefacts/``); with ``XAI_RECIPES_DOCS_IMAGES=1`` the README's ``docs/img/serve.png``
and ``docs/img/notebook.png`` are rewritten too.
"""

import io
import os
from urllib.parse import urlparse
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, serve
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 240  # import gradio + torch, build and load the demo model, on 2 busy cores
EXPLAIN_MS = 180_000

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): the browser test cannot run",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[web]'")
pytest.importorskip("gradio", reason="gradio is missing: pip install -e '.[web]'")


def artefacts() -> Path:
    folder = Path(os.environ.get("XAI_RECIPES_ARTEFACTS") or ROOT / "tests" / "artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def keep(picture: Path, name: str) -> None:
    """Copy a screenshot into docs/img (256 colours) when asked to refresh the README's images."""
    if os.environ.get("XAI_RECIPES_DOCS_IMAGES") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        image = Image.open(picture).convert("RGB")
        palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
        image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(ROOT / "docs" / "img" / name,
                                                                                 optimize=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg-cache")  # the demo model is built here, not in ~/.cache


@pytest.fixture(scope="module")
def server(cache, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "XDG_CACHE_HOME": str(cache), "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve(["--port", str(port), "--max-file-size", "5mb"], env, log, STARTUP_S, poll=1, cwd=ROOT) as (url, _):
        yield url
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    yield page
    page.close()


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    from xai_recipes.demo import photos

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(photos()["cat"]).save(path)
    return path


def test_upload_the_cat_explain_tiger_cat_and_see_the_labelled_overlay(server, page, cat):
    expect = sync_api.expect
    hosts = set()
    page.on("request", lambda request: hosts.add(urlparse(request.url).netloc))
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#upload input[type=file]").set_input_files(str(cat))
    page.locator("#shown img").wait_for(timeout=60_000)  # the uploaded image, decoded by the server
    targets = page.locator("#targets input")
    targets.click()
    targets.fill("tiger cat")
    page.get_by_role("option", name="tiger cat", exact=True).click(timeout=30_000)
    page.keyboard.press("Escape")
    expect(page.locator("#targets")).to_contain_text("tiger cat")
    page.locator("#explain").click()

    overlay = page.locator("#overlays img").first
    overlay.wait_for(timeout=EXPLAIN_MS)
    expect(page.locator("#status")).to_contain_text("Explained with timm_wrapper / gradcam", timeout=30_000)
    expect(page.locator("#overlays")).to_contain_text("tiger cat · 0.")  # the gallery caption
    expect(page.locator("#predictions")).to_contain_text("tiger cat")
    expect(page.locator("#predictions")).to_contain_text("Egyptian cat")
    expect(page.locator("#download")).to_contain_text(".zip")
    assert page.locator("#overlays img").count() == 1

    response = page.request.get(overlay.get_attribute("src"))
    assert response.ok
    shown = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")).astype(int)
    original = np.asarray(Image.open(cat).convert("RGB")).astype(int)
    assert shown.shape[1] == original.shape[1] and shown.shape[0] > original.shape[0]  # a label strip above
    picture, strip = shown[-original.shape[0]:], shown[:-original.shape[0]]
    assert picture.std() > 20, "the overlay is blank"
    assert np.abs(picture - original).mean() > 15, "the overlay is the input image"
    assert (strip.min(axis=2) < 100).sum() > 200 and (strip == 255).all(axis=2).mean() > 0.5  # text on white
    assert hosts == {urlparse(server).netloc}, f"the page reached out to {hosts}"  # no fonts, CDNs, analytics
    overlay.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    shot = artefacts() / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "serve.png")


def test_an_undecodable_file_gives_a_message_not_a_traceback(server, page, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a JPEG" * 10)
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    status = page.locator("#status")
    sync_api.expect(status).to_contain_text("cannot decode", timeout=60_000)
    sync_api.expect(status).to_contain_text("ImageError")
    page.locator("#explain").click()  # explaining it anyway: the same message, no stack trace
    sync_api.expect(status).to_contain_text("cannot decode", timeout=60_000)
    assert "Traceback" not in page.content()
    page.screenshot(path=str(artefacts() / "serve-bad-file.png"), full_page=True)


def test_an_upload_over_the_size_limit_is_refused(server, page, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).bytes(6_000_000))  # the server runs with --max-file-size 5mb
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#upload input[type=file]").set_input_files(str(big))
    sync_api.expect(page.locator("body")).to_contain_text("exceed the maximum allowed size", timeout=60_000)
    sync_api.expect(page.locator("#shown img")).to_have_count(0)


def test_the_notebook_view_renders_in_the_browser(page, cache, monkeypatch):
    from xai_recipes import explain
    from xai_recipes.demo import build_demo_model, photos

    folder = build_demo_model(cache / "xai-recipes" / "efficientnet-lite0")  # built by the server already
    exp = explain(folder, photos()["cat"], target=["tiger cat", "tabby"])
    page.set_content(f"<html><body style='font-family:sans-serif;margin:0'><div id='cell' style='padding:12px;"
                     f"width:930px'><pre style='color:#555'>In [1]: exp = explain(model, cat, target=['tiger cat', "
                     f"'tabby'])\n        exp</pre>{exp._repr_html_()}</div></body></html>")
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    strip = exp.labelled(0).height - exp.image.height
    assert sizes == [[True, 451, 300 + strip], [True, 451, 300 + strip]]
    for text in ("tiger cat", "Egyptian cat", "tabby, tabby cat", "timm_wrapper", "gradcam"):
        sync_api.expect(page.locator("body")).to_contain_text(text)
    shot = artefacts() / "notebook.png"
    page.locator("#cell").screenshot(path=str(shot))
    keep(shot, "notebook.png")

