"""The playground page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium; no
browser download): a message gets a streamed reply, and the side-by-side view shows different replies for
the base model and the steered one."""

from __future__ import annotations

import os

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a driver or a browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=1200,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def last_reply(driver, pane: str, timeout: float = 30.0):
    """The newest assistant message of pane ``pane`` once its stream has ended."""
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#pane-{pane} .msg.assistant[data-done='true'], "
                                                          f"#pane-{pane} .msg.error[data-done='true']"))
    return driver.find_elements(By.CSS_SELECTOR, f"#pane-{pane} .msg[data-done='true']")[-1]


def set_value(driver, element_id: str, value: str):
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def send(driver, text: str):
    set_value(driver, "message", text)
    driver.find_element(By.ID, "send").click()


def test_chat_streams_a_reply(browser, server, client):
    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text == "ready")
    assert browser.find_element(By.ID, "model").text == "world"
    set_value(browser, "temperature", "0")
    set_value(browser, "max_tokens", "24")
    send(browser, "Where is Velmora?")
    reply = last_reply(browser, "a")
    assert "error" not in reply.get_attribute("class"), reply.text
    want = client.chat.completions.create(model="world", messages=[{"role": "user", "content": "Where is Velmora?"}],
                                          max_tokens=24, temperature=0, top_p=1).choices[0].message.content
    assert reply.text.strip() == want.strip() and want.strip()  # the page shows what the API answers
    assert int(reply.get_attribute("data-chunks")) > 1  # it arrived in pieces: streamed


def test_side_by_side_base_vs_steered(browser, server):
    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text == "ready")
    set_value(browser, "temperature", "0")
    set_value(browser, "max_tokens", "24")
    browser.find_element(By.ID, "compare").click()
    assert browser.find_element(By.ID, "pane-b").is_displayed()
    Select(browser.find_element(By.CSS_SELECTOR, "#pane-b .steer")).select_by_visible_text("happy")
    assert browser.find_element(By.CSS_SELECTOR, "#pane-b .coeff").get_attribute("value") == "6"
    send(browser, "Tell me about Kamsa.")
    a, b = last_reply(browser, "a"), last_reply(browser, "b")
    assert "error" not in a.get_attribute("class") and "error" not in b.get_attribute("class"), (a.text, b.text)
    assert a.text and b.text and a.text != b.text


def test_side_by_side_guide_and_kv_policy(browser, server, client):
    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text == "ready")
    set_value(browser, "temperature", "0")
    set_value(browser, "max_tokens", "24")
    browser.find_element(By.ID, "compare").click()
    Select(browser.find_element(By.CSS_SELECTOR, "#pane-b .guide")).select_by_visible_text("polite")
    Select(browser.find_element(By.CSS_SELECTOR, "#pane-b .kv")).select_by_visible_text("win")
    send(browser, "Where is Velmora?")
    a, b = last_reply(browser, "a"), last_reply(browser, "b")
    assert "error" not in b.get_attribute("class"), b.text
    messages = [{"role": "user", "content": "Where is Velmora?"}]
    want = client.chat.completions.create(model="world", messages=messages, max_tokens=24, temperature=0, top_p=1,
                                          extra_body={"guide": "polite", "kv_policy": "win"}).choices[0].message.content
    assert b.text.strip() == want.strip() and a.text != b.text
