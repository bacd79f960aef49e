"""Synthetic problems in the exact OpenR1-Math-220k schema, for the offline default run and the tests.

Problems are multi-step integer arithmetic (+ and −, operands 1–99, 1–`max_ops` operations), written either
as an expression ("Compute 61 + 38 - 17.") or as a short story. The number of operations is the difficulty
level: a 0.56 M-parameter model learns the one-step problems in minutes and the three-step ones much
later, so every later stage has room to show learning.

Each problem carries 2–4 DeepSeek-R1-style traces (`<think>` step-by-step reasoning, then a `\\boxed{}`
answer): correct ones, wrong ones and unfinished ones (cut off mid-reasoning, finish reason "length"), with
the per-trace flag lists filled in consistently,
exactly as the real dataset does. The harder the problem, the more often a trace is wrong. Wrong traces
make the mistakes models make: an arithmetic slip that propagates to the answer, a misread number (an
operand copied wrongly from the problem, e.g. digits swapped), or stopping before the last operation. A few problems
are repeated (verbatim, or with an "Example 3." style prefix) the way scraped data repeats itself.

`trace_style="verbose"` pads every reasoning step with R1-like musings so that trace lengths follow the
real distribution (median ≈ 4k tokens, p90 ≈ 9k): that is what the data_process benchmark reads.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.artifacts import OutputFile, ParquetSink
from data_process.openr1 import OPENR1_SCHEMA

SOURCES = ("olympiads", "cn_contest", "aops_forum", "amc_aime", "number_theory")
PROBLEM_TYPES = ("Algebra", "Number Theory", "Other")
_STORY_NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Mia")
_STORY_ITEMS = ("marbles", "apples", "stamps", "coins", "books", "shells")
_FILLER = (
    "Hmm, let me make sure I am reading the problem correctly before going on. ",
    "Wait, I should double-check that step, since a slip here would carry through to the end. ",
    "Let me recompute it digit by digit to be safe: the tens and the units separately. ",
    "Alternatively, I could check by working backwards from the result. ",
    "Okay, that seems consistent with what I found before, so I will keep going. ",
    "Let me also think about whether the order of the operations matters here; it does not. ",
)


@dataclass
class Problem:
    operands: list[int]
    ops: list[str]  # "+" or "-", len(operands) - 1
    text: str
    story: bool

    @property
    def answer(self) -> int:
        return _running_totals(self.operands, self.ops)[-1]


def _running_totals(operands: list[int], ops: list[str]) -> list[int]:
    totals = [operands[0]]
    for op, x in zip(ops, operands[1:], strict=True):
        totals.append(totals[-1] + x if op == "+" else totals[-1] - x)
    return totals


def _expression(operands: list[int], ops: list[str]) -> str:
    parts = [str(operands[0])]
    for op, x in zip(ops, operands[1:], strict=True):
        parts += [op, str(x)]
    return " ".join(parts)


def make_problem(rng: random.Random, n_ops: int, max_operand: int, story_prob: float) -> Problem:
    story = rng.random() < story_prob
    while True:
        operands = [rng.randint(1, max_operand) for _ in range(n_ops + 1)]
        ops = [rng.choice("+-") for _ in range(n_ops)]
        # A story cannot hold a negative number of things at any point.
        if not story or min(_running_totals(operands, ops)) >= 0:
            break
    if story:
        name, item = rng.choice(_STORY_NAMES), rng.choice(_STORY_ITEMS)
        steps = [f"{name} has {operands[0]} {item}."]
        for op, x in zip(ops, operands[1:], strict=True):
            steps.append(f"Then {name} gets {x} more." if op == "+" else f"Then {name} gives away {x}.")
        steps.append(f"How many {item} does {name} have now?")
        text = " ".join(steps)
    else:
        text = rng.choice(("Compute {e}.", "What is {e}?", "Evaluate {e}.")).format(
            e=_expression(operands, ops)
        )
    return Problem(operands, ops, text, story)


def reasoning_steps(problem: Problem, slip_at: int | None = None, slip: int = 0) -> tuple[list[str], int]:
    """One sentence per operation ("61+38=99."); a slip at step k adds `slip` to that step's result."""
    steps, total = [], problem.operands[0]
    for k, (op, x) in enumerate(zip(problem.ops, problem.operands[1:], strict=True)):
        new = total + x if op == "+" else total - x
        if k == slip_at:
            new += slip
        steps.append(f"{total}{op}{x}={new}.")
        total = new
    return steps, total


