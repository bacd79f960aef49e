"""Answer verification: extract a completion's final answer and compare it with the gold answer.

Verdicts are `True` (correct), `False` (wrong, or no final answer at all) and `None` (cannot judge: the
gold answer does not parse, or the comparison ran out of time). Downstream, `None` is skipped, never
counted as wrong.

Verifiers sit in a registry keyed by a `data_source` value ("math" by default): a new domain registers a
function `(completion, gold) -> bool | None`, it does not fork this module.

Time limits. math-verify's own timeouts use SIGALRM, which only works in a process's main thread. Here
math-verify runs with its timeouts off and this module enforces the limit itself: with `setitimer` in a
main thread, and otherwise by handing the work to a worker process (whose tasks run in its main thread).
So `verify` is safe to call from threads (e.g. a trainer's reward function) and from worker processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing as mp
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

from core.chat import count_boxed, last_boxed, split_think

Verdict = bool | None
VerifierFn = Callable[[str, str], Verdict]

DEFAULT_TIMEOUT_S = 5.0
# Gold answers that state no checkable value (OpenR1 marks proof problems with answer "proof").
UNJUDGEABLE_GOLDS = frozenset({"", "proof", "notfound", "none", "null", "n/a"})
VERIFIERS: dict[str, VerifierFn] = {}
# Thousands-separated numbers first, so "1,000" is one number, not "000".
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_INTEGER = re.compile(r"-?\d+")


class VerificationTimeout(BaseException):
    """BaseException, like math-verify's own: its `except Exception` blocks would swallow an Exception and
    turn a timeout into a verdict."""


def register_verifier(name: str) -> Callable[[VerifierFn], VerifierFn]:
    def decorator(fn: VerifierFn) -> VerifierFn:
        VERIFIERS[name] = fn
        return fn

    return decorator


def get_verifier(data_source: str) -> VerifierFn:
    try:
        return VERIFIERS[data_source]
    except KeyError:
        raise KeyError(
            f"no verifier for data_source '{data_source}'; registered: {sorted(VERIFIERS)}"
        ) from None


# ---------------------------------------------------------------------------------------------- extraction


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: the last \\boxed{} after the reasoning, else the last number.

    Returns None when the reasoning never closed (a truncated trace has no answer) or nothing is found.
    Only the text after `</think>` is searched, so a number or box inside the reasoning never counts.
    """
    split = split_think(completion)
    if not split.closed:
        return None
    region = split.answer
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed.strip()
    if "\\boxed" in region:
        return None  # an unclosed box: the digits inside it are not an answer
    numbers = _NUMBER.findall(region)
    return numbers[-1].replace(",", "") if numbers else None


def format_ok(completion: str, require_think: bool = True) -> bool:
    """Closed reasoning (when required) and exactly one \\boxed{} answer after it."""
    split = split_think(completion)
    if require_think and (split.reasoning is None or not split.closed):
        return False
    return split.closed and count_boxed(split.answer) == 1


# ---------------------------------------------------------------------------------------------- math


def _as_latex(answer: str) -> str:
    answer = answer.strip()
    if _UNESCAPED_DOLLAR.search(answer) or "\\boxed" in answer or "\\(" in answer or "\\[" in answer:
        return answer
    return f"${answer}$"


def integer_verdict(completion: str, gold: str) -> Verdict:
    """The math verdict without math-verify when the gold answer is a plain integer and the completion's
    answer is a plain integer or missing, else None (undecided: ask math-verify). Two integers are
    equivalent exactly when their values are equal, so this agrees with math-verify, in ~10 µs instead of
    ~2 ms per sample (most of a rejection-sampling round's verification time on integer-answer problems)."""
    gold_text = str(gold).strip() if gold is not None else ""
    if not _INTEGER.fullmatch(gold_text):
        return None
    answer = extract_answer(completion)
    if answer is None:
        return False
    return int(answer) == int(gold_text) if _INTEGER.fullmatch(answer) else None


