"""The drawing page in headless Chromium: draw a digit with the mouse and by touch.

Needs Debian's ``chromium`` and ``chromium-driver`` (``selenium`` is a dev
dependency); skipped when they are missing, except in CI, where that fails.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.request

import pytest

from tests.conftest import missing_prerequisite
from tests.serving.helpers import operator_registry, serving_environ

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    missing_prerequisite("chromium and chromium-driver are not installed", module=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from tests.serving.test_serving_cli import (  # noqa: E402
    clean_env,
    free_port,
    request,
    start_serve,
    stop_serve,
    wait_for,
)


@pytest.fixture(scope="module")
def base_url(production, s3_server, tmp_path_factory):
    """The real server (``digits serve``: granian, the front, the serving identity) on the
    bucket the served app reads, so the page meets every header and limit users meet."""
    bucket = production[0].bucket
    port = free_port()
    env = clean_env(**serving_environ(s3_server, bucket))
    process = start_serve(port, env, tmp_path_factory.mktemp("browser") / "serve.log")
    try:
        wait_for(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, 60, "ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serve(process)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=900,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def canvas_png(driver) -> bytes:
    url = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def server_prediction(base_url: str, png: bytes) -> dict:
    request = urllib.request.Request(f"{base_url}/predict", data=png,
                                     headers={"Content-Type": "image/png"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def draw_a_one(driver) -> None:
    """A slightly slanted vertical stroke with the mouse: a "1"."""
    actions = ActionChains(driver)
    actions.move_to_element_with_offset(driver.find_element(By.ID, "pad"), 5, -95)
    actions.click_and_hold()
    for _step in range(1, 20):
        actions.move_by_offset(-1, 10)
    actions.release().perform()


def wait_for_prediction(driver, count: int) -> None:
    WebDriverWait(driver, 15).until(
        lambda d: d.execute_script("return document.body.dataset.predictions") == str(count))


def shown(driver) -> tuple[str, str, list[str]]:
    label = driver.find_element(By.ID, "label").text
    version = driver.find_element(By.ID, "version").text
    bars = [li.find_element(By.CLASS_NAME, "pct").text
            for li in driver.find_elements(By.CSS_SELECTOR, "#bars li")]
    return label, version, bars


def test_draw_a_one_with_the_mouse(browser, base_url, served):
    _, _, version, _ = served
    browser.get(base_url + "/")
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "version").text == version)
    draw_a_one(browser)
    wait_for_prediction(browser, 1)

    label, shown_version, bars = shown(browser)
    assert label == "1", bars  # the easiest digit: even the 600-digit test model gets it
    assert shown_version == version
    assert len(bars) == 10 and all(bar.endswith("%") for bar in bars)
    expected = server_prediction(base_url, canvas_png(browser))
    assert label == str(expected["predictions"][0]["label"])
    assert expected["model_version"] == version

    browser.find_element(By.ID, "clear").click()
    assert shown(browser)[0] == ""


def test_draw_a_seven_by_touch(browser, base_url, served):
    _, _, version, _ = served
    browser.get(base_url + "/")
    rect = browser.execute_script(
        "const r = document.getElementById('pad').getBoundingClientRect();"
        "return [r.left, r.top];")
    left, top = rect
    points = [(70 + 7 * i, 70) for i in range(21)] + [(210 - 4 * i, 70 + 8 * i) for i in range(21)]

    def touch(kind: str, x: float, y: float) -> None:
        browser.execute_cdp_cmd("Input.dispatchTouchEvent", {
            "type": kind,
            "touchPoints": [] if kind == "touchEnd" else [{"x": left + x, "y": top + y}]})

    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    touch("touchStart", *points[0])
    for point in points[1:]:
        touch("touchMove", *point)
    touch("touchEnd", *points[-1])
    wait_for_prediction(browser, 1)

    label, shown_version, _ = shown(browser)
    assert shown_version == version
    expected = server_prediction(base_url, canvas_png(browser))
    assert label == str(expected["predictions"][0]["label"])


def test_correct_me_and_confirm_send_feedback(browser, base_url, served, s3_server):
    from components.feedback import load_feedback
    from serving.imaging import image_to_mnist

    app, _, version, _ = served
    registry = operator_registry(s3_server, app.extensions["digits"].settings.bucket)
    before = len(load_feedback(registry))
    browser.get(base_url + "/")
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "version").text == version)
    assert not browser.find_element(By.ID, "feedback").is_displayed()  # nothing to judge yet
    draw_a_one(browser)
    wait_for_prediction(browser, 1)
    predicted = int(shown(browser)[0])
    drawing = canvas_png(browser)

    browser.find_element(By.CSS_SELECTOR, '#digits button[data-digit="7"]').click()
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.body.dataset.feedback"))
    assert browser.find_element(By.ID, "thanks").text == "Thanks: saved as a 7."
    corrected = load_feedback(registry)[before:]
    assert [(item.label, item.predicted, item.source, item.model_version)
            for item in corrected] == [(7, predicted, "page", version)]
    assert (corrected[0].image == image_to_mnist(drawing)).all()

    browser.find_element(By.ID, "clear").click()
    assert not browser.find_element(By.ID, "feedback").is_displayed()
    draw_a_one(browser)
    wait_for_prediction(browser, 2)
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, 10).until(lambda d: len(load_feedback(registry)) == before + 2)
    confirmed = load_feedback(registry)[-1]
    assert confirmed.label == confirmed.predicted == int(shown(browser)[0])


HOSTILE_PAGE = """<!doctype html>
<html><body>
<form id="form" method="post" action="{target}/feedback" enctype="multipart/form-data">
  <input name="label" value="3"><input name="image" type="file">