def _misread(x: int, rng: random.Random) -> int:
    """A number copied wrongly: digits swapped when that changes it, else off by a little."""
    swapped = int(str(x)[::-1])
    if x >= 10 and swapped != x and x % 10:
        return swapped
    return max(1, x + rng.choice([-2, -1, 1, 2, 10]))


WRONG_KINDS = ("slip", "misread", "early_stop")


def wrong_steps(problem: Problem, rng: random.Random, weights: tuple[float, ...]) -> tuple[list[str], int]:
    """The reasoning of a wrong trace: a slip, a misread operand or an early stop (see the module doc)."""
    kind = rng.choices(WRONG_KINDS, weights=weights)[0]
    if kind == "misread":
        i = rng.randrange(len(problem.operands))
        operands = list(problem.operands)
        operands[i] = _misread(operands[i], rng)
        steps, final = reasoning_steps(Problem(operands, problem.ops, problem.text, problem.story))
        if final != problem.answer:
            return steps, final
    elif kind == "early_stop" and len(problem.ops) >= 2:
        steps, _ = reasoning_steps(problem)
        stop = rng.randrange(1, len(problem.ops))
        final = _running_totals(problem.operands, problem.ops)[stop]
        if final != problem.answer:
            return steps[:stop], final
    slip = rng.choice([-10, -2, -1, 1, 2, 10])
    return reasoning_steps(problem, slip_at=rng.randrange(len(problem.ops)), slip=slip)


