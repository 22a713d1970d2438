"""A sweep while it runs: the live console (each running trial's seed, epoch and
objective, and the sweep's progress with an ETA), and its Optuna studies in their
SQLite storage, read by another process mid-sweep and shown by a real
optuna-dashboard server in headless Chromium."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import sal_ray

optuna = pytest.importorskip("optuna")
rt = pytest.importorskip("ray.tune")
pytestmark = pytest.mark.ray

READ_STUDIES = """
import json, sys, optuna
url = sys.argv[1]
print(json.dumps({n: len(optuna.load_study(study_name=n, storage=url).trials)
                  for n in optuna.get_all_study_names(url)}))
"""


class ReadMidSweep(rt.Callback):
    """At the first epoch a trial reports, another process reads the studies (as
    optuna-dashboard does); the driver waits for it meanwhile, the trials do not."""

    def __init__(self, url: str):
        self.url, self.seen = url, None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.seen is None:
            out = subprocess.run([sys.executable, "-c", READ_STUDIES, self.url], check=True,
                                 capture_output=True, text=True, timeout=120).stdout
            self.seen = json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def live(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    url = f"sqlite:///{root / 'ray' / '.sweeps' / 't-live.optuna.db'}"
    watcher = ReadMidSweep(url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = sal_ray.tune("digits", ["sal", "bp"], {"lr": [0.05]}, sampler="grid",
                           fixed={"epochs": 6, "width": 32, "batch_size": 32}, seeds=2,
                           experiment="test-live", name="t-live",
                           tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                           storage_path=str(root / "ray"), progress_every_s=1.0,
                           callbacks=[watcher], max_concurrent=2)
    return res, out.getvalue(), watcher, url


def test_the_console_shows_running_trials_and_an_eta(live):
    res, out, _, url = live
    lines = out.splitlines()
    progress = [x for x in lines if re.match(
        r"\[\d+:\d\d\] [01]/2 trials ended, [12] running; \d+% of the sweep's epochs; "
        r"ETA \d+:\d\d$", x)]
    trial_lines = [x for x in lines if re.match(
        r" {4}digits/(sal|bp) +\S+  2 seeds fused epoch [1-6]/6  val_acc [01]\.\d{4}$", x)]
    assert progress and trial_lines, out
    # the progress line leads the running trials' lines, and the end summary follows
    assert lines.index(progress[0]) < lines.index(trial_lines[0]) < \
        next(i for i, x in enumerate(lines) if "sweep 't-live' done" in x), out
    # the command to watch the studies is printed before any trial runs
    command = f"optuna-dashboard {url}"
    assert command in out and out.index(command) < out.index(progress[0])
    assert res.optuna_storage == url


def test_the_studies_are_stored_and_read_while_the_sweep_runs(live):
    res, _, watcher, url = live
    assert set(watcher.seen) == {"t-live/digits/sal", "t-live/digits/bp"}
    assert sum(watcher.seen.values()) >= 1          # trials there while the sweep ran
    for key, study in res.studies.items():
        stored = optuna.load_study(study_name=f"t-live/{key}", storage=url)
        assert [t.state.name for t in stored.trials] == ["COMPLETE"]
        assert [t.value for t in stored.trials] == [t.value for t in study.trials]
        assert {t.user_attrs["tune_trial_id"] for t in stored.trials} == \
            set(res.trials[res.trials.method == key.split("/")[1]].trial_id)


# ---- optuna-dashboard in headless Chromium ------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(live):
    exe = pytest.importorskip("shutil").which("optuna-dashboard",
                                              path=str(__import__("pathlib").Path(
                                                  sys.executable).parent))
    if exe is None:
        pytest.skip("needs optuna-dashboard: pip install optuna-dashboard (extras test, report)")
    port = free_port()
    server = subprocess.Popen([exe, live[3], "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=5))
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no dashboard"
                time.sleep(0.5)
        yield base, {s["study_name"]: s["study_id"] for s in studies["study_summaries"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.browser
def test_optuna_dashboard_shows_the_sweeps_studies_and_trials(dashboard):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    browser_tests = pytest.importorskip("test_browser_dashboard")  # skips without Chromium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, ids = dashboard
    options = webdriver.ChromeOptions()
    options.binary_location = browser_tests.CHROMIUM
    for flag in browser_tests.CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(browser_tests.CHROMEDRIVER), options=options)
    try:
        def text_with(*words):
            WebDriverWait(driver, 60).until(
                lambda d: all(w in d.find_element(By.TAG_NAME, "body").text for w in words))
            return driver.find_element(By.TAG_NAME, "body").text

        driver.get(f"{base}/dashboard")
        text_with("t-live/digits/sal", "t-live/digits/bp")
        browser_tests.ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(browser_tests.ARTIFACTS / "optuna-dashboard-studies.png"))
        for name, sid in ids.items():
            driver.get(f"{base}/dashboard/studies/{sid}/trials")
            body = text_with(name, "1 Trials")
            assert "Complete" in body and "tune_trial_id" in body, body[:2000]
        driver.save_screenshot(str(browser_tests.ARTIFACTS / "optuna-dashboard-trials.png"))
    finally:
        driver.quit()