@register_verifier("math")
def verify_math(completion: str, gold: str) -> Verdict:
    """math-verify equivalence (fractions vs decimals, `x=3` vs `3`, sets, intervals, units); plain
    integers against an integer gold answer are compared directly (`integer_verdict`)."""
    if (quick := integer_verdict(completion, gold)) is not None:
        return quick
    from math_verify import parse, verify

    # This module enforces the time limit itself (see the module docstring); silence the reminder.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    if gold is None or str(gold).strip().lower() in UNJUDGEABLE_GOLDS:
        return None
    gold_parsed = parse(_as_latex(str(gold)), parsing_timeout=None)
    if not gold_parsed or all(isinstance(x, str) for x in gold_parsed):
        return None  # the gold did not parse into a value: nothing to compare with
    answer = extract_answer(completion)
    if answer is None:
        return False
    pred_parsed = parse(_as_latex(answer), parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


# ---------------------------------------------------------------------------------------------- time limits


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def _raise(signum, frame):
        raise VerificationTimeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _verify_in_main_thread(
    completion: str, gold: str, data_source: str | VerifierFn, timeout: float
) -> Verdict:
    # Worker processes receive the function itself (pickled by module and name, so the worker imports the
    # module that registered it): a verifier registered outside this module works there too.
    fn = data_source if callable(data_source) else get_verifier(data_source)
    try:
        with _alarm(timeout):
            return fn(completion, gold)
    except VerificationTimeout:
        return None


def _verify_chunk(items: list[tuple[str, str, VerifierFn]], timeout: float) -> list[Verdict]:
    return [_verify_in_main_thread(c, g, s, timeout) for c, g, s in items]


_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        return _pool


def verify(
    completion: str, gold: str, data_source: str = "math", timeout: float = DEFAULT_TIMEOUT_S
) -> Verdict:
    """One verdict, with a time limit that holds in any thread."""
    if threading.current_thread() is threading.main_thread():
        return _verify_in_main_thread(completion, gold, data_source, timeout)
    global _pool
    pool = _shared_pool()
    try:
        future = pool.submit(_verify_in_main_thread, completion, gold, get_verifier(data_source), timeout)
        return future.result(timeout=timeout + 30)
    except cf.TimeoutError:
        return None
    except cf.process.BrokenProcessPool:
        # The worker died (e.g. killed for memory): start a fresh one next time, judge nothing now.
        with _pool_lock:
            if _pool is pool:
                _pool = None
        return None


def verify_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    data_sources: Sequence[str] | None = None,
    workers: int = 0,
    timeout: float = DEFAULT_TIMEOUT_S,
    chunk_size: int = 64,
) -> list[Verdict]:
    """Verdicts for many (completion, gold) pairs, in input order.

    `workers=0` runs in this process (a main thread) or, off the main thread, in the shared worker;
    `workers>0` spreads chunks over a process pool.
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    sources = list(data_sources) if data_sources is not None else ["math"] * len(completions)
    functions = {s: get_verifier(s) for s in set(sources)}  # fails fast on an unknown data_source
    verdicts: list[Verdict] = [None] * len(completions)
    # Integer answers are settled here; a pool (whose workers take seconds to import math-verify) only
    # starts for what is left.
    pending = []
    for i, (c, g, s) in enumerate(zip(completions, golds, sources, strict=True)):
        quick = integer_verdict(c, g) if functions[s] is verify_math else None
        if quick is None:
            pending.append(i)
        else:
            verdicts[i] = quick
    if workers <= 0 or len(pending) <= chunk_size:
        for i in pending:
            verdicts[i] = verify(completions[i], golds[i], sources[i], timeout)
        return verdicts
    items = [(completions[i], golds[i], functions[sources[i]]) for i in pending]
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        results = pool.map(_verify_chunk, chunks, [timeout] * len(chunks))
        for i, v in zip(pending, (v for chunk in results for v in chunk), strict=True):
            verdicts[i] = v
    return verdicts
