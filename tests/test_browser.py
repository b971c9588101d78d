"""notebooks/04_play.ipynb in a real JupyterLab, driven by headless Chromium (Playwright).

Needs Debian's `chromium` (/usr/bin/chromium; no Playwright browser download) and the python
`playwright` package. Skipped when either is missing, unless HRM_REQUIRE_BROWSER=1 (CI), then
it fails. Writes a screenshot of the widget, the shipped agent auto-playing, to
figures/screenshots/play.png.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_play.ipynb"
SCREENSHOT = ROOT / "figures" / "screenshots" / "play.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for path in (os.environ.get("HRM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing_or_skip(reason: str):
    if os.environ.get("HRM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"HRM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def accept_dialogs(page, seconds: float) -> None:
    """Accept JupyterLab dialogs (the kernel chooser) that appear within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        button = page.locator(".jp-Dialog button.jp-mod-accept")
        if button.count():
            button.first.click()
            page.locator(".jp-Dialog").first.wait_for(state="detached", timeout=10_000)
        page.wait_for_timeout(250)


@pytest.fixture
def lab(tmp_path):
    """A token-less JupyterLab on 127.0.0.1 serving a copy of the notebook without outputs."""
    if chromium_path() is None:
        missing_or_skip("chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing_or_skip("the python package playwright is not installed (pip install playwright)")
    root = tmp_path / "root"
    root.mkdir()
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:  # stale widget views must not be mistaken for live ones
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    (root / NOTEBOOK.name).write_text(json.dumps(nb))
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    port = free_port()
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
             "--allow-root", "--LabApp.news_url=None"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/status", proc, log)
        yield base, NOTEBOOK.name, log
    finally:  # the server and its kernels are one process group, started above
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def step_of(status: str) -> int:
    return int(status.split(" ")[1])  # "step 3 · reward ..."


def test_play_notebook_in_jupyterlab(lab):
    """Run the notebook; arrow keys on the board move the agent; ▶ auto-plays the shipped agent."""
    from playwright.sync_api import sync_playwright

    base, name, log = lab
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{name}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            accept_dialogs(page, seconds=10)  # "Select Kernel" may pop up once the session exists
            page.wait_for_function("() => document.body.innerText.includes('| Idle')", timeout=90_000)
            accept_dialogs(page, seconds=1)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            maze = page.locator("img.hrm-maze")
            maze.wait_for(state="visible", timeout=120_000)
            status = page.locator(".hrm-status")
            page.wait_for_function("() => document.querySelector('.hrm-status')?.innerText.startsWith('step 0')")
            status0, src0 = status.inner_text(), maze.get_attribute("src")
            assert src0, "the maze image has no src"

            # keyboard: ipyevents listens while the mouse is over the board
            maze.hover()
            for key in ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"] * 2:  # until a move, not a bump
                before = status.inner_text()  # read before the key: the update may be fast
                page.keyboard.press(key)
                page.wait_for_function(
                    "old => document.querySelector('.hrm-status')?.innerText !== old", arg=before)
                if maze.get_attribute("src") != src0:
                    break
            status1, src1 = status.inner_text(), maze.get_attribute("src")
            assert step_of(status1) >= 1 and src1 != src0, (status0, status1)

            # auto-play: ▶ steps the agent on a timer until paused
            play = page.locator(".hrm-play button").first
            play.click()
            page.wait_for_function(
                "n => parseInt(document.querySelector('.hrm-status')?.innerText.split(' ')[1]) >= n",
                arg=step_of(status1) + 4, timeout=60_000)
            assert page.locator(".hrm-q .hrm-q-bar").count() == 4  # the Q-value bars
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            widget = maze.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')]")
            widget.first.screenshot(path=str(SCREENSHOT))
            play.click()  # pause
            page.wait_for_selector(".hrm-play button i.fa-play")
            page.wait_for_function(  # the convergence plot is drawn on pause
                "() => document.querySelector('img.hrm-convergence')?.naturalWidth > 0")
            paused = status.inner_text()
            page.wait_for_timeout(1_500)
            status2 = status.inner_text()
            assert status2 == paused and step_of(status2) >= step_of(status1) + 4, (status1, status2)
        except Exception:
            print(log.read_text()[-3000:])
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT.with_name("play_failure.png")), full_page=True)
            raise
        finally:
            browser.close()
    print(f"browser test: {time.monotonic() - started:.1f} s after the server answered; "
          f"{status0!r} -> keys {status1!r} -> auto-play {status2!r}")
