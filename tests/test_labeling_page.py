"""The labeling page in a real headless browser (Debian chromium + chromium-driver, driven by Selenium):
labels round-trip through the server to labels.jsonl and survive a reload."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from PIL import Image

from diffalign.labeling import make_server, read_labels

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def label_folder(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for index, prompt in enumerate(["a red circle", "a blue square"]):
        images = []
        for k, colour in enumerate(["red", "green", "blue"]):
            name = f"images/{index:05d}_{k}.png"
            Image.new("RGB", (16, 16), colour).save(tmp_path / name)
            images.append(name)
        lines.append(json.dumps({"prompt_id": f"{index:05d}", "prompt": prompt, "images": images}))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture
def server(label_folder):
    server = make_server(label_folder, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_binds_locally_and_rejects_bad_labels(server, label_folder):
    import urllib.error
    import urllib.request

    assert server.startswith("http://127.0.0.1:")
    prompts = json.loads(urllib.request.urlopen(f"{server}/api/prompts").read())["prompts"]
    assert [p["prompt_id"] for p in prompts] == ["00000", "00001"] and len(prompts[0]["images"]) == 3
    bad = json.dumps({"annotator": "ana", "prompt_id": "nope", "ranks": [1, 2, 3], "bad": [False] * 3}).encode()
    request = urllib.request.Request(f"{server}/api/labels", data=bad, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 400 and "unknown prompt_id 'nope'" in json.loads(error.value.read())["error"]
    assert urllib.request.urlopen(f"{server}/images/00000_0.png").headers["Content-Type"] == "image/png"
    assert not (label_folder / "labels.jsonl").exists()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt install chromium "
                                                       "chromium-driver)")
def test_labels_round_trip_in_a_headless_browser_and_survive_reload(server, label_folder):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    wait = WebDriverWait(browser, 20)
    try:
        loads = lambda b: int(b.find_element(By.TAG_NAME, "body").get_attribute("data-loads") or 0)  # noqa: E731
        browser.get(server + "/")
        wait.until(lambda b: loads(b) == 1)  # the page rendered the prompts once
        browser.find_element(By.ID, "annotator").send_keys("ana")
        browser.find_element(By.ID, "load").click()
        wait.until(lambda b: loads(b) == 2)  # and again for this annotator
        card = browser.find_element(By.ID, "prompt-00001")
        for select, rank in zip(card.find_elements(By.CSS_SELECTOR, "select.rank"), ["2", "1", ""]):
            Select(select).select_by_value(rank)
        card.find_elements(By.CSS_SELECTOR, "input.bad")[2].click()
        card.find_element(By.CSS_SELECTOR, "button.save").click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#prompt-00001 .status").text == "saved")

        browser.refresh()  # the name comes back from localStorage, the ranks from the server
        wait.until(lambda b: loads(b) == 1)
        card = browser.find_element(By.ID, "prompt-00001")
        assert browser.find_element(By.ID, "annotator").get_attribute("value") == "ana"
        assert [s.get_attribute("value") for s in card.find_elements(By.CSS_SELECTOR, "select.rank")] == ["2", "1", ""]
        assert [b.is_selected() for b in card.find_elements(By.CSS_SELECTOR, "input.bad")] == [False, False, True]
        assert browser.find_element(By.CSS_SELECTOR, "#prompt-00000 .status").text == ""  # not labelled

        first = browser.find_element(By.ID, "prompt-00000")  # an incomplete label is refused with a reason
        first.find_element(By.CSS_SELECTOR, "button.save").click()
        wait.until(lambda b: "not saved" in b.find_element(By.CSS_SELECTOR, "#prompt-00000 .status").text)
    finally:
        browser.quit()
    labels = read_labels(label_folder)
    assert labels == [dict(labels[0], annotator="ana", prompt_id="00001", ranks=[2, 1, None], bad=[False, False, True],
                           scores=[2, 3, -1])]
