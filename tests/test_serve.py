"""python -m mindllm.serve and python -m mindllm.chat against real trained runs: the `openai` client on loopback,
malformed requests, a client that leaves mid-stream, and the terminal chat driven through a pseudo-terminal."""
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from mindllm.config import load_config
from mindllm.data.instruct import prompt_text
from mindllm.serve import running
from mindllm.train import train

from conftest import TINY, train_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, small_corpus):
    """A tiny character GPT on Shakespeare (block 16): a base model that continues text."""
    return train_tiny(small_corpus, tmp_path_factory.mktemp("serve") / "base", "train.max_iters=30", "train.lr=0.01")


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory, small_corpus):
    """A tiny BPE GPT instruction-tuned (every weight) on the chatterbot records: answers in its template."""
    root = tmp_path_factory.mktemp("serve_instruct")
    pre = load_config(None, TINY + [f"data.corpus={small_corpus}", f"out_dir={root / 'pre'}", "data.tokenizer=bpe",
                                    "data.vocab_size=300", "model.block_size=96", "train.max_iters=5"])
    train(pre, log=lambda *a: None)
    cfg = load_config(os.path.join(ROOT, "configs/instruct_lora_gpt_bpe.yaml"), [
        f"instruct.init={pre.out_dir}", f"out_dir={root / 'chat'}", "peft.method=none", "train.lr=0.02",
        "train.warmup_iters=0", "train.max_iters=40", "train.batch_size=8", "train.eval_iters=1",
        "train.eval_interval=40", "instruct.test_examples=1", "train.progress=false"])
    train(cfg, log=lambda *a: None)
    return str(root / "chat")


@pytest.fixture(scope="module")
def server(base_run):
    with running(base_run, "--max-tokens-limit", "200") as served:
        yield served.url


