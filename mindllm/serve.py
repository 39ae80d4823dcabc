"""Serve a trained run over HTTP the way production LLM servers do: OpenAI's API, streamed, plus a chat page.

    python -m mindllm.serve runs/week11/chat --port 8000
    # then open http://127.0.0.1:8000/ , or from Python:
    #   OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(model="chat", ...)

Endpoints: POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with "stream": true),
GET /v1/models, GET / (the chat page; no CDN, works offline), GET /stats (requests finished, cancelled, waiting).
Requests are decoded one at a time, first come first served: a single worker thread owns the compiled decoder and
its KV cache, so concurrent clients queue and never share a cache. A client that disconnects cancels its request
(queued or decoding) and frees the worker.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Event

from . import device
from .engine import Engine, PromptTooLong
from .errors import ArgumentParser, UserError, cli
from .fonts import cjk_font

PAGE = os.path.join(os.path.dirname(__file__), "static", "chat.html")


class BadRequest(Exception):
    """An error the client can fix: HTTP status + OpenAI's error object."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def response(self):
        from starlette.responses import JSONResponse

        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}},
                            status_code=self.status)


@dataclass
class Job:
    """One request's decoding: prompt ids and rules in, (kind, value) items out."""
    ids: list[int]
    max_tokens: int
    rules: dict
    cancel: Event = field(default_factory=Event)


