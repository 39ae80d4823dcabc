"""Headless Chromium driven over the DevTools protocol: type into the chat page of `python -m mindllm.serve` like a
person does and watch the answer stream in.

    from mindllm.browser import chat_in_browser
    seen = chat_in_browser("http://127.0.0.1:8000/", "ROMEO: hello", screenshot="chat.png")
    seen["texts"]   # the assistant bubble's text each time it changed: the stream, as the page showed it
"""
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from .errors import UserError

# Headless Chromium that never calls home (on a closed network that makes it hang or misbehave); --no-sandbox
# lets it run as root. slides.py prints decks with the same flags.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")

# What the page shows, read in one evaluation (a fresh page holds one turn): the user bubble, the answer bubble
# (class "error" when the request failed), and the meta line the page fills in once the answer is complete.
READ_PAGE = """(() => {
  const text = (sel) => { const e = document.querySelector("#log " + sel); return e && e.textContent; };
  return {user: text(".msg.user"), answer: text(".msg.assistant, #log .msg.error"), meta: text(".meta") || "",
          error: !!document.querySelector("#log .msg.error")};
})()"""

# Records, inside the page, each distinct text of the answer bubble and when it appeared (s after the call): a
# MutationObserver sees every render, where polling from outside missed states on a busy machine.
WATCH_ANSWER = """(() => {
  const seen = window.__answers = [], t0 = performance.now();
  const grab = () => {
    const e = document.querySelector("#log .msg.assistant, #log .msg.error"), s = e && e.textContent;
    if (s && (!seen.length || seen[seen.length - 1][0] !== s)) seen.push([s, (performance.now() - t0) / 1000]);
  };
  new MutationObserver(grab).observe(document.getElementById("log"),
                                     {subtree: true, childList: true, characterData: true});
  return true;
})()"""


def find_chromium(why: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        raise UserError(f"Chromium not found: apt-get install chromium ({why})")
    return exe


class DevTools:
    """One page of a browser, over the browser's WebSocket ("flattened" sessions: commands name the page)."""

    def __init__(self, ws_url: str, timeout: float):
        import websocket  # websocket-client: only this driver needs it

        self.failed = (websocket.WebSocketException, OSError)
        # No Origin header: Chromium refuses WebSocket clients from other origins unless told which to allow.
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id, self.session = 0, None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        try:
            self.ws.send(json.dumps(message))
            reply = {}
            while reply.get("id") != self.next_id:  # skip events: they carry no id
                reply = json.loads(self.ws.recv())
        except self.failed as e:
            raise UserError(f"Chromium did not answer {method}: {e or type(e).__name__}") from None
        if "error" in reply:
            raise UserError(f"Chromium refused {method}: {reply['error'].get('message')}")
        return reply["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def chat_in_browser(url: str, message: str, screenshot: str | None = None, timeout: float = 60,
                    inputs: dict | None = None, size: tuple[int, int] = (1280, 720)) -> dict:
    """Open the chat page at `url` in a window of `size` pixels, fill its `inputs` by id (e.g. {"max_tokens": 200,
    "temperature": 0.8}), type `message`, press Enter and record the answer as it streams in.
    Returns {"texts": each distinct text of the answer bubble in order, "times": when each was first seen (s after
    Enter), "answer": the final text, "meta": the page's timing line, "user": the user bubble, "error": True when the
    page showed an error bubble}."""
    exe = find_chromium("it drives the chat page")
    profile = tempfile.mkdtemp(prefix="mindllm-chromium-")
    deadline = time.monotonic() + timeout
    proc = page = None
    try:
        with open(os.path.join(profile, "stderr.txt"), "wb") as err:  # a file: a pipe nobody reads can fill up
            # its own process group: the renderer and helper processes it starts go with it in `finally`
            proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                     "about:blank"], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        port_file = os.path.join(profile, "DevToolsActivePort")  # "port\n/devtools/browser/<id>", once listening
        while len(read(port_file).split()) != 2:
            if proc.poll() is not None:
                lines = read(os.path.join(profile, "stderr.txt")).strip().splitlines()
                raise UserError(f"Chromium exited at start ({proc.returncode}): {(lines or ['no message'])[-1]}")
            wait(deadline, timeout, "start")
        port, path = read(port_file).split()
        page = DevTools(f"ws://127.0.0.1:{port}{path}", timeout)
        page.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)
        page.send("Page.navigate", url=url)
        while not page.evaluate('document.readyState === "complete" && !!document.getElementById("input")'):
            wait(deadline, timeout, f"load {url}")
        for key, value in (inputs or {}).items():
            if not page.evaluate(f"(e => !!e && (e.value = {json.dumps(str(value))}, true))"
                                 f"(document.getElementById({json.dumps(key)}))"):
                raise UserError(f"the page at {url} has no input '{key}'")
        page.evaluate('document.getElementById("input").focus()')
        page.send("Input.insertText", text=message)  # what typing (or an input method, for Chinese) delivers
        page.evaluate(WATCH_ANSWER)
        for kind in ("keyDown", "keyUp"):
            page.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        while True:
            seen = page.evaluate(READ_PAGE)
            if seen["meta"] or seen["error"]:  # the page fills the meta line once the answer is complete
                break
            wait(deadline, timeout, f"answer (so far: {(seen['answer'] or '')[-40:]!r})")
        recorded = page.evaluate("window.__answers")  # from the first non-empty text
        texts, times = [text for text, _ in recorded], [round(t, 3) for _, t in recorded]
        if screenshot:  # once web fonts have loaded: until then Chromium draws their text invisible
            while page.evaluate('document.fonts.status') != "loaded":
                wait(deadline, timeout, "load its fonts")
            png = page.send("Page.captureScreenshot", format="png")["data"]
            with open(screenshot, "wb") as fh:
                fh.write(base64.b64decode(png))
        return {"texts": texts, "times": times, "answer": seen["answer"] or "", "meta": seen["meta"],
                "user": seen["user"], "error": seen["error"]}
    finally:
        if page is not None:
            page.ws.close()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def wait(deadline: float, timeout: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise UserError(f"timed out after {timeout:g} s waiting for the page to {what}")
    time.sleep(0.05)
