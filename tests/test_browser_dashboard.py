"""End to end in headless Chromium: the report page and the real MLflow UI.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; the
tests skip, saying which is missing, where they are absent, and install
nothing. Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import urllib.parse
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mlflow_server import MLflowServer  # noqa: E402
from test_dashboard_seed import TABLE2, SEEDS, seeded  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000")

pytestmark = pytest.mark.browser


def _absent() -> str:
    missing = [f"{what} ({path})" for what, path in
               (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return ", ".join(missing)


if _absent():
    pytest.skip(f"browser tests need {_absent()}: apt-get install -y chromium chromium-driver; "
                "pip install selenium", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return seeded(tmp_path_factory)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    """The digits sweep's report, also logged to its parent run."""
    from dashboards.report import generate
    return generate(["dash-digits"], tmp_path_factory.mktemp("browser-report"), store["uri"],
                    sweep="table2")


@pytest.fixture(scope="module")
def mlflow_ui(store, tmp_path_factory):
    """A real `mlflow server` on the seeded store, on 127.0.0.1, started the way
    `sal-ray ui` starts it; stopped (its whole process group) at the end."""
    server = MLflowServer(store["uri"], tmp_path_factory.mktemp("mlflow-ui"))
    try:
        yield server.start()
    finally:
        server.stop()


def screenshot(driver, name: str, full_page: bool = False) -> pathlib.Path:
    ARTIFACTS.mkdir(exist_ok=True)
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(int(height) + 100, 800), 9000))
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    if full_page:
        driver.set_window_size(1400, 1000)
    return path


def wait_for_text(driver, texts, timeout=90):
    texts = [texts] if isinstance(texts, str) else list(texts)
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))


IMAGES_LOADED = ("return Array.from(document.images).map("
                 "i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")


def test_report_page_renders_tables_and_figures(browser, report):
    browser.get(report.path.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table#table2"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table#table2 tbody tr")
    assert [r.get_attribute("data-source") for r in rows] == ["ours", "paper"]
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "table#table2 thead th")]
    assert header == ["dataset", "Baseline", "SAL-1", "SAL-4", "MoE-4"]
    cell = browser.find_element(By.CSS_SELECTOR, "table#table2 tr[data-source=ours] td[data-col='SAL-4']")
    mean, std = float(cell.get_attribute("data-mean")), float(cell.get_attribute("data-std"))
    assert cell.text.startswith(f"{mean:.2f} ± {std:.2f}") and cell.is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "table#table2 td.best")) == 1
    assert browser.find_elements(By.CSS_SELECTOR, "table#table3 tr[data-source=paper]")
    WebDriverWait(browser, 30).until(
        lambda d: all(c for c, *_ in d.execute_script(IMAGES_LOADED)))
    images = browser.execute_script(IMAGES_LOADED)
    assert len(images) == len(report.figures) == 4
    for complete, width, height, alt in images:
        assert complete and width > 0 and height > 0, alt
    shot = screenshot(browser, "dashboard-report.png", full_page=True)
    assert shot.stat().st_size > 10_000


def test_report_page_says_when_there_is_nothing(browser, store, tmp_path):
    from dashboards.report import generate
    result = generate(["dash-empty", "no-such-exp"], tmp_path, store["uri"])
    browser.get(result.path.as_uri())
    banner = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "empty"))
    assert "No runs to report" in banner.text and banner.is_displayed()
    notes = browser.find_element(By.ID, "notes").text
    assert "experiment 'no-such-exp' not found" in notes
    assert "no runs in experiment(s) dash-empty" in notes
    assert browser.execute_script(IMAGES_LOADED) == []
    screenshot(browser, "dashboard-report-empty.png", full_page=True)


def test_mlflow_ui_lists_the_sweep_runs(browser, mlflow_ui, store):
    exp_id = store["experiments"]["dash-digits"]
    # The REST API first: the same store the browser is about to show.
    body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
    req = urllib.request.Request(f"{mlflow_ui}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    found = json.loads(urllib.request.urlopen(req, timeout=30).read())["runs"]
    names = {r["info"]["run_name"] for r in found}
    assert set(store["run_names"]["dash-digits"]) | {"sweep-table2"} == names

    # MLflow 3.17 opens experiments in its GenAI view unless told otherwise
    # (a localStorage default); workflowType=machine_learning gives the runs table.
    browser.get(f"{mlflow_ui}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    wait_for_text(browser, ["sweep-table2", f"{len(names)} matching runs"])
    # Trial runs are nested under the sweep's parent: expand it.
    expand = browser.find_element(By.XPATH, "//*[text()='sweep-table2']/ancestor::div[3]//button")
    expand.click()
    children = store["run_names"]["dash-digits"]
    assert len(children) == len(TABLE2) * len(SEEDS)
    wait_for_text(browser, children, timeout=60)
    screenshot(browser, "mlflow-ui-runs.png")


def test_report_opens_from_the_parent_run_in_the_mlflow_ui(browser, mlflow_ui, store, report):
    exp_id, parent = store["experiments"]["dash-digits"], store["parents"]["dash-digits"]
    assert report.logged_to == [parent]
    listing = json.loads(urllib.request.urlopen(
        f"{mlflow_ui}/ajax-api/2.0/mlflow/artifacts/list?"
        + urllib.parse.urlencode({"run_id": parent, "path": "report"}), timeout=30).read())
    assert "report/report.html" in {f["path"] for f in listing["files"]}

    browser.get(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{parent}/artifacts/report/report.html"
                "?workflowType=machine_learning")
    frame = WebDriverWait(browser, 90, 0.5).until(
        lambda d: (d.find_elements(By.CSS_SELECTOR, "iframe") or [None])[0])
    browser.switch_to.frame(frame)
    try:
        WebDriverWait(browser, 60, 0.5).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "table#table2 td[data-col='SAL-4']"))
        WebDriverWait(browser, 30).until(
            lambda d: all(c for c, *_ in d.execute_script(IMAGES_LOADED)))
        images = browser.execute_script(IMAGES_LOADED)
        assert len(images) == 4 and all(w > 0 for _, w, _, _ in images)
    finally:
        browser.switch_to.default_content()
    screenshot(browser, "mlflow-ui-report-artifact.png")