def mistake_pairs(
    n: int, weights: tuple[float, ...], seed: int = 0, ops: tuple[int, int] = (2, 3), max_operand: int = 30
) -> list[dict[str, str]]:
    """`n` preference pairs (id, prompt, chosen, rejected): a correct trace against a wrong one whose
    mistake kind is drawn with `weights` over WRONG_KINDS, for reward-model tests and benchmarks. A
    misread that happens to give the right answer is drawn again: the rejected trace is always wrong."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        problem = make_problem(rng, rng.randint(*ops), max_operand, story_prob=0.0)
        steps, final = reasoning_steps(problem)
        wrong, wrong_final = wrong_steps(problem, rng, weights)
        while wrong_final == final:
            wrong, wrong_final = wrong_steps(problem, rng, weights)
        pairs.append(
            {
                "id": f"pair-{i}",
                "prompt": problem.text,
                "chosen": render_trace(steps, final, 0, rng),
                "rejected": render_trace(wrong, wrong_final, 0, rng),
            }
        )
    return pairs


def render_trace(steps: list[str], final: int | None, filler_words: int, rng: random.Random) -> str:
    """`<think>` + steps (+ filler) + `</think>` + boxed answer; `final=None` leaves it unfinished."""
    if filler_words > 0:
        per_step = max(1, filler_words // len(steps))
        padded = []
        for s in steps:
            filler = _filler(per_step, rng)
            padded.append(f"{filler}{s}")
        body = "\n\n".join(padded)
    else:
        body = " ".join(steps)
    if final is None:
        return f"<think>{body}"
    return f"<think>{body}</think> The answer is \\boxed{{{final}}}."


def _filler(words: int, rng: random.Random) -> str:
    out, n = [], 0
    while n < words:
        sentence = rng.choice(_FILLER)
        out.append(sentence)
        n += sentence.count(" ")
    return "".join(out)


@dataclass
class TraceMix:
    p_correct: float = 0.65
    p_unfinished: float = 0.1
    difficulty_penalty: float = 0.12  # p_correct falls by this per extra operation
    p_llama_null: float = 0.15
    p_llama_flip: float = 0.05
    wrong_kinds: tuple[float, ...] = (0.5, 0.3, 0.2)  # weights of WRONG_KINDS: slip, misread, early_stop


def make_row(
    rng: random.Random,
    problem: Problem,
    mix: TraceMix,
    n_generations: int,
    verbose_words: int = 0,
    source: str | None = None,
) -> dict[str, Any]:
    """One row in the OpenR1 schema with consistent per-trace flags."""
    p_correct = max(0.05, mix.p_correct - mix.difficulty_penalty * (len(problem.ops) - 1))
    generations, complete, correct, finish = [], [], [], []
    for _ in range(n_generations):
        words = int(rng.lognormvariate(0, 0.6) * verbose_words) if verbose_words else 0
        u = rng.random()
        if u < mix.p_unfinished:
            steps, _ = reasoning_steps(problem)
            cut = rng.randint(0, len(steps) - 1)
            text = render_trace(steps[: cut + 1], None, words, rng)
            generations.append(text[: max(len("<think>") + 1, int(len(text) * rng.uniform(0.5, 1.0)))])
            complete.append(False)
            correct.append(False)
            finish.append("length")
        elif u < mix.p_unfinished + (1 - mix.p_unfinished) * p_correct:
            steps, final = reasoning_steps(problem)
            generations.append(render_trace(steps, final, words, rng))
            complete.append(True)
            correct.append(True)
            finish.append("stop")
        else:
            steps, final = wrong_steps(problem, rng, mix.wrong_kinds)
            generations.append(render_trace(steps, final, words, rng))
            complete.append(True)
            correct.append(False)
            finish.append("stop")
    llama = None
    if rng.random() >= mix.p_llama_null:
        llama = [c if rng.random() >= mix.p_llama_flip else not c for c in correct]
    answer = problem.answer
    first_shown = generations[correct.index(True)] if any(correct) else generations[0]
    return {
        "problem": problem.text,
        "solution": f"We compute {_expression(problem.operands, problem.ops)} = {answer}. "
        f"Therefore the answer is $\\boxed{{{answer}}}$.",
        "answer": str(answer),
        "problem_type": PROBLEM_TYPES[len(problem.ops) % len(PROBLEM_TYPES)],
        "question_type": "math-word-problem",
        "source": source or rng.choice(SOURCES),
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "is_reasoning_complete": complete,
        "generations": generations,
        "correctness_math_verify": correct,
        "correctness_llama": llama,
        "finish_reasons": finish,
        "correctness_count": sum(correct),
        "messages": [
            {"content": problem.text, "role": "user"},
            {"content": first_shown, "role": "assistant"},
        ],
    }


@dataclass
class SyntheticSpec:
    num_problems: int = 2000
    seed: int = 0
    min_ops: int = 1
    max_ops: int = 3
    max_operand: int = 99
    story_prob: float = 0.2
    min_generations: int = 2
    max_generations: int = 4
    duplicate_prob: float = 0.02
    verbose_words: int = 0
    mix: TraceMix | None = None


def iter_rows(spec: SyntheticSpec) -> Iterator[dict[str, Any]]:
    """Deterministic stream of rows for `spec` (same seed, same rows)."""
    rng = random.Random(spec.seed)
    mix = spec.mix or TraceMix()
    seen: list[Problem] = []
    for _ in range(spec.num_problems):
        if seen and rng.random() < spec.duplicate_prob:
            original = rng.choice(seen)
            prefix = rng.choice(("", f"Example {rng.randint(1, 9)}. ", f"{rng.randint(1, 30)}. "))
            problem = Problem(original.operands, original.ops, prefix + original.text, original.story)
        else:
            n_ops = rng.randint(spec.min_ops, spec.max_ops)
            problem = make_problem(rng, n_ops, spec.max_operand, spec.story_prob)
            if len(seen) < 1000:
                seen.append(problem)
        n_gen = rng.randint(spec.min_generations, spec.max_generations)
        yield make_row(rng, problem, mix, n_gen, spec.verbose_words)


def write_shards(
    spec: SyntheticSpec, output_dir: str | Path, subset: str = "default", shard_rows: int = 5000
) -> list[OutputFile]:
    """Write `spec`'s rows as `<output_dir>/<subset>/train-0000k-of-0000n.parquet`, like the real dataset.
    The returned file entries are relative to `output_dir`."""
    out = Path(output_dir) / subset
    n_shards = max(1, -(-spec.num_problems // shard_rows))
    files, sink, shard = [], None, 0
    for i, row in enumerate(iter_rows(spec)):
        if i % shard_rows == 0:
            if sink is not None:
                files.append(sink.close())
            name = f"train-{shard:05d}-of-{n_shards:05d}.parquet"
            sink = ParquetSink(out / name, OPENR1_SCHEMA, 512, stage_dir=output_dir)
            shard += 1
        sink.write(row)
    if sink is not None:
        files.append(sink.close())
    return files


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=OPENR1_SCHEMA)
