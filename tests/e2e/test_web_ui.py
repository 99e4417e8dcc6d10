"""The web UI in a real headless Chromium (Debian's `chromium`, through its `chromedriver`):
every page loads with non-blank charts and pictures, progress moves live, and a reviewer
clicks from the list to an audit to a comparison. Screenshots: test-artifacts/ui/."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from infra.config import Settings
from infra.persistence.migrate import upgrade
from infra.persistence.models import AuditStatus
from infra.persistence.session import make_engine
from service.app import create_app
from service.auth import create_key
from tests import services
from tests.factories.ui import SAMPLES, WORKER, History, populate
from worker import leases

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
WAIT_S = 20
T = TypeVar("T")


@dataclass
class Site:
    url: str
    key: str
    history: History
    session: Session


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The app on a real local port (threaded: the browser loads assets in parallel) over a
    migrated SQLite database holding a tenant's audit history."""
    root = tmp_path_factory.mktemp("ui")
    url = f"sqlite:///{root / 'ui.db'}"
    upgrade(url)
    settings = Settings(data_dir=root / "data", database_url=url)
    app = create_app({"ROBAUDIT_SETTINGS": settings})
    engine = make_engine(url)
    session = Session(engine, expire_on_commit=False)
    key = create_key(session=session, tenant_name="acme")
    session.commit()
    history = populate(app.test_client(), {"Authorization": f"Bearer {key}"}, session, settings)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{httpd.server_port}", key, history, session)
    finally:
        httpd.shutdown()
        thread.join()
        session.close()
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module; Selenium Manager is never asked to download."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        services.unavailable("Debian's chromium and chromium-driver are not installed")
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="robaudit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1360,1000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nweb UI screenshots: {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def colours(png: bytes) -> int:
    """Distinct colours in a screenshot: a blank or failed element has one or two."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 20) or [])


def shoot(driver: WebDriver, name: str) -> None:
    """The whole page, not only the viewport: the window grows to the page's height."""
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], max(size["height"], min(height + 140, 6000)))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(size["width"], size["height"])


def assert_chart(driver: WebDriver, css: str) -> None:
    """The figure holds an SVG with a drawn line (points) and renders in many colours."""
    figure = driver.find_element(By.CSS_SELECTOR, css)
    circles = figure.find_elements(By.CSS_SELECTOR, "svg circle")
    assert circles, f"{css}: no data points"
    paths = figure.find_elements(By.CSS_SELECTOR, "svg path.line")
    if len(circles) > 1:
        assert paths, f"{css}: no line"
        assert paths[0].get_attribute("d").count("L") >= 1, f"{css}: a line of one point"
    assert colours(figure.screenshot_as_png) > 8, f"{css} looks blank"


