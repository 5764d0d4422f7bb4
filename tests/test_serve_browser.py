"""maskray serve in a real browser: Playwright for Python driving Debian's chromium, headless.

The server runs in this process on a free port of 127.0.0.1 with the tiny model of test_serve. To measure
the page on a real model instead (and keep its screenshot), name it in the environment::

    MASKRAY_SERVE_MODEL=RUN MASKRAY_SERVE_DATA=DATASET MASKRAY_SERVE_SCREENSHOT=docs/img/serve.png \\
        python -m pytest -s tests/test_serve_browser.py
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from test_serve import tiny_served

INSTALL = "apt-get install -y chromium"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MASKRAY_REQUIRE_BROWSER"):
            pytest.fail(f"chromium is required here (MASKRAY_REQUIRE_BROWSER is set); install it: {INSTALL}")
        pytest.skip(f"chromium not found; install Debian's chromium to run the browser test: {INSTALL}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    import uvicorn

    from maskray.serve.app import create_app
    from maskray.serve.server import ServeConfig, open_service

    if os.environ.get("MASKRAY_SERVE_MODEL"):
        data, run = os.environ["MASKRAY_SERVE_DATA"], os.environ["MASKRAY_SERVE_MODEL"]
    else:
        data, run = tiny_served(tmp_path_factory)
    out = tmp_path_factory.mktemp("serve-out") / "added"
    service = open_service(ServeConfig(model=str(run), data=str(data), out=str(out)))
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=_free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{server.config.port}/", service
    server.should_exit = True
    thread.join(10)
    service.close()


def _inner_lung_point(service, case_id: str, diameter_mm: float) -> tuple[int, int]:
    """The lung pixel farthest from the lung border where the rules allow a nodule of ``diameter_mm``."""
    from maskray.serve.workspace import Nodule, PlacementError

    ws = service.workspace
    field = np.isin(ws.label(case_id), (*ws.lung_values, ws.nodule_value))
    depth = ndimage.distance_transform_edt(field, sampling=ws.spacing)
    for flat in np.argsort(-depth, axis=None, kind="stable")[: int(field.sum())]:
        y, x = (int(v) for v in np.unravel_index(flat, depth.shape))
        try:
            ws.place(case_id, [Nodule(y, x, diameter_mm)])
            return y, x
        except PlacementError:
            continue
    raise AssertionError(f"no place for a {diameter_mm} mm nodule in case {case_id}")


def _at(page, y: int, x: int, shape: tuple[int, int]) -> dict:
    box = page.locator("#overlay").bounding_box()
    return {"x": (x + 0.5) / shape[1] * box["width"], "y": (y + 0.5) / shape[0] * box["height"]}


def _download(page, selector: str) -> tuple[str, bytes]:
    with page.expect_download() as info:
        page.click(selector)
    dl = info.value
    return dl.suggested_filename, Path(dl.path()).read_bytes()


def _check_downloads(page, case_id: str, size: int) -> None:
    """The image as PNG and as DICOM, and the mask as NIfTI: synthetic names, marked synthetic, no case id."""
    import pydicom

    name, data = _download(page, "#dl-image")
    img = Image.open(io.BytesIO(data))
    assert name.startswith("maskray-synthetic-") and name.endswith(".png") and case_id not in name
    assert img.size == (size, size) and "synthetic" in img.text["Comment"]
    page.select_option("#format", "dicom")
    name, data = _download(page, "#dl-image")
    dcm = pydicom.dcmread(io.BytesIO(data))
    assert name.endswith(".dcm") and dcm.SyntheticData == "YES" and dcm.Rows == size
    assert case_id.encode() not in data
    name, data = _download(page, "#dl-mask")
    assert name.endswith("-mask.nii.gz") and case_id not in name


def test_place_a_nodule_generate_and_download_in_a_browser(page_url, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

    chromium = _chromium()
    url, service = page_url
    tiny = not os.environ.get("MASKRAY_SERVE_MODEL")
    first = service.workspace.ids[0]
    shape = service.workspace.label(first).shape
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(60_000)
        script_errors = []
        page.on("pageerror", lambda err: script_errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector(".case.active")
        assert first in page.inner_text("#case-title")

        # a click outside the lung is refused in the page, and the nodule can be removed again
        page.locator("#overlay").click(position=_at(page, 0, 0, shape))
        page.wait_for_function("document.getElementById('message').textContent.includes('outside the lung field')")
        assert page.locator("#overlay circle.bad").count() == 1 and page.is_disabled("#generate")
        page.click("#remove")
        page.wait_for_function("document.querySelectorAll('#overlay circle').length === 0")

        # a click inside the lung adds a nodule and the mask shows it
        y, x = _inner_lung_point(service, first, float(page.input_value("#diameter")))
        page.locator("#overlay").click(position=_at(page, y, x, shape))
        page.wait_for_function("document.getElementById('message').textContent.includes('1 nodule(s) placed')")
        assert page.locator("#overlay circle").count() == 1 and page.is_enabled("#generate")
        assert page.get_attribute("#mask", "src").startswith("blob:")

        if tiny:
            page.fill("#steps", "4")
            page.fill("#count", "2")
        page.click("#generate")
        page.wait_for_selector("#status[data-seconds]", timeout=300_000)
        seconds = float(page.get_attribute("#status", "data-seconds"))
        job = service.jobs.get(page.evaluate("state.resultJob"))
        print(f"\nmaskray serve: click to image {seconds:.2f} s, of which sampling {job.seconds:.2f} s "
              f"({page.input_value('#steps')} steps, "
              f"{page.input_value('#scheduler')}, {service.engine.image_size} px, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
        size = service.engine.image_size
        if os.environ.get("MASKRAY_SERVE_RESULTS"):  # benchmarks/bench_serve.sh: one row per run
            _record_timing(Path(os.environ["MASKRAY_SERVE_RESULTS"]), seconds, job.seconds, size,
                           page.input_value("#steps"), page.input_value("#scheduler"))
        assert page.evaluate("document.getElementById('res-image').naturalWidth") == size
        assert page.locator("#seed-strip button").count() == (2 if tiny else 1)
        page.wait_for_function("document.getElementById('res-diff').complete")

        _check_downloads(page, first, size)
        page.click("#save")
        page.wait_for_function("document.getElementById('saved').textContent.includes('serve_00000')")
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not script_errors, script_errors
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("MASKRAY_SERVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["MASKRAY_SERVE_SCREENSHOT"])


def _record_timing(path: Path, seconds: float, sampling: float, size: int, steps: str, scheduler: str) -> None:
    import json

    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows.append({"image_size": size, "click_to_image_s": round(seconds, 2), "sampling_s": round(sampling, 2),
                 "steps": int(steps), "scheduler": scheduler, "model": os.environ.get("MASKRAY_SERVE_MODEL"),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "load_average": os.getloadavg()})
    path.write_text(json.dumps({"rows": rows}, indent=2))


class _Verdicts:
    """A checker stand-in for the page: every image gets the verdict given (the real check: tests/test_serve_check)."""

    def __init__(self, labels: dict, failures: list[str]):
        self.labels, self.failures = labels, failures

    def check(self, images, labels):
        return [{"passed": not self.failures, "failures": list(self.failures)} for _ in range(images.shape[0])]


def test_the_page_shows_the_check_and_holds_back_a_failing_image(page_url):
    """With serve --check the caption gives each image's verdict and why, and *add* is disabled for a failure."""
    pw = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    chromium = _chromium()
    url, service = page_url
    labels = service.workspace.dataset.info.labels
    first = service.workspace.ids[0]
    shape = service.workspace.label(first).shape
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector(".case.active")
            y, x = _inner_lung_point(service, first, float(page.input_value("#diameter")))
            page.locator("#overlay").click(position=_at(page, y, x, shape))
            page.wait_for_function("document.getElementById('message').textContent.includes('1 nodule(s) placed')")
            page.fill("#steps", "2")
            for failures, verdict in ((["1 false nodule(s)"], "fails the check: 1 false nodule(s)"),
                                      ([], "passes the check")):
                service.checker = _Verdicts(labels, failures)
                page.evaluate("document.getElementById('status').removeAttribute('data-seconds')")
                page.click("#generate")
                page.wait_for_selector("#status[data-seconds]", timeout=300_000)
                assert verdict in page.inner_text("#res-caption")
                assert page.is_disabled("#save") == bool(failures)
            browser.close()
    finally:
        service.checker = None
