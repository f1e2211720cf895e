"""A real browser against the served app: ``samplebench app`` in a subprocess, Debian's Chromium driven by Playwright.

``python tests/test_app_browser.py --screenshot docs/app-compare.png`` serves the app the same way and saves the
screenshot of the compare view shown in the README.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SAMPLEBENCH_CHROMIUM", "/usr/bin/chromium")
# as root in a closed network: no sandbox, no background connections (they are refused, many at a time)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CAPTION = re.compile(r"^(euler|dpmpp-3m) · NFE (4|8) · \d+\.\d\d s$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(db: Path, log: Path):
    """Start ``samplebench app`` on a free port; returns (process, url) once it answers."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "samplebench", "app", "--port", str(port), "--db", str(db)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"the app did not answer within 240 s: {log.read_text()[-2000:]}")


def run_compare(page, url: str, solvers: list[str], nfes: str, seeds: str = "0-3") -> None:
    page.goto(url)
    page.wait_for_selector("#compare-run")
    page.locator("#compare-y textarea").fill(",".join(solvers))  # rows: solvers (the default Y axis)
    page.locator("#compare-x textarea").fill(nfes)  # columns: NFEs (the default X axis)
    page.locator("#compare-seeds textarea").fill(seeds)
    page.click("#compare-run")


