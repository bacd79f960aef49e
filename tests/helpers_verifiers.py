"""Toy verifiers for tests/test_verifier.py.

They live in a module of their own, not in the test file, so that a spawned worker process can import them:
a worker starts fresh and only knows the verifiers registered by the modules it has imported. The tests
start such a worker with `load` as its initializer, which (being pickled by reference) imports this module
there and so registers the verifiers below in the worker's registry too.
"""

from __future__ import annotations

import os
import time

from core.verifier import Verdict, register_verifier

SLOW_S = 5.0


def load() -> None:
    """Worker initializer: importing this module is all it takes."""


@register_verifier("test_sleep")
def sleep_verifier(completion: str, gold: str) -> Verdict:
    """Blocks in a system call far longer than any time limit the tests use."""
    time.sleep(SLOW_S)
    return True


@register_verifier("test_spin")
def spin_verifier(completion: str, gold: str) -> Verdict:
    """Burns CPU in pure Python far longer than any time limit the tests use."""
    deadline = time.monotonic() + SLOW_S
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n < 0


@register_verifier("test_exact")
def exact_verifier(completion: str, gold: str) -> Verdict:
    """Fast: None for an empty gold, else exact (stripped) string match."""
    if not gold.strip():
        return None
    return completion.strip() == gold.strip()


@register_verifier("test_crash")
def crash_verifier(completion: str, gold: str) -> Verdict:
    """Kills the process it runs in, as an out-of-memory kill of a worker would."""
    os._exit(1)
