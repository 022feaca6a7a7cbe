"""``/docs`` in a real headless browser, on the real server process: Swagger UI renders from this host alone
(its files come from the pinned flask-swagger-ui package, not a CDN), shows the specification's four order
operations, and "Authorize" + "Try it out" + "Execute" on GET /orders gets a 200."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Literal

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from common.settings import InfraSettings, Settings
from common.store.db import make_engine
from services.api.app import create_app
from services.api.openapi import SWAGGER_UI_URL
from tests.support.api import bearer, token_service

SPEC_OPERATIONS = {
    ("POST", "/orders"),
    ("GET", "/orders"),
    ("GET", "/orders/{orderId}"),
    ("PUT", "/orders/{orderId}"),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 30


def _shown_operations(browser: webdriver.Chrome) -> set[tuple[str, str]]:
    shown = set()
    for block in browser.find_elements(By.CSS_SELECTOR, ".opblock"):
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip()
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")
        shown.add((method, path or ""))
    return shown


def _create_order(base: str) -> str:
    """An order booked through the server, so the list the browser fetches is not empty."""
    body = {"accountId": "ACC-001", "symbol": "AAPL", "side": "BUY", "type": "LIMIT", "quantity": 10, "price": 189.5}
    request = urllib.request.Request(
        f"{base}/orders",
        data=json.dumps(body).encode(),
        headers={"Authorization": bearer(), "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        order_id: str = json.loads(response.read())["id"]
        return order_id


def _screenshot(browser: webdriver.Chrome, path: Path) -> Path:
    assert browser.save_screenshot(str(path)), path
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE), path
    return path


def test_docs_render_offline_and_try_it_out_lists_orders(
    rest_server: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    order_id = _create_order(rest_server)
    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(f"{rest_server}/docs")
    wait.until(lambda _: SPEC_OPERATIONS <= _shown_operations(browser), "the four order operations to render")
    assert browser.title == "Order Management Service API"

    # Nothing but this host: Swagger UI's own files are served here, and nothing else was asked for.
    resources: list[str] = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert f"{rest_server}/docs/assets/swagger-ui-bundle.js" in resources, resources
    assert f"{rest_server}/docs/assets/swagger-ui.css" in resources, resources
    assert all(url.startswith(f"{rest_server}/") for url in resources), resources
    _screenshot(browser, tmp_path / "docs.png")

    # Authorize with a bearer token (the field takes the token alone, without "Bearer ").
    browser.find_element(By.CSS_SELECTOR, ".scheme-container button.authorize").click()
    token_field = wait.until(ec.visibility_of_element_located((By.ID, "auth-bearer-value")))
    token_field.send_keys(bearer().removeprefix("Bearer "))
    browser.find_element(By.CSS_SELECTOR, ".modal-ux button.authorize").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, ".modal-ux button.btn-done"))).click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))

    # GET /orders: open it, "Try it out", "Execute".
    block = browser.find_element(By.ID, "operations-Orders-listOrders")
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "button.try-out__btn")).click()
    wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "button.execute")).click()

    def live_status(_: webdriver.Chrome) -> WebElement | Literal[False]:
        cells = block.find_elements(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status")
        return cells[0] if cells and cells[0].text.strip() else False

    status = wait.until(live_status, "the live response of GET /orders")
    assert status.text.strip() == "200", block.text
    body = block.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description").text
    assert '"totalElements"' in body and order_id in body, body
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", status)
    _screenshot(browser, tmp_path / "docs-try-it-out.png")


def test_docs_page_names_only_this_hosts_files(database_url: str, amqp_url: str) -> None:
    """Without a browser: every script and stylesheet of /docs is one this app serves from the pinned package."""
    engine = make_engine(database_url)
    try:
        app = create_app(
            Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url)), engine, tokens=token_service()
        )
        client = app.test_client()
        page = client.get("/docs").get_data(as_text=True)
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert {f"{SWAGGER_UI_URL}swagger-ui-bundle.js", f"{SWAGGER_UI_URL}swagger-ui.css"} <= set(assets), page
        assert all(url.startswith(SWAGGER_UI_URL) for url in assets), assets
        for url in assets:
            response = client.get(url)
            assert response.status_code == 200 and len(response.get_data()) > 1000, url
        assert client.get(f"{SWAGGER_UI_URL}../../openapi.json").status_code == 404  # nothing outside the package
    finally:
        engine.dispose()