def wait_for_grid(page, cells: int):
    page.wait_for_function(f"document.querySelectorAll('#compare-grid figure').length == {cells}", timeout=180_000)
    page.locator("#compare-status", has_text="Done").wait_for(timeout=60_000)
    return page.locator("#compare-grid figcaption").all_inner_texts()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    from samplebench.results import ResultsDB

    db = ResultsDB(folder / "runs.db")  # stored evaluations for the results view, of two sample counts
    for key, nfe, num, fid in (("k1", 10, 2000, 0.4321), ("k2", 5, 2000, 1.2345), ("k3", 10, 500, 0.9876),
                               ("k4", 5, 500, 1.8765)):
        db.add({"run_key": key, "created": "2026-01-01T00:00:00", "model": "digits", "solver": "ddim", "nfe": nfe,
                "num_samples": num, "fid": fid, "fid_low": fid - 0.0309, "fid_high": fid + 0.0334,
                "seeds": f"0-{num - 1}", "extractor": "digits", "mode": "clean", "ref": "digits-train",
                "ref_sha256": "x", "wall_time_s": 30.0, "versions": {}, "settings": {}})
    db.add({"run_key": "k5", "created": "2026-01-01T00:00:00", "model": "digits-dit", "solver": "ddim", "nfe": 5,
            "num_samples": 500, "fid": 2.5, "fid_low": 2.4, "fid_high": 2.6, "seeds": "0-499", "extractor": "digits",
            "mode": "clean", "ref": "digits-train", "ref_sha256": "x", "wall_time_s": 30.0, "versions": {},
            "settings": {}})  # another model: the plot draws the one with the most runs, and says so
    db.close()
    proc, url = start_app(folder / "runs.db", folder / "app.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package ('make test' does)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_compare_two_solvers_two_nfes_and_an_invalid_value(served, browser):
    page = browser.new_page()
    run_compare(page, served, ["euler", "dpmpp-3m"], "4,8")
    captions = wait_for_grid(page, 4)
    assert len(captions) == 4 and all(CAPTION.match(c) for c in captions), captions
    left = page.locator("#compare-left input")  # the two-cell choices are the cells' short labels
    page.wait_for_function("document.querySelector('#compare-left input').value.length > 0", timeout=30_000)
    assert left.input_value() in ("euler · NFE 4", "dpmpp-3m · NFE 4", "euler · NFE 8", "dpmpp-3m · NFE 8")
    assert {c.split(" · ")[0] for c in captions} == {"euler", "dpmpp-3m"}
    assert sorted(page.locator("#compare-grid thead th").all_inner_texts()) == ["", "NFE 4", "NFE 8"]
    assert page.locator("#compare-grid img").count() == 4
    image = page.locator("#compare-grid img").first
    small = image.bounding_box()["width"]
    image.click()  # click to enlarge, and again to close
    page.wait_for_function("document.querySelector('#compare-grid img').getBoundingClientRect().width > "
                           f"{2 * small}")
    image.click()
    page.wait_for_function("document.querySelector('#compare-grid img').getBoundingClientRect().width < "
                           f"{small + 1}")
    page.locator("#compare-x textarea").fill("4,0")
    page.click("#compare-run")
    page.get_by_text("NFE '0' is not valid; give whole numbers from 1 to 250").first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    # the error stays on the page (not only in a toast) until the next run, in the terms of the page's fields
    status = page.locator("#compare-status")
    status.get_by_text("Error: NFE '0' is not valid").wait_for(timeout=30_000)
    page.wait_for_timeout(1500)  # a toast would have shown by now
    assert page.get_by_text("NFE '0' is not valid").count() == 1  # said once: no toast, no badge on each output
    page.locator("#compare-x textarea").fill("4")
    page.locator("#compare-y-axis input").click()
    page.get_by_role("option", name="guidance").click()
    page.locator("#compare-y textarea").fill("1,2")
    page.click("#compare-run")
    status.get_by_text('"Guidance scale" must be 1').wait_for(timeout=60_000)
    assert "--guidance-scale" not in page.content()
    page.close()


def test_an_xyz_run_on_three_axes_and_a_cell_command_that_redraws_it(served, browser, tmp_path):
    import io
    import shlex
    import zipfile

    import numpy as np
    from PIL import Image

    page = browser.new_page()
    page.goto(served)
    page.wait_for_selector("#compare-run")
    page.locator("#compare-seeds textarea").fill("3")
    page.locator("#compare-y textarea").fill("euler,dpmpp-3m")
    page.locator("#compare-x textarea").fill("4,8")
    page.locator("#compare-z-axis input").click()
    page.get_by_role("option", name="time grid").click()
    page.locator("#compare-z textarea").fill("logsnr,karras")
    page.click("#compare-run")
    wait_for_grid(page, 8)
    assert page.locator("#compare-grid caption").all_inner_texts() == ["logsnr", "karras"]
    page.locator("#compare-grid details summary").first.click()
    command = page.locator("#compare-grid details code").first.inner_text()
    words = shlex.split(command)
    assert words[:2] == ["samplebench", "sample"] and words[words.index("--time-grid") + 1] == "logsnr"
    r = subprocess.run([sys.executable, "-m", "samplebench", *words[1:], "--out", str(tmp_path / "cell"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert page.locator("a[href*='comparison.png']").count() >= 1  # the whole comparison as one labelled image
    href = page.locator("a[href*='samplebench.zip']").first.get_attribute("href")
    with urllib.request.urlopen(urllib.parse.urljoin(served, href), timeout=30) as f:
        archive = zipfile.ZipFile(io.BytesIO(f.read()))
    first = sorted(n for n in archive.namelist() if n.endswith("/00000.png"))[0]  # the first cell's image
    cell = np.asarray(Image.open(io.BytesIO(archive.read(first))))
    assert np.array_equal(cell, np.asarray(Image.open(tmp_path / "cell" / "00000.png")))
    page.close()


def test_cancel_stops_a_run(served, browser):
    page = browser.new_page()
    run_compare(page, served, ["euler", "dpmpp-3m"], "200,250", "0-15")
    page.wait_for_function("document.querySelector('#compare-run').disabled", timeout=30_000)  # one run at a time
    page.wait_for_function("document.querySelectorAll('#compare-grid figure').length >= 1", timeout=180_000)
    # the progress text shows once, on the status line, not also over the grid (where it hid the table header)
    page.wait_for_function("document.querySelectorAll('.progress-text').length == 1", timeout=30_000)
    assert page.locator("#compare-grid .progress-text").count() == 0
    page.click("#compare-cancel")
    page.locator("#compare-status", has_text="Cancelled after").wait_for(timeout=60_000)
    assert page.locator("#compare-grid figure").count() < 4
    page.wait_for_function("!document.querySelector('#compare-run').disabled", timeout=30_000)  # free again
    page.close()


def test_two_sessions_get_their_own_results(served, browser):
    pages = [browser.new_context().new_page() for _ in range(2)]
    run_compare(pages[0], served, ["euler"], "4")
    run_compare(pages[1], served, ["dpmpp-3m"], "8")
    first, second = (wait_for_grid(p, 1) for p in pages)
    assert first[0].startswith("euler · NFE 4") and second[0].startswith("dpmpp-3m · NFE 8")
    for p in pages:
        p.context.close()


def test_methods_and_results_views(served, browser):
    page = browser.new_page()
    page.goto(served)
    page.get_by_role("tab", name="Methods").click()
    for tab in ("S3 schedules", "Tree search (DTS)", "Early exit and caching", "Cascades"):
        page.get_by_role("tab", name=tab).click()
    page.get_by_role("button", name="Run cascade").click()
    page.locator("figcaption:visible", has_text="cascade 8:20,16:2 · NFE 22").wait_for(timeout=120_000)
    page.get_by_role("tab", name="S3 schedules").click()
    page.get_by_role("button", name="Run S3").click()
    s3 = page.locator("figcaption:visible", has_text="· schedule nfe5.json")  # which schedule ran: file, hash, steps
    s3.first.wait_for(timeout=120_000)
    assert re.search(r"schedule nfe5\.json [0-9a-f]{8} \((\d[nd]c?-)*\d[nd]c?\)", s3.first.inner_text())
    page.get_by_role("tab", name="Results").click()
    page.get_by_text("0.4321", exact=True).filter(visible=True).first.wait_for(timeout=30_000)  # from the db
    page.get_by_text("0.4012", exact=True).filter(visible=True).first.wait_for(timeout=30_000)  # its interval
    assert page.get_by_text("results database").filter(visible=True).first.inner_text().count("runs.db") == 1
    # runs of 500 and 2,000 samples: one plot, a curve per count (tests/test_eval.py checks the curves)
    page.locator("img[src*='fid.png']").filter(visible=True).first.wait_for(timeout=60_000)
    # drawn before any model is picked: the one with the most runs, saying so
    assert "model digits (digits features" in page.locator("#results-plot-note").inner_text()
    page.close()


def test_numbers_per_cell(served, browser):
    page = browser.new_page()
    run_compare(page, served, ["dpmpp-3m"], "6", "0-7")
    page.locator("#compare-numbers input").check()
    page.click("#compare-run")
    caption = page.locator("#compare-grid figcaption", has_text="FID").first
    caption.wait_for(timeout=180_000)
    text = caption.inner_text()
    assert re.search(r"KID -?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\] · FID needs \d+\+ images", text), text
    assert "ms/image" in text and "(n=8, vs digits-train)" in text
    page.close()


if __name__ == "__main__":
    import argparse

    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description="screenshot of the compare view")
    parser.add_argument("--screenshot", default="docs/app-compare.png")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    proc, url = start_app(folder / "runs.db", folder / "app.log")
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1200, "height": 900})
            run_compare(page, url, ["ddim", "dpmpp-2m", "unipc-bh2"], "4,6,10", "0-7")
            wait_for_grid(page, 9)
            box = page.locator("#compare-grid").bounding_box()  # the page from its top to the grid's bottom
            page.screenshot(path=args.screenshot, full_page=True,
                            clip={"x": 0, "y": 0, "width": 1200, "height": box["y"] + box["height"] + 16})
            b.close()
    finally:
        proc.terminate()
    print(args.screenshot)
