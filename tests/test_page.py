"""The page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium) against a real `ttr serve` over MovieLens 100K: enter user 1, see the tiles
`/recommend/1` answers, click one, see its similar items; an unknown user sees popular items,
labelled so. Screenshots go to the test's temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import copy_repo, need_data, unavailable, unique_project
from servers import get, serve, stop

from retrieval.cli import run

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def need_browser() -> None:
    """Chromium and its driver; skipped locally where missing, a failure in CI (`.ci/run`
    installs them)."""
    if not (CHROMIUM and DRIVER):
        unavailable("no chromium / chromedriver (Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def ml100k_server(tmp_path_factory):
    data = need_data("ml-100k")
    need_browser()
    base = tmp_path_factory.mktemp("page")
    repo = copy_repo(base, unique_project())
    root = base / "artifacts"
    steps = [["data", "--dataset", "ml-100k", "--data-dir", str(data)], ["apply"],
             ["materialize"], ["train", "--epochs", "2", "--refit", "false", "--artifacts",
             str(root)], ["index", "--artifacts", str(root)]]  # fmt: skip
    for step in steps:
        assert run([*step, "--repo", str(repo)]) == 0, step
    process, url = serve(repo, root)
    yield url
    stop(process)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def tile_titles(browser, heading: str) -> list[str]:
    """The titles of the tiles under the section `heading`, rank prefix dropped."""
    from selenium.webdriver.common.by import By

    section = browser.find_element(By.XPATH, f'//h2[text()="{heading}"]/following-sibling::div')
    return [t.text.split(". ", 1)[1] for t in section.find_elements(By.CLASS_NAME, "title")]


def loaded(browser) -> None:
    """Wait until every image of the page has loaded (or failed)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return [...document.images].every(i => i.complete)"))  # fmt: skip


@pytest.mark.slow
def test_a_user_sees_recommendations_and_clicks_through_to_similar_items(
    ml100k_server, browser, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = ml100k_server
    browser.get(url + "/")
    field = browser.find_element(By.NAME, "user")
    field.send_keys("1")
    field.submit()
    loaded(browser)
    browser.save_screenshot(str(tmp_path / "user1.png"))
    expected = [item["title"] for item in get(url, "/recommend/1?k=10")[1]["items"]]
    assert tile_titles(browser, "top 10 recommended (personalized)") == expected
    assert browser.find_element(By.ID, "source").text == "personalized"
    posters = browser.find_elements(By.CSS_SELECTOR, ".tile img")
    assert posters and all(
        browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in posters
    )  # every poster loaded from /items/{id}/image
    first = browser.find_elements(By.CSS_SELECTOR, "h2 + .tiles")[1].find_element(
        By.CLASS_NAME, "tile"
    )
    item = first.get_attribute("data-item")
    first.click()
    loaded(browser)
    browser.save_screenshot(str(tmp_path / "similar.png"))
    similar = [it["title"] for it in get(url, f"/similar/{item}?k=10")[1]["items"]]
    assert tile_titles(browser, "10 similar items") == similar
    browser.get(url + "/docs")  # Swagger UI from the app's own files, not a CDN
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert "two-tower retrieval" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert all(src.startswith(url) for src in browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"))  # fmt: skip
    browser.get(url + "/?user=99999")
    browser.save_screenshot(str(tmp_path / "unknown.png"))
    assert browser.find_element(By.ID, "source").text == "popular"
    assert tile_titles(browser, "top 10 recommended (popular)")
