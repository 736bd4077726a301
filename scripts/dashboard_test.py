#!/usr/bin/env python3
"""Drives the meshkv dashboard in headless Chromium through chromedriver's WebDriver
HTTP API, with the Python standard library only (run by scripts/dashboard-test.sh).

Loads the page of one node, waits (bounded) until the cluster map shows every node
seeing every peer alive and the digests agree, writes a key through the page's form,
waits for that change in the page's live change stream, and saves a screenshot.

With MESHKV_TOKEN set (client tokens on), it first types that token into the page's
token field: every call of the page must then carry it.

Usage: dashboard_test.py DRIVER_URL PAGE_URL NODES KEY VALUE SCREENSHOT
Exit status: 0 every check passed, 1 a check failed (the reason on stderr).
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

TIMEOUT_S = 30


class Failed(Exception):
    pass


class WebDriver:
    """The few WebDriver commands this test needs (W3C protocol, JSON over HTTP)."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.session = None

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as error:
            raise Failed(f"WebDriver {method} {path}: {error.read().decode(errors='replace')}")
        return reply.get("value")

    def start(self):
        options = {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1100"],
        }
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = value["sessionId"]

    def stop(self):
        if self.session:
            try:
                self.call("DELETE", f"/session/{self.session}")
            except (Failed, OSError):
                pass

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def element(self, css):
        value = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(value.values()))

    def type(self, css, text):
        element = self.element(css)
        self.s("POST", f"/element/{element}/clear", {})
        self.s("POST", f"/element/{element}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.element(css)}/click", {})

    def screenshot(self, path):
        with open(path, "wb") as out:
            out.write(base64.b64decode(self.s("GET", "/screenshot")))


def wait_for(what, observe, done=bool):
    """Polls observe() until done(observation), for at most TIMEOUT_S; returns the
    observation."""
    deadline = time.monotonic() + TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        last = observe()
        if done(last):
            return last
        time.sleep(0.2)
    raise Failed(f"timed out after {TIMEOUT_S} s waiting for {what}; last seen: {last!r}")


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    driver_url, page, nodes, key, value, screenshot = sys.argv[1:]
    nodes = int(nodes)
    browser = WebDriver(driver_url)
    try:
        browser.start()
        browser.go(page)
        print(f"dashboard_test: loaded {page}")
        token = os.environ.get("MESHKV_TOKEN")
        if token:
            wait_for("the page to report the missing token", lambda: browser.js(
                "return document.getElementById('status').textContent"),
                lambda status: "401" in (status or ""))
            browser.type("#token", token)
            browser.click("#token-form button")
            print("dashboard_test: the page refused without a token; token entered")

        # Every node's row shows every peer alive: nodes * (nodes - 1) cells.
        want = nodes * (nodes - 1)
        states = wait_for(
            f"{want} alive cells in the cluster map",
            lambda: browser.js(
                "return [...document.querySelectorAll('#map td.peer')].map(td => td.dataset.state)"),
            lambda states: len(states) == want and states.count("alive") == want)
        print(f"dashboard_test: cluster map shows {len(states)} peer views, all alive")
        wait_for("the convergence panel to say converged", lambda: browser.js(
            "return document.getElementById('convergence').dataset.converged === 'true'"))
        rows = browser.js("return document.querySelectorAll('#convergence tbody tr').length")
        if rows != nodes:
            raise Failed(f"the convergence panel lists {rows} nodes, not {nodes}")
        print("dashboard_test: convergence panel: all digests equal")

        # A put through the page's form.
        browser.type("#kv-key", key)
        browser.type("#kv-value", value)
        browser.click("#kv-put")
        version = wait_for("the form to report the write", lambda: browser.js(
            "return document.getElementById('kv-result').dataset.version || null"))
        print(f"dashboard_test: the form wrote {key!r}, version {version}")

        # The page's live change stream shows it, as a local write of this node.
        origin = wait_for("the change in the live stream", lambda: browser.js(
            "const li = [...document.querySelectorAll('#changes li')].find(li => li.dataset.key === arguments[0]);"
            "return li ? li.dataset.origin : null", key))
        if origin != "local":
            raise Failed(f"the change stream shows origin {origin!r}, expected 'local'")
        print("dashboard_test: the change stream shows it (origin local)")

        # List the keys so that the screenshot shows the browser too, and let the
        # rates fill in.
        browser.click("#list-go")
        wait_for("the key list", lambda: browser.js(
            "return document.querySelectorAll('#keys tbody tr').length > 0"))
        time.sleep(3)
        browser.screenshot(screenshot)
        print(f"dashboard_test: screenshot saved to {screenshot}")
        return 0
    except Failed as failure:
        print(f"dashboard_test: {failure}", file=sys.stderr)
        try:
            browser.screenshot(screenshot)
            print(f"dashboard_test: screenshot of the failure saved to {screenshot}", file=sys.stderr)
        except (Failed, OSError):
            pass
        return 1
    finally:
        browser.stop()


if __name__ == "__main__":
    sys.exit(main())
