"""JupyterLab for real: a learner opens notebook 01 in a browser and runs all cells.

Starts ``jupyter lab`` on loopback with a token, serving a copy of the notebook (so that Lab's
autosave never rewrites the committed file), drives the system's chromium headless through
Playwright (``executable_path``: nothing is downloaded), clicks Run > Run All Cells, waits for
the kernel to finish, and asserts that every code cell ran, no output is an error or a
traceback, and the figures rendered. The screenshot is kept in ``test-artifacts/`` (or
``$SUPPORT_TEST_ARTIFACTS``).

Where chromium or Playwright is missing the test is skipped with the reason, except in CI
(``CI`` set), where ``.ci/run`` installs chromium and a skip would hide a broken set-up.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from .conftest import NOTEBOOKS, ROOT

NOTEBOOK = "01_autoencoders.ipynb"
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_LIMIT_S = 600


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; in CI, .ci/run installs chromium with apt and playwright with the dev extras")
    pytest.skip(reason)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _unavailable("no chromium on PATH (Debian/Ubuntu: apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _kernels(base: str, token: str, log: Path) -> list | None:
    """The server's kernels, or None where it answers 500 for now.

    While a kernel starts, jupyter_server can fail to describe it and answer ``GET /api/kernels``
    with 500 (seen once in CI); the callers' deadlines decide when "not yet" becomes a failure, and
    the server's log is printed then.
    """
    try:
        return _get(f"{base}/api/kernels?token={token}")
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            print(f"GET /api/kernels answered {error.code}; the server's log ends:\n"
                  f"{log.read_text()[-1500:]}")
            return None
        raise


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving ``tmp_path`` with a copy of the notebook."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / NOTEBOOK, tmp_path / "notebooks" / NOTEBOOK)
    # Lab 4 renders only the cells in view ("windowing"); render them all, so that every
    # prompt, output and figure of the notebook is in the page to be checked.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), os.urandom(12).hex()
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115  (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
         f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        # the kernel builds its own matplotlib font cache: a stale shared one (fonts of a deleted
        # virtual environment) makes matplotlib log "findfont" lines to stderr in the cells
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(tmp_path / "matplotlib")},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(90):
            try:
                _get(f"{base}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(1)
        else:
            pytest.fail(f"jupyter lab did not answer within 90 s; log: {tmp_path / 'lab.log'}")
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        yield base, token, tmp_path / "lab.log"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_notebook_runs_all_cells_in_jupyterlab_in_a_real_browser(lab):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    base, token, log = lab
    cells = [c for c in nbformat.read(NOTEBOOKS / NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    code_cells = len(cells)
    hidden = sum(c.metadata.get("jupyter", {}).get("source_hidden", False) for c in cells)
    artifacts = Path(os.environ.get("SUPPORT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/notebooks/{NOTEBOOK}?reset&token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # the kernel must be up before Run All, or the first cells queue behind its start
            deadline = time.time() + 120
            while not any(k["execution_state"] == "idle" for k in _kernels(base, token, log) or []):
                assert time.time() < deadline, (
                    "the notebook's kernel did not start within 120 s; the server's log ends:\n"
                    f"{log.read_text()[-2000:]}")
                time.sleep(1)
            page.keyboard.press("Escape")
            page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)
            began = time.time()
            while True:
                time.sleep(3)
                prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
                done = [p for p in prompts if p.startswith("[") and p[1:-2].isdigit()]
                # a prose cell's input, and so its prompt, is hidden: Run All numbers the cells
                # 1..n in order, so the largest number shown counts the hidden cells' runs too
                ran = max((int(p[1:-2]) for p in done), default=0)
                kernels = _kernels(base, token, log)
                idle = kernels is not None and all(k["execution_state"] == "idle" for k in kernels)
                if idle and ran == code_cells and len(done) == code_cells - hidden:
                    break
                if page.locator(STDERR).count():
                    break  # an error: no point in waiting for the rest
                assert time.time() - began < RUN_LIMIT_S, f"unfinished after {RUN_LIMIT_S} s: {prompts}"
            seconds = time.time() - began
            page.screenshot(path=str(artifacts / "jupyterlab_01_autoencoders.png"), full_page=False)
            error_text = page.locator(STDERR).all_inner_texts()
            tracebacks = page.locator(".jp-OutputArea-output:has-text('Traceback')").count()
            images = page.locator(".jp-OutputArea-output img").count()
        finally:
            browser.close()

    assert error_text == [], f"error outputs in JupyterLab: {error_text[:2]}"
    assert tracebacks == 0
    assert ran == code_cells and len(done) == code_cells - hidden, (
        f"{ran} of {code_cells} code cells ran ({hidden} with hidden input): {prompts}")
    assert images >= 5, f"only {images} figures rendered"
    (artifacts / "jupyterlab_01_autoencoders.json").write_text(json.dumps(
        {"seconds": round(seconds), "code_cells": code_cells, "images": images}))
