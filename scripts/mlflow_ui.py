"""Walk through mlflow/README.md's steps in a real headless Chromium; save a screenshot of each.

    python mlflow/serve.py --backend-store-uri sqlite:////tmp/s/mlflow.db --port 5000 &
    python scripts/mlflow_ui.py --url http://127.0.0.1:5000 --experiment smoke --out docs/mlflow

Drives Debian's ``chromium`` through its ``chromedriver`` (packages ``chromium`` and
``chromium-driver``; scripts/setup.sh installs them) with selenium, offline. The MLflow UI is a
JavaScript app: every step waits until the text it shows is on the page. The screenshots are
reduced to a small palette, so the whole walk-through stays a few hundred KB.
tests/test_search_e2e.py (test_mlflow_ui_in_chromium) uses the same helpers on a study of its own.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # search.runview: the same links search/run.py prints

from search.runview import compare_url, runs_url  # noqa: E402

WINDOW = (1400, 900)


class BrowserMissing(RuntimeError):
    """No chromium / chromedriver / selenium on this machine; the message says what to install."""


def browser(window: tuple[int, int] = WINDOW) -> Any:
    """A headless Chromium under selenium (Debian's chromium and chromedriver, no download)."""
    exe, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not exe or not driver:
        raise BrowserMissing("chromium and chromedriver not found; install the Debian packages chromium and "
                             "chromium-driver (scripts/setup.sh does, as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise BrowserMissing(f"selenium is not installed ({e}); pip install -e '.[test]'") from e
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                "--no-first-run", "--disable-extensions", f"--window-size={window[0]},{window[1]}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_script_timeout(60)  # a page drawing dozens of charts on a busy machine answers slowly
    return drv


def page_text(drv: Any) -> str:
    return drv.execute_script("return document.body ? document.body.innerText : ''") or ""


def wait_until(drv: Any, ok: Callable[[Any], Any], what: str, timeout: float = 90.0) -> Any:
    """Poll ``ok(driver)`` until it returns something true; TimeoutError naming ``what`` otherwise."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = ok(drv)
        except Exception:  # noqa: BLE001 - the page is still rendering (stale or missing elements)
            found = None
        if found:
            return found
        time.sleep(0.5)
    try:
        shown = page_text(drv)[:600]
    except Exception as e:  # noqa: BLE001 - a renderer too busy to answer
        shown = f"(unreadable: {e})"
    raise TimeoutError(f"{what} not on {drv.current_url} within {timeout:.0f} s; the page shows: {shown!r}")


def wait_text(drv: Any, texts: list[str], timeout: float = 90.0) -> None:
    wait_until(drv, lambda d: all(t in page_text(d) for t in texts), f"text {texts}", timeout)


def images_loaded(drv: Any, min_width: int = 60) -> int:
    """How many <img> fetched from the server (not the UI's inline logos) have loaded a picture at
    least ``min_width`` px wide."""
    return drv.execute_script(
        "return Array.from(document.images).filter(i => !i.src.startsWith('data:') && i.complete"
        " && i.naturalWidth >= arguments[0]).length", min_width)


def show_step(drv: Any, step: int) -> int:
    """Set every image card's step box to ``step``; returns how many were set. MLflow 3.17's image
    cards open at step 0, where the trials logged no picture (their first evaluation is later), and
    draw nothing until the slider or the box picks a logged step."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    boxes = [b for b in drv.find_elements(By.CSS_SELECTOR, "input") if b.get_attribute("value") == "0"]
    for box in boxes:
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(step), Keys.ENTER, Keys.TAB)  # the box commits on Enter or blur; Tab makes sure
    drv.execute_script("document.activeElement && document.activeElement.blur()")  # no focus ring in a picture
    return len(boxes)


def taller_picture_cards(drv: Any, by: int = 300) -> int:
    """Drag the resize handle of each row of image cards down by ``by`` px; returns how many rows.
    MLflow 3.17 sizes a card for a line chart: the run's params fill the top of an image card and
    the picture below them is cut off, wide panels to a strip and taller ones to nothing."""
    from selenium.webdriver.common.action_chains import ActionChains

    handles = drv.execute_script(
        "const card = '[data-testid=\"experiment-view-compare-runs-card\"]';"
        "return [...document.querySelectorAll('[data-testid=\"draggable-card-resize-handle\"]')].filter(h => {"
        "  let p = h.parentElement; while (p && !p.querySelector(card)) p = p.parentElement;"
        "  return p && p.querySelector(card).innerText.startsWith('pictures/'); });")
    firsts: dict[int, Any] = {}  # resizing one card resizes its whole row: one handle per row
    for h in handles:
        y = h.location["y"]
        if not any(abs(y - r) < 40 for r in firsts):
            firsts[y] = h
    for _, h in sorted(firsts.items(), key=lambda kv: -kv[0]):  # bottom row first: the others stay put
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", h)  # the drag stays in the window
        ActionChains(drv).click_and_hold(h).move_by_offset(0, by // 2).move_by_offset(0, by - by // 2).release().perform()
        time.sleep(1)
    drv.execute_script(  # back to the top left, as the page opened (scrollIntoView moved every scroller)
        "for (const e of document.querySelectorAll('*')) { if (e.scrollTop) e.scrollTop = 0; if (e.scrollLeft) e.scrollLeft = 0; }")
    return len(firsts)


def screenshot(drv: Any, path: Path, colors: int = 64) -> Path:
    """The window as a PNG with a small palette (a UI screenshot needs few colours)."""
    from PIL import Image

    with Image.open(io.BytesIO(drv.get_screenshot_as_png())) as im:
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, optimize=True)
    return path


def trials(uri: str, experiment: str) -> tuple[str, list[Any]]:
    """The experiment id and its trial runs (ctcae.kind = trial), best objective first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} at {uri}")
    runs = client.search_runs([exp.experiment_id], "tags.`ctcae.kind` = 'trial'", order_by=["metrics.val_ari_fg DESC"])
    return exp.experiment_id, runs


def quiet(drv: Any, url: str) -> None:
    """Keep MLflow's assistant panel closed (it opens itself on a fresh browser and covers the runs)."""
    closed = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
              "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
    drv.get(f"{url}/")
    drv.execute_script(closed)
    time.sleep(3)  # the app's first load may open the panel and write its own state after ours
    drv.execute_script(closed)


def widen_run_names(drv: Any, by: int = 240) -> None:
    """Drag the Run Name column wider, so that the trials' names show in full."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    for cell in drv.find_elements(By.CSS_SELECTOR, ".ag-header-cell"):
        if "Run Name" in cell.text:
            handle = cell.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
            ActionChains(drv).click_and_hold(handle).move_by_offset(by, 0).release().perform()
            body = drv.find_element(By.TAG_NAME, "body")
            ActionChains(drv).move_to_element_with_offset(body, 5, 5).perform()  # no tooltip in the picture
            return


def walk(drv: Any, url: str, experiment: str, out: Path) -> list[tuple[Path, str]]:
    """mlflow/README.md's steps; returns (screenshot, what it shows) per step."""
    exp_id, runs = trials(url, experiment)
    names = [r.info.run_name for r in runs]
    imaged = next(r for r in runs if r.info.status == "FINISHED")
    last_step = int(imaged.data.tags.get("ctcae.best_step", 20))  # a step that has pictures
    shots: list[tuple[Path, str]] = []
    ml = "?workflowType=machine_learning"

    def shot(name: str, what: str) -> None:
        time.sleep(2)  # let charts finish their transitions
        shots.append((screenshot(drv, out / name), what))

    quiet(drv, url)
    link = runs_url(url, exp_id, "val_ari_fg", "max")
    trial = f"{url}/#/experiments/{exp_id}/runs/{imaged.info.run_id}"
    upsample = [n for n in names if n.startswith("decoder=upsample")]
    steps: list[tuple[str, str, str, Callable[[Any], Any], bool]] = [
        # (file, what it shows, address, what to wait for, widen the Run Name column)
        ("1-trials.png", "the link search/run.py prints: the trials only, named by their values, best val_ari_fg first",
         link, lambda d: all(n in page_text(d) for n in names), True),
        ("2-search-tag.png", "the search box on a search tag: tags.search.decoder = 'upsample'",
         link.replace("searchFilter=", "searchFilter=tags.search.decoder%20%3D%20%27upsample%27%20and%20"),
         lambda d: all(n in page_text(d) for n in upsample[:1]) and "matching run" in page_text(d), True),
        ("3-charts.png", "Chart view: the objective's curve, one line per trial, then the trials' pictures",
         link + "&compareRunsMode=CHART", lambda d: "objective/val_ari_fg" in page_text(d) and "pictures/panel" in page_text(d), False),
        ("4-trial.png", "a trial: its params (searched and key values only), Created by, Source, commit, search tags",
         f"{trial}{ml}", lambda d: imaged.info.run_name in page_text(d) and "run.py" in page_text(d), False),
        ("5-trial-images.png", "the trial's pictures by step: panel (rows labelled), phase maps, segmentation",
         f"{trial}/model-metrics{ml}", lambda d: "pictures/panel" in page_text(d), False),
        ("6-compare.png", "Compare: parallel coordinates of searched params against the objective, trials by name",
         compare_url(url, exp_id, [r.info.run_id for r in runs]),
         lambda d: names[0] in page_text(d) and "Parallel Coordinates Plot" in page_text(d), False),
    ]
    for name, what, address, ready, widen in steps:
        pictures = name.startswith(("3-", "5-"))
        # picture cards are drawn only in view; in Chart view three cards share what the runs list
        # leaves, and a narrower card cuts the 256 px pictures off at the right
        drv.set_window_size(1900 if name.startswith("3-") else WINDOW[0], 1500 if pictures else WINDOW[1])
        drv.get(address)
        try:
            wait_until(drv, ready, what)
        except TimeoutError as e:
            print(f"warning: {name} not taken: {e}", file=sys.stderr)
            continue
        if widen:
            widen_run_names(drv)
        if pictures:
            taller_picture_cards(drv)
            show_step(drv, last_step)
            try:
                wait_until(drv, images_loaded, f"{name}: a picture at step {last_step}", timeout=60)
            except TimeoutError as e:
                print(f"warning: {e}", file=sys.stderr)
        shot(name, what)
    return shots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:5000", help="the MLflow server (python mlflow/serve.py)")
    p.add_argument("--experiment", default="smoke")
    p.add_argument("--out", default=str(ROOT / "docs" / "mlflow"))
    args = p.parse_args(argv)
    try:
        drv = browser()
    except BrowserMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for path, what in walk(drv, args.url.rstrip("/"), args.experiment, Path(args.out)):
            print(f"{path} ({path.stat().st_size // 1024} KB): {what}")
    finally:
        drv.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
