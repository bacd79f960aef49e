"""An LLM as verifier: a judge model behind an OpenAI-compatible endpoint says whether an answer matches the
gold, for answers rules cannot check (Reasoning360 serves a 1.5B general verifier this way).

Two verifiers join core.verifier's registry, chosen like the others by `verifier=` (rejection sampling,
evaluation) or `rewards.verifier=` (GRPO):

- `llm_judge`: the judge alone.
- `math_or_judge`: the math rules first; the judge only where they cannot judge (None: a gold answer
  math-verify cannot parse, or one it ran out of time on).

What the judge sees is conf/judge/default.yaml's `prompt` with {answer} (the completion's final answer,
core.verifier.extract_answer; a completion without one is False without asking) and {gold}. Its reply is
parsed for a verdict (`yes_pattern` / `no_pattern`, the first match wins); a reply that says neither, a
server that is down or does not answer within `timeout_s` is None (cannot judge), never a crash and never a
silent False. Identical (answer, gold) pairs are asked once per process (`cache_size`).

The judge's settings reach the verifier through `configure(cfg)`, which the stage calls at its door: the
registry holds plain functions `(completion, gold) -> verdict`, and the worker processes that verify in
parallel import them afresh, so the settings also travel in the environment (`LLM_JUDGE`, JSON).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import asdict, dataclass

from core.config import help_field
from core.verifier import Verdict, extract_answer, register_verifier, verify_math

log = logging.getLogger(__name__)

ENV = "LLM_JUDGE"
JUDGE_VERIFIERS = ("llm_judge", "math_or_judge")


@dataclass
class JudgeConfig:
    """The LLM judge's endpoint, prompt and limits (conf/judge/default.yaml)."""

    base_url: str = help_field(
        "http://127.0.0.1:8001/v1", help="The judge server's OpenAI API root.", hashed=False
    )
    model: str | None = help_field(None, help="Served model name; null = the only one the server lists.")
    api_key_env: str = help_field(
        "OPENAI_API_KEY", help="Environment variable holding the API key.", hashed=False
    )
    prompt: str = help_field(
        "You are checking a student's final answer to a math problem against the reference answer.\n"
        "Reference answer: {gold}\n"
        "Student's final answer: {answer}\n"
        "Are they mathematically equivalent? Reply with exactly one word: YES or NO.\n",
        help="What the judge is asked; {answer} and {gold} are filled in (conf/judge/default.yaml's, the same).",
    )
    chat: bool = help_field(
        True, help="Ask through chat completions (the server's chat template); false = completions."
    )
    yes_pattern: str = help_field(r"\bYES\b", help="A reply matching this (case-insensitive) is True.")
    no_pattern: str = help_field(r"\bNO\b", help="A reply matching this (case-insensitive) is False.")
    max_tokens: int = help_field(8, help="Longest reply.")
    timeout_s: float = help_field(
        5.0, help="Seconds the judge may take per question (then None); the verifier's own limit applies too.",
        hashed=False,
    )  # fmt: skip
    max_retries: int = help_field(
        1, help="Retries of a failed request (the openai client's backoff).", hashed=False
    )
    cache_size: int = help_field(65536, help="(answer, gold) verdicts kept per process.", hashed=False)

    def __post_init__(self) -> None:
        if "{answer}" not in self.prompt or "{gold}" not in self.prompt:
            raise ValueError("judge.prompt must contain {answer} and {gold}")
        for name in ("yes_pattern", "no_pattern"):
            re.compile(getattr(self, name))


def configure(cfg: JudgeConfig) -> None:
    """Set the judge for this process and the verifier processes it starts."""
    os.environ[ENV] = json.dumps(asdict(cfg))
    _judge.cache_clear()


def use(verifier: str | None, cfg: JudgeConfig) -> None:
    """What a stage calls at its door: sets the judge when its verifier asks one (importing this module is
    what registers the two verifiers)."""
    if verifier in JUDGE_VERIFIERS:
        configure(cfg)


@functools.cache
def _judge() -> Judge:
    raw = os.environ.get(ENV)
    if raw is None:
        raise RuntimeError(
            "verifier llm_judge / math_or_judge used before core.judge.configure(): the stage's judge settings "
            "were not set"
        )
    return Judge(JudgeConfig(**json.loads(raw)))


class Judge:
    def __init__(self, cfg: JudgeConfig):
        import openai

        self.cfg = cfg
        self.client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )
        self.yes = re.compile(cfg.yes_pattern, re.IGNORECASE)
        self.no = re.compile(cfg.no_pattern, re.IGNORECASE)
        self.ask = functools.lru_cache(maxsize=cfg.cache_size)(self._ask)
        self._model = cfg.model

    def model(self) -> str:
        if self._model is None:
            served = [m.id for m in self.client.models.list()]
            if len(served) != 1:
                raise ValueError(f"judge at {self.cfg.base_url} serves {served}: name one with judge.model")
            self._model = served[0]
        return self._model

    def _ask(self, answer: str, gold: str) -> Verdict:
        """The judge's verdict on one pair; None when it cannot be had (see the module docstring)."""
        import openai

        question = self.cfg.prompt.format(answer=answer, gold=gold)
        try:
            if self.cfg.chat:
                response = self.client.chat.completions.create(
                    model=self.model(),
                    messages=[{"role": "user", "content": question}],
                    max_tokens=self.cfg.max_tokens,
                    temperature=0,
                )
                reply = response.choices[0].message.content or ""
            else:
                response = self.client.completions.create(
                    model=self.model(), prompt=question, max_tokens=self.cfg.max_tokens, temperature=0
                )
                reply = response.choices[0].text
        except (openai.OpenAIError, ValueError) as e:
            log.warning("judge at %s: no verdict (%s: %s)", self.cfg.base_url, type(e).__name__, e)
            return None
        return parse_verdict(reply, self.yes, self.no)


def parse_verdict(reply: str, yes: re.Pattern[str], no: re.Pattern[str]) -> Verdict:
    """True / False by whichever pattern matches first in the reply; None when neither does."""
    found = [
        (m.start(), verdict)
        for pattern, verdict in ((yes, True), (no, False))
        if (m := pattern.search(reply))
    ]
    return min(found)[1] if found else None


@register_verifier("llm_judge")
def verify_llm_judge(completion: str, gold: str) -> Verdict:
    answer = extract_answer(completion)
    if answer is None:
        return False  # no final answer: wrong, as for the rule verifiers
    return _judge().ask(answer, gold)


@register_verifier("math_or_judge")
def verify_math_or_judge(completion: str, gold: str) -> Verdict:
    verdict = verify_math(completion, gold)
    return verdict if verdict is not None else verify_llm_judge(completion, gold)