def test_sign_in_is_required_and_checks_the_key(browser: WebDriver, site: Site) -> None:
    driver = browser
    driver.get(site.url + "/")
    wait_for(lambda: "/ui/signin" in driver.current_url, "the sign-in page")
    driver.find_element(By.ID, "api_key").send_keys("ra_not-a-key")
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    alert = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "p.error"), "an error")
    assert "unknown or revoked" in alert[0].text
    shoot(driver, "0-signin-refused")
    driver.find_element(By.ID, "api_key").send_keys(site.key)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait_for(lambda: driver.current_url.endswith("/ui/audits"), "the audits page")
    cookie = driver.get_cookie("robaudit_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert site.key not in cookie["value"]  # the key's hash is kept, never the key


def test_audits_list_filters_and_shows_live_progress(browser: WebDriver, site: Site) -> None:
    driver = browser
    driver.get(site.url + "/ui/audits")
    rows = driver.find_elements(By.CSS_SELECTOR, "#audits tbody tr")
    assert len(rows) == 4
    running = driver.find_element(
        By.CSS_SELECTOR, f'tr[data-audit-id="{site.history.running_id}"] progress'
    )
    total = int(running.get_attribute("max"))
    assert int(running.get_attribute("value")) == SAMPLES
    # the worker moves on: the page follows within a poll or two, without a reload
    leases.heartbeat(
        site.session, site.history.running_id, site.history.running_shard, WORKER,
        done=total // 2, stage="ε 0.05",
    )  # fmt: skip
    wait_for(lambda: int(running.get_attribute("value")) == total // 2, "live progress")
    text = driver.find_element(
        By.CSS_SELECTOR, f'tr[data-audit-id="{site.history.running_id}"] [data-role=text]'
    ).text
    assert f"{total // 2} / {total}" in text
    assert "ε 0.05" in text
    shoot(driver, "1-audits")
    select = driver.find_element(By.CSS_SELECTOR, "#filters select[name=status]")
    select.find_element(By.CSS_SELECTOR, "option[value=running]").click()
    driver.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait_for(lambda: "status=running" in driver.current_url, "the filtered list")
    ids = [
        r.get_attribute("data-audit-id")
        for r in driver.find_elements(By.CSS_SELECTOR, "#audits tbody tr")
    ]
    assert ids == [site.history.running_id]


def test_list_to_audit_to_compare_is_clicked_through(browser: WebDriver, site: Site) -> None:
    driver = browser
    first, _, last = site.history.audit_ids
    driver.get(site.url + "/ui/audits")
    driver.find_element(By.CSS_SELECTOR, f'tr[data-audit-id="{last}"] td a.mono').click()
    wait_for(lambda: driver.current_url.endswith(f"/ui/audits/{last}"), "the audit page")
    assert "succeeded" in driver.find_element(By.TAG_NAME, "h1").text
    assert_chart(driver, "#chart-divergence")
    assert_chart(driver, "#chart-accuracy")
    picture = driver.find_element(By.CSS_SELECTOR, ".landscape img")
    wait_for(
        lambda: driver.execute_script("return arguments[0].naturalWidth", picture) > 100,
        "the landscape",
    )
    assert colours(picture.screenshot_as_png) > 50
    assert len(driver.find_elements(By.CSS_SELECTOR, "table.results tbody tr")) == 3
    shoot(driver, "2-audit")
    driver.find_element(By.CSS_SELECTOR, f'#baseline option[value="{first}"]').click()
    driver.find_element(By.CSS_SELECTOR, "#compare-with button").click()
    wait_for(lambda: "/ui/compare" in driver.current_url, "the compare page")
    verdict = driver.find_element(By.CSS_SELECTOR, "section.verdict")
    assert verdict.get_attribute("data-verdict") in {"better", "same", "worse", "regressed"}
    assert verdict.find_element(
        By.CSS_SELECTOR, ".badge.big"
    ).text.lower() == verdict.get_attribute("data-verdict")
    assert len(verdict.find_elements(By.CSS_SELECTOR, "tbody tr")) == 3
    assert_chart(driver, "#chart-compare")
    shoot(driver, "3-compare")


def test_model_page_trends_over_versions_and_time(browser: WebDriver, site: Site) -> None:
    driver = browser
    driver.get(site.url + f"/ui/audits/{site.history.audit_ids[0]}")
    driver.find_element(By.CSS_SELECTOR, "h1 a").click()
    wait_for(lambda: "/ui/models/" in driver.current_url, "the model page")
    for css in (
        "#trend-version-divergence",
        "#trend-version-pgd",
        "#trend-time-divergence",
        "#trend-time-pgd",
    ):
        assert_chart(driver, css)
        assert len(driver.find_elements(By.CSS_SELECTOR, f"{css} svg circle")) == 3
    ticks = driver.find_element(By.CSS_SELECTOR, "#trend-version-divergence svg").text
    assert all(v in ticks for v in ("1.0", "1.1", "2.0"))
    shoot(driver, "4-model")
    driver.find_element(By.CSS_SELECTOR, "#epsilon-form option[value='0.02']").click()
    driver.find_element(By.CSS_SELECTOR, "#epsilon-form button").click()
    wait_for(lambda: "epsilon=0.02" in driver.current_url, "the trend at another ε")
    assert_chart(driver, "#trend-version-divergence")


def test_a_running_audit_page_follows_it_to_its_end(browser: WebDriver, site: Site) -> None:
    driver = browser
    running = site.history.running_id
    driver.get(site.url + f"/ui/audits/{running}")
    bar = driver.find_element(By.CSS_SELECTOR, "#live progress")
    assert int(bar.get_attribute("value")) > 0
    shoot(driver, "6-audit-running")
    error = "the worker's sandbox ran out of memory (test)"
    assert leases.finish(site.session, running, AuditStatus.FAILED, error=error)
    # the script sees the end and reloads: the page now shows the outcome and no progress
    wait_for(lambda: not driver.find_elements(By.ID, "live"), "the reload at the end")
    assert "failed" in driver.find_element(By.TAG_NAME, "h1").text
    assert error in driver.find_element(By.CSS_SELECTOR, "p.error").text


def test_report_opens_from_the_audit_page(browser: WebDriver, site: Site) -> None:
    driver = browser
    driver.get(site.url + f"/ui/audits/{site.history.audit_ids[1]}")
    driver.find_element(By.ID, "report-link").click()
    wait_for(lambda: driver.current_url.endswith("/report"), "the report")
    assert driver.find_elements(By.TAG_NAME, "table")
    shoot(driver, "5-report")
    driver.get(site.url + "/ui/audits")
    driver.find_element(By.CSS_SELECTOR, "header form button").click()  # sign out
    wait_for(lambda: "/ui/signin" in driver.current_url, "the sign-in page after sign-out")
    driver.get(site.url + "/ui/audits")
    assert "/ui/signin" in driver.current_url
