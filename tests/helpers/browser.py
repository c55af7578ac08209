"""Look at the results as a person would: the MLflow UI and the Snakemake report in headless Chromium.

Selenium drives Debian's ``chromium`` through Debian's ``chromium-driver``: both come from one source
package, so browser and driver versions always match, and nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from helpers.local_server import free_port, start_mlflow, stop_process_group

log = logging.getLogger(__name__)

BROWSER_PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver"}


def missing_browser() -> list[str]:
    """The Debian packages to install before a page can be looked at; empty when both are there."""
    return [package for command, package in BROWSER_PACKAGES.items() if shutil.which(command) is None]


@contextmanager
def mlflow_ui(tracking_uri: str, log_path: str | Path, timeout: float = 180) -> Iterator[str]:
    """Serve ``tracking_uri`` with ``mlflow ui`` on a free port of 127.0.0.1 and yield its base URL; stopped on
    exit."""
    port = free_port()
    process = start_mlflow(["ui", "--backend-store-uri", tracking_uri], port, Path(log_path), timeout)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


@contextmanager
def chromium(
    width: int = 1600, height: int = 1000, download_dir: str | Path | None = None
) -> Iterator[webdriver.Chrome]:
    """A headless Chromium of the given window size, driven by Debian's matching chromedriver; with
    ``download_dir``, downloads are saved there without asking."""
    options = webdriver.ChromeOptions()
    if download_dir is not None:
        prefs = {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
        options.add_experimental_option("prefs", prefs)
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_texts(driver: webdriver.Chrome, texts: list[str], timeout: float) -> str:
    """Wait until the page shows every one of ``texts``; return the page's visible text."""
    try:
        WebDriverWait(driver, timeout).until(lambda _: all(text in page_text(driver) for text in texts))
    except TimeoutException:
        missing = [text for text in texts if text not in page_text(driver)]
        raise TimeoutError(f"{driver.current_url} never showed {missing}; it shows:\n{page_text(driver)}") from None
    return page_text(driver)


def wait_for_element(driver: webdriver.Chrome, by: str, selector: str, timeout: float) -> None:
    WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((by, selector)))


def click(driver: webdriver.Chrome, by: str, selector: str, timeout: float) -> None:
    """Click an element once it is there and clickable."""
    WebDriverWait(driver, timeout).until(expected_conditions.element_to_be_clickable((by, selector))).click()


def screenshot(driver: webdriver.Chrome, texts: list[str], path: str | Path, timeout: float) -> str:
    """Once the page shows ``texts``, save what the window shows as a PNG at ``path``; return the page's text."""
    text = wait_for_texts(driver, texts, timeout)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    log.info("saved a screenshot of %s to %s", driver.current_url, path)
    return text