def number(body: dict, key: str, default, lo: float, hi: float, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise BadRequest(f"'{key}' must be a{'n integer' if kind is int else ' number'}", param=key)
    if not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be between {lo:g} and {hi:g}; got {value}", param=key)
    return kind(value)


def stop_strings(body: dict) -> tuple[str, ...]:
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of up to 4 strings", param="stop")
    return tuple(stop)


class Server:
    """The engine behind a queue, and the OpenAI-shaped requests and responses around it."""

    def __init__(self, engine: Engine, max_tokens_limit: int = 512, max_waiting: int = 64):
        self.engine, self.max_tokens_limit, self.max_waiting = engine, max_tokens_limit, max_waiting
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mindllm-decode")  # FIFO, one at a time
        # GET /stats: what the worker did (requests waiting = submitted - finished)
        self.stats = dict(submitted=0, finished=0, cancelled=0, completion_tokens=0)

    # --- parsing -------------------------------------------------------------------------------------------------
    async def body(self, request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if body.get("model") != self.engine.name:
            raise BadRequest(f"the model '{body.get('model')}' does not exist; this server has '{self.engine.name}'",
                             status=404, code="model_not_found", param="model")
        if number(body, "n", 1, 1, 1, int) != 1:
            raise BadRequest("'n' must be 1", param="n")
        return body

    def job(self, body: dict, ids: list[int]) -> Job:
        if self.stats["submitted"] - self.stats["finished"] >= self.max_waiting:
            raise BadRequest(f"the server is busy: {self.max_waiting} requests are waiting; retry later",
                             status=429, code="server_busy")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = number({"max_tokens": max_tokens}, "max_tokens", 128, 1, self.max_tokens_limit, int)
        rules = dict(temperature=number(body, "temperature", 1.0, 0, 2), top_p=number(body, "top_p", 1.0, 1e-9, 1),
                     seed=number(body, "seed", None, 0, 2 ** 63 - 1, int), stop=stop_strings(body))
        return Job(ids=ids, max_tokens=max_tokens, rules=rules)

    def prompt_ids(self, messages=None, prompt=None) -> list[int]:
        try:
            if messages is not None:
                return self.engine.prompt(messages)[0]
            if not isinstance(prompt, str) or not prompt:
                raise BadRequest("'prompt' must be a non-empty string", param="prompt")
            return self.engine.fit(self.engine.encode(prompt))
        except PromptTooLong as e:
            raise BadRequest(str(e), code="context_length_exceeded", param="messages" if messages else "prompt")
        except UserError as e:
            raise BadRequest(str(e), param="messages" if messages is not None else "prompt") from None

    # --- decoding ------------------------------------------------------------------------------------------------
    def run(self, job: Job, emit) -> None:
        """In the worker thread: stream the answer into `emit`; a request cancelled while queued costs nothing."""
        try:
            if job.cancel.is_set():
                self.stats["cancelled"] += 1
                return emit(("done", "cancelled", 0))
            for piece in self.engine.stream(job.ids, job.max_tokens, cancel=job.cancel, **job.rules):
                emit(("delta", piece))
            # the engine's finish_reason and token count are this job's: this thread is its only user
            self.stats["completion_tokens"] += self.engine.completion_tokens
            self.stats["cancelled"] += self.engine.finish_reason == "cancelled"
            emit(("done", self.engine.finish_reason, self.engine.completion_tokens))
        except Exception as e:  # noqa: BLE001 - reported to the client as a 500, the server keeps serving
            emit(("error", f"{type(e).__name__}: {e}"))
        finally:
            self.stats["finished"] += 1

    async def pieces(self, job: Job):
        """The job's items as they come: ("delta", text)..., then ("done", finish_reason, tokens) or ("error", msg).
        Leaving early (a disconnected client) cancels the job."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self.stats["submitted"] += 1
        loop.run_in_executor(self.worker, self.run, job, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        try:
            while True:
                item = await queue.get()
                yield item
                if item[0] != "delta":
                    return
        finally:
            job.cancel.set()

    def warm_up(self) -> None:
        """Compile the decoder's two graphs before the first client waits for them."""
        list(self.engine.stream(self.engine.encode(self.engine.render([{"role": "user", "content": "Hi"}])), 2))


# --- OpenAI's response shapes ------------------------------------------------------------------------------------
def chat_chunk(rid, model, delta, finish=None):
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def text_chunk(rid, model, text, finish=None):
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def respond(server: Server, job: Job, chat: bool, stream: bool):
    from starlette.responses import JSONResponse, StreamingResponse

    rid, model = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", server.engine.name
    if stream:
        return StreamingResponse(events(server, job, chat, rid), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, finish, n = "", "length", 0
    async for item in server.pieces(job):
        if item[0] == "error":
            raise BadRequest(item[1], status=500)
        if item[0] == "delta":
            text += item[1]
        else:
            finish, n = item[1], item[2]
    if chat:
        body = chat_chunk(rid, model, None, finish)
        body["object"] = "chat.completion"
        body["choices"][0].pop("delta")
        body["choices"][0]["message"] = {"role": "assistant", "content": text}
    else:
        body = text_chunk(rid, model, text, finish)
    return JSONResponse({**body, "usage": usage(len(job.ids), n)})


async def events(server: Server, job: Job, chat: bool, rid: str):
    """Server-sent events: one `data: {chunk}` per piece of text, the finish reason, then `data: [DONE]`."""
    model = server.engine.name

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    if chat:
        yield sse(chat_chunk(rid, model, {"role": "assistant", "content": ""}))
    async for item in server.pieces(job):
        if item[0] == "delta":
            yield sse(chat_chunk(rid, model, {"content": item[1]}) if chat else text_chunk(rid, model, item[1]))
        elif item[0] == "done":
            yield sse(chat_chunk(rid, model, {}, item[1]) if chat else text_chunk(rid, model, "", item[1]))
        else:
            yield sse({"error": {"message": item[1], "type": "server_error", "param": None, "code": None}})
    yield "data: [DONE]\n\n"


def create_app(server: Server):
    """The Starlette application: the API under /v1 and the chat page at /."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    def api(handler):
        async def endpoint(request):
            try:
                return await handler(request)
            except BadRequest as e:
                return e.response()
        return endpoint

    async def chat_completions(request):
        body = await server.body(request)
        job = server.job(body, server.prompt_ids(messages=body.get("messages")))
        return await respond(server, job, chat=True, stream=bool(body.get("stream")))

    async def completions(request):
        body = await server.body(request)
        job = server.job(body, server.prompt_ids(prompt=body.get("prompt")))
        return await respond(server, job, chat=False, stream=bool(body.get("stream")))

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": server.engine.name, "object": "model",
                                                         "created": 0, "owned_by": "mindllm"}]})

    async def stats(request):
        return JSONResponse({**server.stats, "waiting": server.stats["submitted"] - server.stats["finished"]})

    with open(PAGE, encoding="utf-8") as fh:
        html = fh.read().replace("{{MODEL}}", server.engine.name)
    html = html.replace("{{KIND}}", "instruct" if server.engine.instruct else "base")

    async def page(request):
        return HTMLResponse(html)

    async def font(request):
        return FileResponse(cjk_font(), media_type="font/otf")

    return Starlette(routes=[
        Route("/", page), Route("/font.otf", font), Route("/v1/models", models), Route("/stats", stats),
        Route("/v1/chat/completions", api(chat_completions), methods=["POST"]),
        Route("/v1/completions", api(completions), methods=["POST"])])


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a busy port is one clear line instead of a server log."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    return sock


def parse_events(lines) -> list[dict]:
    """A client's reading of a server-sent event stream: the JSON object of every `data: ...` line, in order, up to
    `data: [DONE]`; blank lines separate events, other fields (`event:`, `id:`, `: comments`) are skipped."""
    out = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        out.append(json.loads(data))
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Running:
    url: str    # http://127.0.0.1:PORT
    model: str  # the id clients send
    pid: int


@contextlib.contextmanager
def running(run: str, *args: str, timeout: float = 300):
    """`python -m mindllm.serve run *args` in a subprocess on a free loopback port, until the block ends; yields
    Running(url, model, pid) once /v1/models answers (for notebooks, tests and the load benchmark)."""
    import httpx

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this mindllm, not another installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    url = f"http://127.0.0.1:{free_port()}"
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen([sys.executable, "-m", "mindllm.serve", run, "--port", url.rsplit(":", 1)[1],
                                 *args], stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err.seek(0)
                    lines = err.read().strip().splitlines() or ["(nothing on stderr)"]
                    why = f"exited with status {proc.returncode}" if proc.poll() is not None else "did not answer"
                    raise UserError(f"python -m mindllm.serve {why}: {lines[-1].removeprefix('error: ')}")
                try:
                    models = httpx.get(f"{url}/v1/models", timeout=2, trust_env=False).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            yield Running(url, models["data"][0]["id"], proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def build_parser():
    ap = ArgumentParser(prog="python -m mindllm.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a GPT or Llama run directory (or one of its ckpt/step_* directories)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--name", help="the model id clients send (default: the run directory's name)")
    ap.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask for")
    ap.add_argument("--max-waiting", type=int, default=64,
                    help="requests queued or decoding at most; more get HTTP 429 (server_busy)")
    ap.add_argument("--draft", metavar="RUN", help="speculative decoding: a smaller run with the same tokenizer "
                                                   "proposes tokens (answers unchanged in distribution)")
    ap.add_argument("--speculative-k", type=int, default=4, help="with --draft: tokens proposed per round")
    ap.add_argument("--device", default="CPU", help="CPU, GPU, Ascend or auto")
    return ap


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535 or min(args.max_tokens_limit, args.max_waiting, args.speculative_k) < 1:
        raise UserError("--port must be in 0..65535, --max-tokens-limit, --max-waiting and --speculative-k >= 1")
    import uvicorn

    sock = bind(args.host, args.port)
    device.setup(device.context_for(args.device), 0)
    engine = Engine.load(args.run, args.name, args.draft, args.speculative_k)
    server = Server(engine, args.max_tokens_limit, args.max_waiting)
    server.warm_up()
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(f"serving '{args.run}' as model '{server.engine.name}' "
          f"({'instruction-tuned: answers in its template' if server.engine.instruct else 'base model: continues text'}"
          f", context {server.engine.block} tokens)\n  chat page  {url}/\n  OpenAI API {url}/v1   (Ctrl-C stops)",
          flush=True)
    config = uvicorn.Config(create_app(server), log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