</form>
<script>
  var body = JSON.stringify({{pixels: new Array(784).fill(0), label: 3}});
  var tries = [
    // Cross-origin JSON with the page's header: needs a preflight, which is never granted.
    fetch("{target}/feedback", {{method: "POST", body: body,
      headers: {{"Content-Type": "application/json", "X-Digits-Client": "page"}}}}),
    // What needs no preflight: refused by its Content-Type.
    fetch("{target}/feedback", {{method: "POST", mode: "no-cors", body: body,
      headers: {{"Content-Type": "text/plain"}}}}),
    fetch("{target}/feedback", {{method: "POST", mode: "no-cors", body: "label=3",
      headers: {{"Content-Type": "application/x-www-form-urlencoded"}}}})
  ];
  Promise.allSettled(tries).then(function (results) {{
    document.body.dataset.fetches = results.map(function (r) {{ return r.status; }}).join(",");
  }});
</script>
</body></html>"""


def test_another_sites_page_cannot_post_feedback(browser, base_url, served, s3_server):
    """A page on another origin tries every way a browser offers; nothing is stored."""
    from components.feedback import load_feedback

    app = served[0]
    registry = operator_registry(s3_server, app.extensions["digits"].settings.bucket)
    before = len(load_feedback(registry))
    page = HOSTILE_PAGE.format(target=base_url).encode()

    def hostile(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html")])
        return [page]

    other = make_server("127.0.0.1", 0, hostile)  # another port: another origin
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{other.server_port}/")
        WebDriverWait(browser, 15).until(
            lambda d: d.execute_script("return document.body.dataset.fetches"))
        outcomes = browser.execute_script("return document.body.dataset.fetches").split(",")
        assert outcomes[0] == "rejected"  # the preflight failed: the POST was never sent
        browser.execute_script("document.getElementById('form').submit()")
        WebDriverWait(browser, 15).until(lambda d: d.current_url == f"{base_url}/feedback")
        assert "application/json" in browser.find_element(By.TAG_NAME, "body").text  # the 415
    finally:
        other.shutdown()
    assert len(load_feedback(registry)) == before