def client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def sample_cli(run, prompt, n):
    """python -m mindllm.sample's greedy continuation (it prints the prompt, then the new text)."""
    p = subprocess.run([sys.executable, "-m", "mindllm.sample", "--ckpt", run, "--prompt", prompt,
                        "--temperature", "0", "--max-new-tokens", str(n)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(prompt)
    return p.stdout[len(prompt):-1]  # the trailing newline is print's


def test_openai_client_streamed_equals_unstreamed_equals_sample(server, base_run):
    c, prompt = client(server), "ROMEO:\nWhat"
    done = c.completions.create(model="base", prompt=prompt, max_tokens=40, temperature=0)
    streamed = c.completions.create(model="base", prompt=prompt, max_tokens=40, temperature=0, stream=True)
    pieces = [chunk.choices[0].text for chunk in streamed]
    assert len([p for p in pieces if p]) >= 20  # really streamed: a piece per character, not one block
    assert "".join(pieces) == done.choices[0].text == sample_cli(base_run, prompt, 40)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 40
    assert done.usage.prompt_tokens == len(prompt)  # a character model: one token per character
    # chat on a base model: the conversation is one running text, continued
    chat = c.chat.completions.create(model="base", messages=[{"role": "user", "content": prompt}], max_tokens=40,
                                     temperature=0)
    assert chat.choices[0].message.content == done.choices[0].text
    chunks = list(c.chat.completions.create(model="base", messages=[{"role": "user", "content": prompt}],
                                            max_tokens=40, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == done.choices[0].text


def test_sampling_follows_the_seed(server):
    c = client(server)

    def draw(seed):
        return c.completions.create(model="base", prompt="KING", max_tokens=30, temperature=1.0, seed=seed)\
            .choices[0].text

    assert draw(1) == draw(1) and len({draw(s) for s in range(4)}) > 1


def error(response):
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return response.status_code, body["error"]


def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(server):
    chat = f"{server}/v1/chat/completions"
    ok = {"model": "base", "messages": [{"role": "user", "content": "ROMEO:"}], "max_tokens": 3}
    status, err = error(httpx.post(chat, content=b"{not json"))
    assert status == 400 and "not valid JSON" in err["message"]
    status, err = error(httpx.post(chat, json={**ok, "model": "gpt-4"}))
    assert status == 404 and err["code"] == "model_not_found" and "'base'" in err["message"]
    status, err = error(httpx.post(chat, json={**ok, "max_tokens": -5}))
    assert status == 400 and err["param"] == "max_tokens"
    status, err = error(httpx.post(chat, json={**ok, "max_tokens": 201}))  # over --max-tokens-limit
    assert status == 400 and "200" in err["message"]
    status, err = error(httpx.post(chat, json={**ok, "messages": [{"role": "user", "content": "ROMEO " * 10}]}))
    assert status == 400 and err["code"] == "context_length_exceeded" and "16" in err["message"]
    status, err = error(httpx.post(f"{server}/v1/completions", json={"model": "base", "prompt": "x" * 17}))
    assert status == 400 and err["code"] == "context_length_exceeded"
    status, err = error(httpx.post(chat, json={**ok, "messages": [{"role": "robot", "content": "hi"}]}))
    assert status == 400 and "messages[0]" in err["message"]
    status, err = error(httpx.post(chat, json={**ok, "temperature": "hot"}))
    assert status == 400 and err["param"] == "temperature"
    status, err = error(httpx.post(chat, json={**ok, "messages": [{"role": "user", "content": "你好"}]}))
    assert status == 400 and "never saw" in err["message"]  # the character vocabulary has no Chinese
    r = httpx.post(chat, json=ok)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_client_that_leaves_mid_stream_frees_the_worker(server):
    before = httpx.get(f"{server}/stats").json()
    body = {"model": "base", "prompt": "ROMEO:", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few pieces, then hang up
    assert all(line.startswith("data: ") or not line for line in got)
    r = httpx.post(f"{server}/v1/completions", json={"model": "base", "prompt": "KING", "max_tokens": 5}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    after = httpx.get(f"{server}/stats").json()
    assert after["cancelled"] == before["cancelled"] + 1 and after["waiting"] == 0
    # the abandoned request stopped early: far fewer than its 200 tokens were decoded
    assert after["completion_tokens"] - before["completion_tokens"] < 200


def test_an_instruction_tuned_run_answers_in_its_template(instruct_run):
    from mindllm import runs
    from mindllm.sample import complete

    model, tok, _ = runs.load_model(instruct_run)
    question = "What is AI?"
    reference = complete(model, tok, prompt_text({"instruction": question, "input": ""}), 40, temperature=0.0,
                         notice=lambda *a: None)[0].split("<|endoftext|>")[0]
    with running(instruct_run) as served:
        c = client(served.url)
        reply = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": question}],
                                          max_tokens=40, temperature=0)
        first = reply.choices[0].message.content
        assert first == reference
        assert reply.usage.prompt_tokens == len(tok.encode(prompt_text({"instruction": question, "input": ""})))
        # a second turn: the first question and answer stay in the prompt, in the template
        turn2 = [{"role": "user", "content": question}, {"role": "assistant", "content": "Yes."},
                 {"role": "user", "content": "Why?"}]
        reply2 = c.chat.completions.create(model="chat", messages=turn2, max_tokens=10, temperature=0)
        second = prompt_text({"instruction": "Why?", "input": ""})
        want = prompt_text({"instruction": question, "input": ""}) + "Yes.<|endoftext|>" + second
        assert reply2.usage.prompt_tokens == len(tok.encode(want)) <= 96
        # Chinese in and out: byte-level tokens, each character sent whole, the same answer as the engine's
        zh = "你好，你是谁？"
        want_zh = complete(model, tok, prompt_text({"instruction": zh, "input": ""}), 20, temperature=0.0,
                           notice=lambda *a: None)[0].split("<|endoftext|>")[0]
        streamed = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": zh}],
                                             max_tokens=20, temperature=0, stream=True)
        pieces = [ch.choices[0].delta.content or "" for ch in streamed]
        assert "".join(pieces) == want_zh and not any("\ufffd" in p for p in pieces)
        # a history longer than the context window: the oldest turns no longer reach the model
        turn2[1]["content"] = "Yes. " * 60
        reply3 = c.chat.completions.create(model="chat", messages=turn2, max_tokens=10, temperature=0)
        assert reply3.usage.prompt_tokens == len(tok.encode(second))


def test_serve_command_line_errors(base_run, tmp_path):
    def run(*args):
        p = subprocess.run([sys.executable, "-m", "mindllm.serve", *args], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        return p.returncode, p.stderr.strip()

    code, err = run(str(tmp_path / "nope"))
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and "not found" in err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, err = run(base_run, "--port", str(busy.getsockname()[1]))
    assert code == 2 and "choose another --port" in err and len(err.splitlines()) == 1


def test_terminal_chat_through_a_pseudo_terminal(base_run):
    import pexpect

    want = sample_cli(base_run, "ROMEO:", 12)
    chat = pexpect.spawn(sys.executable, ["-m", "mindllm.chat", base_run, "--temperature", "0", "--max-tokens", "12"],
                         cwd=ROOT, encoding="utf-8", timeout=120, env={**os.environ, "GLOG_v": "3"})
    try:
        chat.expect("you> ")
        assert "a base model" in chat.before
        chat.sendline("ROMEO:")
        chat.expect("you> ")
        answer = chat.before.replace("\r\n", "\n").split("base> ", 1)[1]
        assert answer == want + "\n"
        chat.sendline("/temperature 0.5")
        chat.expect(re.escape("(temperature 0.5)"))
        chat.sendline("/reset")
        chat.expect(re.escape("(conversation cleared)"))
        chat.sendline("你好")  # not in the character vocabulary: one line, and the chat goes on
        chat.expect("cannot answer that: .*never saw")
        chat.expect("you> ")
        chat.sendline("/exit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0


def test_models_endpoint_and_page(server):
    models = httpx.get(f"{server}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["base"]
    page = httpx.get(f"{server}/").text
    assert 'const MODEL = "base"' in page and "http" not in page.split("<script>")[1]  # no CDN, no remote script
    font = httpx.get(f"{server}/font.otf")
    assert font.status_code == 200 and font.content[:4] == b"OTTO"
    assert json.loads(httpx.get(f"{server}/stats").text)["waiting"] == 0


def test_a_full_queue_answers_429_and_recovers(base_run):
    """--max-waiting 1: while one request decodes, the next is refused with HTTP 429, not queued without bound."""
    with running(base_run, "--max-waiting", "1", "--max-tokens-limit", "5000") as served:
        body = {"model": "base", "prompt": "ROMEO:", "max_tokens": 5000, "stream": True}  # seconds of decoding
        with httpx.stream("POST", f"{served.url}/v1/completions", json=body) as r:
            lines = r.iter_lines()  # kept: a discarded iterator closes the connection (a client that left)
            next(lines)  # decoding has started
            status, err = error(httpx.post(f"{served.url}/v1/completions", json={**body, "stream": False}))
        assert status == 429 and err["code"] == "server_busy"
        # the first client has left: the server notices at its next piece and cancels, then takes requests again
        deadline = time.monotonic() + 60
        while True:
            r = httpx.post(f"{served.url}/v1/completions", json={**body, "max_tokens": 3, "stream": False}, timeout=60)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_draft_model_leaves_the_answers_unchanged(server, base_run, tmp_path_factory, small_corpus):
    """--draft: speculative decoding with a smaller run of the same tokenizer; at temperature 0 every answer is the
    one the model gives alone."""
    out = train_tiny(small_corpus, tmp_path_factory.mktemp("serve_draft") / "draft", "train.max_iters=10",
                     "model.n_layer=1", "model.n_embd=16")
    body = {"model": "base", "max_tokens": 30, "temperature": 0}
    with running(base_run, "--draft", str(out), "--speculative-k", "3") as spec:
        for prompt in ("ROMEO:", "KING"):
            alone = httpx.post(f"{server}/v1/completions", json={**body, "prompt": prompt}).json()
            drafted = httpx.post(f"{spec.url}/v1/completions", json={**body, "prompt": prompt}, timeout=60).json()
            assert drafted["choices"][0]["text"] == alone["choices"][0]["text"]
