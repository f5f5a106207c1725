"""The audit report in a real browser: Debian's Chromium through Playwright (as tests/test_web_e2e.py), opened from
disk (file://, no server) and from ``xai-recipes serve REPORT/``; every section renders, every image loads, every
number on the page is the one in audit.json, and the page reaches nothing outside its folder.

Skips, saying why, only where /usr/bin/chromium or Playwright is missing. The screenshot goes to
``$XAI_RECIPES_ARTEFACTS`` (default tests/artefacts/); with ``XAI_RECIPES_DOCS_IMAGES=1`` the README's
docs/img/audit-report.png is rewritten too.
"""

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
from synthetic import SHAPES
from watermark import WATERMARKED, held_out

from conftest import TRAINED, free_port, serve

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): the browser test cannot run",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[web]'")

from test_web_e2e import artefacts, browser, keep  # noqa: E402,F401 - browser: the page test's fixture

from xai_recipes import audit  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / "watermark-audit"
    scenes = held_out(per_class=20)
    audit(str(TRAINED / "resnet_watermark"), [(s.image, SHAPES[s.label], s.box) for s in scenes], out=folder,
          n_concepts=3)
    return folder


def _lookup(data, path: str):
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def _check_page(page, data) -> None:
    expect = sync_api.expect
    sections = page.locator("section.class")
    expect(sections).to_have_count(len(data["classes"]))
    for i, c in enumerate(data["classes"]):
        section = sections.nth(i)
        for part in ("flags", "strategies", "concepts", "worst"):
            assert section.locator(f"div.{part}").is_visible(), (c["label"], part)
        assert section.locator("div.cluster").count() == c["n_clusters"]
        assert section.locator("div.flag").count() == len(c["flags"])
        assert section.locator("div.concepts tr").count() == len(c["concepts"]) + 1
        assert section.locator("div.worst img").count() == len(c["worst"]) > 0
    expect(page.locator("#flagged")).to_have_text(", ".join(data["flagged"]) or "none")
    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, "
                                                "i.naturalWidth])")
    assert len(images) > 20 and all(complete and width > 0 for _, complete, width in images), \
        [src for src, complete, width in images if not (complete and width > 0)]
    shown = page.eval_on_selector_all("[data-json]", "els => els.map(e => [e.dataset.json, e.textContent])")
    assert len(shown) > 50
    for path, text in shown:
        value = _lookup(data, path)
        if isinstance(value, float):
            assert float(text) == pytest.approx(value, abs=5e-4), path
        elif value is None:
            assert text == "–", path
        else:
            assert text == str(value), path


def test_the_report_opens_from_disk_and_shows_what_audit_json_holds(report, browser):
    data = json.loads((report / "audit.json").read_text())
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    hosts = set()
    page.on("request", lambda request: hosts.add(urlparse(request.url).scheme))
    page.goto((report / "index.html").as_uri(), wait_until="load")
    _check_page(page, data)
    assert hosts == {"file"}, f"the report reached out: {hosts}"
    for c in data["classes"]:  # each flag is shown in its class, its clusters outlined
        section = page.locator(f"#class-{c['index']}")
        for k, flag in enumerate(c["flags"]):
            text = "Fixed position" if flag["rule"] == "fixed_position" else "Off the object"
            sync_api.expect(section.locator("div.flag").nth(k)).to_contain_text(text)
        assert section.locator("div.cluster.flagged").count() == len({f["cluster"] for f in c["flags"]})
    flagged = page.locator(f"#class-{WATERMARKED}")
    shot = artefacts() / "audit-report.png"
    page.screenshot(path=str(shot), full_page=True)
    flagged.screenshot(path=str(artefacts() / "audit-report-flagged-class.png"))
    keep(artefacts() / "audit-report-flagged-class.png", "audit-report.png")
    assert shot.stat().st_size > 20_000
    page.close()


def test_serve_opens_the_saved_report(report, browser, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1"}
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/reports/0/index.html"
    # a report and no model: the page lists the report
    with serve([str(report), "--no-demo", "--port", str(port)], env, log, 120, path="reports/0/index.html"):
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        link = page.get_by_role("link", name=report.name)
        link.wait_for(timeout=60_000)
        assert link.get_attribute("href") == "/reports/0/index.html"  # gradio opens links in a new tab: follow it here
        page.goto(url, wait_until="load")
        _check_page(page, json.loads((report / "audit.json").read_text()))
        page.close()
