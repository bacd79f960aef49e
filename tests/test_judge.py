"""The LLM judge (core/judge.py): the round trip to a real judge served by vLLM on localhost (the tiny model's
verdicts mean nothing: that it answers, and is parsed, is what counts), and against a small in-process
server whose reply the test chooses: parsing, caching, the time limit, a dead server, the fallback from
the math rules, and the judge as rejection sampling's and GRPO's verifier."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pandas as pd
import pytest

from core import judge
from core.judge import JudgeConfig, parse_verdict
from core.verifier import verify, verify_batch

ANSWERED = "<think>it is</think> The answer is \\boxed{\\text{blue}}."


class Reply(BaseHTTPRequestHandler):
    """A completions endpoint answering `text` after `delay` seconds, recording every prompt."""

    text = "YES"
    delay = 0.0
    prompts: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._send(
            {"object": "list", "data": [{"id": "judge", "object": "model", "created": 0, "owned_by": "t"}]}
        )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).prompts.append(body["prompt"])
        time.sleep(type(self).delay)
        choice = {"index": 0, "text": type(self).text, "finish_reason": "stop"}
        self._send(
            {"id": "c", "object": "text_completion", "created": 0, "model": "judge", "choices": [choice]}
        )

    def _send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    class Fresh(Reply):
        prompts: ClassVar[list[str]] = []

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fresh)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", Fresh
    httpd.shutdown()


def configure(url: str, **fields) -> None:
    judge.configure(JudgeConfig(base_url=url, chat=False, **fields))


def test_verdicts_are_parsed_from_the_reply():
    cfg = JudgeConfig()
    yes, no = (re.compile(p, re.IGNORECASE) for p in (cfg.yes_pattern, cfg.no_pattern))
    assert parse_verdict("YES", yes, no) is True
    assert parse_verdict("no, they differ", yes, no) is False
    assert parse_verdict("Yes. (Not no.)", yes, no) is True  # the first verdict said wins
    assert parse_verdict("maybe", yes, no) is None and parse_verdict("", yes, no) is None
    assert parse_verdict("YESTERDAY", yes, no) is None  # a word, not a prefix
    with pytest.raises(ValueError, match=r"must contain \{answer\} and \{gold\}"):
        JudgeConfig(prompt="Is it right?")
    from core.config import compose, to_typed
    from reject_sampling.config import RejectSamplingConfig

    assert (
        to_typed(compose("reject_sampling", []), RejectSamplingConfig).judge == cfg
    )  # conf/judge/default.yaml


def test_the_judge_is_asked_the_answer_and_gold_once_per_pair(server):
    url, handler = server
    configure(url)
    assert verify(ANSWERED, "blue", "llm_judge") is True
    assert verify(ANSWERED, "blue", "llm_judge") is True
    assert len(handler.prompts) == 1  # cached
    assert (
        "Reference answer: blue" in handler.prompts[0] and "final answer: \\text{blue}" in handler.prompts[0]
    )
    handler.text = "NO"
    assert verify(ANSWERED, "red", "llm_judge") is False
    assert verify("<think>no answer yet", "blue", "llm_judge") is False  # no final answer: not asked
    assert len(handler.prompts) == 2


def test_an_unparseable_verdict_a_slow_judge_and_a_dead_server_are_none(server):
    url, handler = server
    handler.text = "I am not sure"
    configure(url)
    assert verify(ANSWERED, "blue", "llm_judge") is None
    handler.delay, handler.text = 30, "YES"
    configure(url, timeout_s=1, max_retries=0)
    started = time.time()
    assert verify(ANSWERED, "green", "llm_judge") is None
    assert time.time() - started < 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    configure(dead, model="judge", max_retries=0)
    assert verify(ANSWERED, "blue", "llm_judge") is None


def test_math_or_judge_asks_the_judge_only_where_the_rules_cannot_judge(server):
    url, handler = server
    configure(url)
    assert verify("<think>x</think> \\boxed{4}", "4", "math_or_judge") is True
    assert verify("<think>x</think> \\boxed{5}", "4", "math_or_judge") is False
    assert handler.prompts == []  # the rules judged both
    assert verify(ANSWERED, "\\text{blue", "math_or_judge") is True  # a gold math-verify cannot parse
    assert len(handler.prompts) == 1


def test_rejection_sampling_and_grpo_use_the_judge_as_their_verifier(server):
    from grpo.rewards import accuracy
    from reject_sampling.scoring import verify_samples

    url, handler = server
    configure(url)
    samples = pd.DataFrame({"completion": [ANSWERED, ANSWERED], "answer": ["blue", "sky blue"]})
    verified = verify_samples(samples, "llm_judge", workers=0)
    assert verified["correct"].tolist() == [True, True]
    rewards = accuracy(
        [ANSWERED], ["navy"], data_source=["math"], correct=5.0, wrong=-5.0, verifier="llm_judge"
    )
    assert rewards == [5.0] and len(handler.prompts) == 3  # rewards.verifier judged the math row
    assert verify_batch([ANSWERED], ["blue"], ["llm_judge"]) == [True]  # cached


@pytest.mark.vllm
@pytest.mark.slow
def test_a_real_judge_served_by_vllm_answers_and_is_parsed(vllm_server):
    """The tiny model as judge: its reply is noise, so any reply at all counts as YES here; what is tested is
    the round trip through vLLM's server (chat template and completions) and the parse of what comes back."""
    for chat in (True, False):
        judge.configure(
            JudgeConfig(base_url=vllm_server, chat=chat, yes_pattern=r"(?s).", no_pattern=r"$^", max_tokens=4)
        )
        assert verify(ANSWERED, f"blue{chat}", "llm_judge", timeout=60) is True
