"""The patch-localization demo as a person uses it: JupyterLab in headless Chromium, run all
cells, move a query-patch slider, and the predicted box shown on the page changes.

Needs Debian's /usr/bin/chromium (test.sh installs it where it can); without it the test is
skipped with that reason. No browser is ever downloaded. Nothing is trained: the notebook
loads the checkpoint that ships with the kit, as it does from a clean checkout, and the test
measures (and prints) the time from "Run All Cells" to the first predicted box on the page.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = "06_patch_localization_demo.ipynb"
ROOT = Path(__file__).resolve().parents[1]  # the checkout
FIRST_BOX_BOUND_S = 90

pytestmark = pytest.mark.browser


def _require_browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; test.sh does it as root)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@contextlib.contextmanager
def _server(cmd, env, out: Path, port: int, token: str):
    """Run a JupyterLab command until the block ends; yields its base URL once it answers."""
    log = open(out / "jupyterlab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail(
                        f"JupyterLab did not start: {(out / 'jupyterlab.log').read_text()[-2000:]}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # jupyter asks for confirmation on one SIGINT
        time.sleep(0.3)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def lab(tmp_path, free_port):
    """A JupyterLab server on a free localhost port serving a copy of the demo notebook (so
    autosave never touches the repository); yields (url, out_dir)."""
    _require_browser()
    nb_dir, out = tmp_path / "nb", tmp_path / "out"
    nb_dir.mkdir()
    out.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, nb_dir / NOTEBOOK)
    port, token = free_port(), "updetr-demo-test"
    j = tmp_path / "jupyter"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "JUPYTER_CONFIG_DIR": str(j / "config"),
        "JUPYTER_DATA_DIR": str(j / "data"),
        "JUPYTER_RUNTIME_DIR": str(j / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(j / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(j / "workspaces"),
        "IPYTHONDIR": str(j / "ipython"),
        "MPLCONFIGDIR": str(j / "matplotlib"),
    }
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws into the page
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
        f"--notebook-dir={nb_dir}", "--ServerApp.port_retries=0",
    ]  # fmt: skip
    with _server(cmd, env, out, port, token) as url:
        yield f"{url}/lab/tree/{NOTEBOOK}?token={token}", out


def _boxes_text(page) -> str:
    return page.locator(".updetr-demo-boxes textarea").input_value()


def _launch(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )


def _run_all_until_first_box(page) -> float:
    """Run > Run All Cells on the open demo notebook; seconds until the first predicted box."""
    # wait until the kernel is connected and idle, then Run > Run All Cells (retried once if
    # no cell starts: a click before the session is ready is dropped)
    page.get_by_text(re.compile(r"updetr-lite\) \| Idle")).wait_for(timeout=90_000)
    for attempt in range(2):
        started = time.perf_counter()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-InputPrompt')]"
                ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))",
                timeout=15_000,
            )
            break
        except Exception:
            if attempt:
                raise
    page.locator(".updetr-demo-boxes textarea").wait_for(timeout=90_000)
    page.wait_for_function(
        "() => { const t = document.querySelector('.updetr-demo-boxes textarea');"
        " return t && t.value.includes('predicted'); }",
        timeout=60_000,
    )
    return time.perf_counter() - started


def test_demo_in_a_real_browser(lab):
    from playwright.sync_api import sync_playwright

    url, out = lab
    with sync_playwright() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            first_box_s = _run_all_until_first_box(page)
            print(f"\nfirst predicted box {first_box_s:.1f} s after Run All Cells")
            # the target is 30 s on 2 cores; the bound is generous for a busy machine
            assert first_box_s < FIRST_BOX_BOUND_S, first_box_s
            before = _boxes_text(page)
            page.screenshot(path=str(out / "demo_before.png"), full_page=True)
            # move query patch 0 to the right with the keyboard on the x slider
            handle = page.locator(".updetr-demo-x0 .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            for _ in range(40):
                handle.press("ArrowRight")
            page.wait_for_function(
                "(old) => document.querySelector('.updetr-demo-boxes textarea').value !== old",
                arg=before,
                timeout=30_000,
            )
            after = _boxes_text(page)
            page.screenshot(path=str(out / "demo_after.png"), full_page=True)
            # the query box moved by the slider, and so did the prediction shown
            q_before = re.search(r"patch 0: query \[([^\]]+)\] -> predicted \[([^\]]+)\]", before)
            q_after = re.search(r"patch 0: query \[([^\]]+)\] -> predicted \[([^\]]+)\]", after)
            assert q_before and q_after, after
            x_before = float(q_before.group(1).split(",")[0])
            x_after = float(q_after.group(1).split(",")[0])
            assert x_after > x_before, (before, after)
            assert q_before.group(2) != q_after.group(2), (before, after)
            body = page.inner_text("body")
            for bad in ("Error displaying widget", "Traceback", "model not found"):
                assert bad not in body, f"{bad!r} on the page (see {out})"
        except Exception:
            page.screenshot(path=str(out / "demo_failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_lab_script_serves_working_copies_and_leaves_the_checkout_clean(tmp_path, free_port):
    """``bash scripts/lab.sh`` as a student starts it, in a fresh clone: JupyterLab opens the
    git-ignored working copies in notebooks/work/, the demo runs to its first predicted box
    on the project's kernel, and ``git status`` stays clean afterwards."""
    from playwright.sync_api import sync_playwright

    _require_browser()
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: scripts/lab.sh is tested in a clone of it")
    clone, out = tmp_path / "clone", tmp_path / "out"
    out.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the checkout's environment (its pyproject.toml hash matches: venv.sh installs nothing)
    (clone / ".venv").symlink_to((ROOT / ".venv").resolve(), target_is_directory=True)
    if not (clone / ".venv" / "bin" / "jupyter").exists():
        pytest.skip(f"{ROOT / '.venv'} has no jupyter: run test.sh, which makes it")
    port, token = free_port(), "updetr-lab-test"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND")}
    cmd = [
        "bash", str(clone / "scripts" / "lab.sh"), "--no-browser", f"--port={port}",
        "--ip=127.0.0.1", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
    ]  # fmt: skip
    with _server(cmd, env, out, port, token) as url, sync_playwright() as pw:
        work = clone / "notebooks" / "work"
        committed = sorted(p.name for p in (clone / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        assert sorted(p.name for p in work.glob("*.ipynb")) == committed
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            print(f"\nscripts/lab.sh: first predicted box {_run_all_until_first_box(page):.1f} s")
            page.keyboard.press("Control+s")  # a student saves: into notebooks/work/
            time.sleep(2)
        except Exception:
            page.screenshot(path=str(out / "lab_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    status = subprocess.run(
        ["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True
    ).stdout
    assert status == "", status
