"""The chat page of `python -m mindllm.serve` in a real browser: headless Chromium types a message, presses Enter
and watches the answer stream into the page, token by token, exactly as the API answers it."""
import json
import os
import urllib.request
from itertools import pairwise

import pytest

from mindllm.browser import chat_in_browser
from mindllm.serve import running
from mindllm.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (.ci/run installs it)")
MESSAGE = "ROMEO: 你好, sir"  # Chinese and English (14 tokens: the context is 16): UTF-8 all the way
MAX_TOKENS = 500  # near the server's limit (512): a tiny GPT decodes a token in ~1 ms, so give it many


def call(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tiny_cfg, small_corpus, tmp_path):
    """A tiny char GPT trained for 3 steps on Shakespeare plus a little Chinese, served on a free loopback port."""
    corpus = tmp_path / "corpus.txt"
    with open(small_corpus, encoding="utf-8") as fh:
        corpus.write_text(fh.read()[:100_000] + "\n你好，朋友。你好吗？我很好。\n" * 20, encoding="utf-8")
    cfg = tiny_cfg("train.max_iters=3", f"data.corpus={corpus}")
    train(cfg, log=lambda *_: None)
    with running(cfg.out_dir) as served:
        yield served.url, served.model


@needs_chromium
@pytest.mark.slow
def test_chat_page_streams_the_answer_the_api_gives(server, tmp_path):
    url, model = server
    png = tmp_path / "chat.png"
    seen = chat_in_browser(url + "/", MESSAGE, screenshot=str(png), inputs={"max_tokens": MAX_TOKENS})
    assert seen["user"] == MESSAGE and not seen["error"], seen
    # streaming happened in the page: the bubble showed part of the answer before all of it, each text a prefix of
    # the next (how many renders the page gets depends on how the pieces arrive: at ~1 ms a token, in few reads)
    texts = seen["texts"]
    assert len(texts) >= 2, seen
    assert all(b.startswith(a) and len(b) > len(a) for a, b in pairwise(texts)), texts
    # the page's default temperature is 0: greedy, the same answer the non-streaming API gives
    reply = call(url + "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": MESSAGE}],
                                                "temperature": 0, "max_tokens": MAX_TOKENS})
    assert seen["answer"] == texts[-1] == reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] == MAX_TOKENS  # a base model stops only at max_tokens
    assert f"{MAX_TOKENS} pieces in" in seen["meta"] and seen["meta"].endswith("finish: length"), seen["meta"]
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a character the tokenizer never saw: one error line in the page, no timing line, and the server keeps serving
    seen = chat_in_browser(url + "/", "ROMEO: 😀 hello")
    assert seen["error"] and seen["user"] == "ROMEO: 😀 hello", seen
    assert seen["answer"].startswith("error: ") and "\n" not in seen["answer"] and "😀" in seen["answer"], seen
    assert seen["meta"] == ""


