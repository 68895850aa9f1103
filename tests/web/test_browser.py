"""Each role's page in a real headless browser (Debian's chromium, driven by Selenium with
chromium-driver) against a live coordinator and two real workers: sign in through the form,
click through to a job, watch it finish, see why a node is banned. A failing test leaves
a screenshot and the page's HTML under tests/artifacts/."""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparegrid.sdk import AdminClient
from tests.web.conftest import ARTIFACTS, Site

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
MISSING = not (CHROMIUM.exists() and DRIVER.exists())
WHY = (
    "Debian's chromium and chromium-driver are not installed "
    "(apt-get install -y chromium chromium-driver; .ci/run does it)"
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.timeout(240),
    # in CI (CI=true) a missing browser fails these tests instead of skipping them
    pytest.mark.skipif(MISSING and not os.environ.get("CI"), reason=WHY),
]
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'

if not MISSING:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoAlertPresentException,
        SessionNotCreatedException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait


def _start_chromium(options: "webdriver.ChromeOptions", tmp_path: Path) -> "WebDriver":
    """Chromium under chromedriver; when it does not start, the failure carries the
    driver's log (chromium's own stderr is in it)."""
    log = tmp_path / "chromedriver.log"
    service = Service(executable_path=str(DRIVER), log_output=str(log))
    try:
        return webdriver.Chrome(options=options, service=service)
    except SessionNotCreatedException as exc:
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        raise AssertionError(
            f"chromium did not start (umask now {_umask():03o}); driver log:\n{tail}"
        ) from exc


def _umask() -> int:
    """The process's umask (a 0o177 one makes chromium abort at start: its 0700 temp
    directory comes out 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> "Iterator[WebDriver]":
    if MISSING:
        pytest.fail(WHY)
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium fetch a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    driver = _start_chromium(options, tmp_path)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
            (ARTIFACTS / f"{request.node.name}.html").write_text(driver.page_source)
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def sign_in(driver: "WebDriver", site: Site, key: str) -> None:
    driver.get(f"{site.web}/login")
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(lambda d: "/login" not in d.current_url)
    assert "sparegrid_session" not in driver.current_url and key not in driver.current_url


def text_of(driver: "WebDriver", element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def no_alert(driver: "WebDriver") -> bool:
    try:
        driver.switch_to.alert  # noqa: B018  (raises when there is none)
    except NoAlertPresentException:
        return True
    return False


def test_operator_clicks_through_to_a_job_and_checks_the_ledger(
    site: Site, browser: "WebDriver"
) -> None:
    with site.client(site.alice_key) as client:
        job = client.echo("hi", tasks=4, name=HOSTILE).wait(timeout=60)
    sign_in(browser, site, site.admin_key)
    assert browser.current_url.endswith("/operator")
    assert text_of(browser, "who") == "admin"
    nodes = text_of(browser, "nodes")
    assert "node1" in nodes and "node2" in nodes and "volunteer" in nodes
    assert "job.finished" in text_of(browser, "events")
    browser.find_element(By.CSS_SELECTOR, f'a.job-link[href="/jobs/{job.id}"]').click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.endswith(f"/jobs/{job.id}"))
    assert text_of(browser, "job-name") == HOSTILE  # shown as text, never run
    assert no_alert(browser)
    assert text_of(browser, "job-state") == "succeeded"
    assert "4 of 4 done" in text_of(browser, "job-progress")
    browser.find_element(By.ID, "nav-operator").click()
    browser.find_element(By.ID, "ledger-check").click()
    assert text_of(browser, "ledger-result").startswith("The ledger balances")


def test_client_watches_its_job_finish_and_cannot_open_another(
    site: Site, browser: "WebDriver"
) -> None:
    with site.client(site.alice_key) as client:
        job = client.echo("slow", tasks=30, sleep_ms=200, name="live one")
    sign_in(browser, site, site.alice_key)
    assert browser.current_url.endswith("/client")
    browser.find_element(By.CSS_SELECTOR, f'a.job-link[href="/jobs/{job.id}"]').click()
    assert text_of(browser, "job-id") == job.id

    def finished(driver: "WebDriver") -> bool:
        try:  # the page reloads itself every few seconds while the job runs
            return text_of(driver, "job-state") == "succeeded"
        except StaleElementReferenceException:
            return False

    seen_running = text_of(browser, "job-state") in ("queued", "running")
    WebDriverWait(browser, 120, poll_frequency=0.5).until(finished)
    assert seen_running or job.refresh().state == "succeeded"
    assert "30 of 30 done" in text_of(browser, "job-progress")
    browser.find_element(By.ID, "logout").click()
    sign_in(browser, site, site.bob_key)
    browser.get(f"{site.web}/jobs/{job.id}")
    assert text_of(browser, "message") == "No such job in your account."
    assert job.id not in browser.page_source and "live one" not in browser.page_source
    browser.get(f"{site.web}/client")
    assert job.id not in browser.page_source


def test_volunteer_sees_its_node_and_why_it_is_banned(site: Site, browser: "WebDriver") -> None:
    sign_in(browser, site, site.volunteer_key)
    assert browser.current_url.endswith("/volunteer")
    nodes = text_of(browser, "nodes")
    assert "node1" in nodes and "node2" not in nodes
    assert browser.find_element(By.ID, "earnings").tag_name == "svg"
    with AdminClient(site.cluster.address, api_key=site.admin_key) as admin:
        [node] = [n for n in admin.nodes() if n.name == "node1"]
        admin.ban_node(node.node_id, "returned frames of <another> scene")
        try:
            browser.refresh()
            row = browser.find_element(By.CSS_SELECTOR, "#nodes tr.node")
            assert "banned" in row.text
            reason = row.find_element(By.CLASS_NAME, "standing-reason").text
            assert reason == "returned frames of <another> scene"
            assert "node.banned" in text_of(browser, "events")
        finally:
            admin.reinstate_node(node.node_id, "")
    time.sleep(0.1)
