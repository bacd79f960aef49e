"""The GRPO rewards beside their TRL 1.16 counterparts (`trl.rewards`), called as GRPOTrainer calls reward
functions: keywords only (`prompts`, `completions`, `completion_ids`, the dataset columns, and the trainer's
`trainer_state` / `log_extra` / `log_metric`). The stage's prompts are plain text, so completions arrive as
strings; TRL's text rewards read `completion[0]["content"]` and are given the conversational form.

- overlong: equal, so grpo/rewards.py now calls TRL's `get_soft_overlong_punishment`; checked here against
  DAPO's Eq. 13 as the formula it replaced wrote it, and against hand-computed values.
- format vs `think_format_reward`, accuracy vs `accuracy_reward` / `reasoning_accuracy_reward`: not equal;
  every case below pins both sides, so a case listed as agreeing agrees and one listed as differing differs
  in the way the reward's docstring says.
"""

from __future__ import annotations

import functools

import pytest
from trl.rewards import (
    accuracy_reward,
    get_soft_overlong_punishment,
    reasoning_accuracy_reward,
    think_format_reward,
)

from core.config import compose, to_typed
from grpo.config import GRPOStageConfig
from grpo.rewards import REWARDS, accuracy, build_reward_functions, format_reward, overlong_penalty

R1_PREFILL = "<think>\n"  # what R1-style generation prompts pre-fill (the `prefill` column)


def trl_call(fn, completions, completion_ids=None, **columns):
    """`fn` called the way GRPOTrainer._calculate_rewards (TRL 1.16) calls a plain reward function."""
    n = len(completions)
    return fn(
        prompts=["prompt"] * n,
        completions=completions,
        completion_ids=completion_ids if completion_ids is not None else [[0]] * n,
        **columns,
        trainer_state=None,
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: None,
    )


def as_message(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------------------ overlong


def replaced_overlong_formula(n: int, max_completion_length: int, overlong_buffer: int) -> float:
    """grpo/rewards.py's own overlong penalty before it called TRL's (DAPO Eq. 13)."""
    start = max_completion_length - overlong_buffer
    return 0.0 if n <= start else max(-1.0, (start - n) / overlong_buffer)


def ours_overlong(lengths, max_completion_length, overlong_buffer, **columns):
    """The registry's `overlong` as build_reward_functions binds it, on completions of these lengths
    (`range` objects: both implementations only take `len`)."""
    fn = functools.partial(
        REWARDS["overlong"], max_completion_length=max_completion_length, overlong_buffer=overlong_buffer
    )
    ids = [range(n) for n in lengths]
    return trl_call(fn, ["x"] * len(ids), completion_ids=ids, **columns)


def test_overlong_hand_computed_values_from_zero_to_past_max():
    # max 64, buffer 16: free up to 48 tokens (overlong by 0), linear in the soft band, -1 at max and past it.
    lengths = [0, 1, 47, 48, 49, 56, 63, 64, 65, 10_000]
    expected = [0.0, 0.0, 0.0, 0.0, -1 / 16, -0.5, -15 / 16, -1.0, -1.0, -1.0]
    assert ours_overlong(lengths, 64, 16) == expected
    assert get_soft_overlong_punishment(64, 16)([range(n) for n in lengths]) == expected


def test_overlong_equals_trl_and_the_replaced_formula_everywhere_the_config_allows():
    """Every buffer 1 .. max (the config's bounds) for max 1 .. 40, and the default / RLinf lengths with
    small, typical and whole-length buffers; every length 0 .. max + 4. Exact floats, not approx."""
    settings = [(m, b) for m in range(1, 41) for b in range(1, m + 1)]
    settings += [(m, b) for m in (1024, 27648) for b in (1, 16, 256, 4096, m) if b <= m]
    for max_len, buffer in settings:
        lengths = range(max_len + 5)
        ours = ours_overlong(lengths, max_len, buffer)
        trl = get_soft_overlong_punishment(max_len, buffer)(completion_ids=[range(n) for n in lengths])
        reference = [replaced_overlong_formula(n, max_len, buffer) for n in lengths]
        assert ours == trl == reference, (max_len, buffer)
        assert all(type(r) is float for r in ours)


def test_overlong_counts_generated_tokens_not_the_prefill():
    """The prefill is part of the prompt: a completion of exactly max tokens is -1 whatever was pre-filled,
    and the text itself plays no part (TRL's counts `completion_ids`, as ours did)."""
    got = ours_overlong([32, 24], 32, 8, prefill=[R1_PREFILL, R1_PREFILL * 100])
    assert got == [-1.0, 0.0]


def test_configured_overlong_reward_is_trls_under_the_trainer_call():
    cfg = to_typed(compose("grpo", ["rewards.overlong=0.5", "rewards.overlong_buffer=8"]), GRPOStageConfig)
    functions, _ = build_reward_functions(cfg.rewards, 32, cfg.model, use_cpu=True)
    overlong = functions[list(cfg.rewards.weights).index("overlong")]
    lengths = [0, 24, 25, 28, 32]
    ids = [[7] * n for n in lengths]
    got = trl_call(overlong, ["x"] * len(ids), completion_ids=ids, answer=["1"] * len(ids))
    assert got == get_soft_overlong_punishment(32, 8)(ids) == [0.0, 0.0, -1 / 8, -0.5, -1.0]
    assert overlong_penalty is REWARDS["overlong"]


# ------------------------------------------------------------------------------------------ format

LONG_REASONING = "step. " * 20_000

# (case, whole trace, ours, TRL's think_format_reward on the same trace)
FORMAT_CASES = [
    ("well-formed", "<think>\n12+7=19.\n</think>\nThe answer is \\boxed{19}.", 1.0, 1.0),
    ("empty reasoning", "<think></think> \\boxed{19}", 1.0, 1.0),
    ("very long", f"<think>\n{LONG_REASONING}\n</think>\n\\boxed{{19}}", 1.0, 1.0),
    ("missing </think>", "<think>\n12+7=", 0.0, 0.0),
    ("missing </think>, box in reasoning", "<think>\n\\boxed{19}", 0.0, 0.0),
    ("empty", "", 0.0, 0.0),
    ("duplicated </think> before the box", "<think>a</think>b</think> \\boxed{19}", 1.0, 1.0),
    # Differ: TRL's checks no answer.
    ("no box", "<think>\nr\n</think>\nThe answer is 19.", 0.0, 1.0),
    ("two boxes", "<think>r</think> \\boxed{1} or \\boxed{2}", 0.0, 1.0),
    ("box only in reasoning", "<think>\\boxed{19}</think> 19", 0.0, 1.0),
    ("</think> after the box", "<think>a</think> \\boxed{19}</think>", 0.0, 1.0),
    # Differ: TRL's wants <think> at character 0 and no second <think>.
    ("only </think>", "r</think> \\boxed{19}", 1.0, 0.0),
    ("leading space", " <think>a</think> \\boxed{19}", 1.0, 0.0),
    ("leading newline", "\n<think>a</think> \\boxed{19}", 1.0, 0.0),
    ("nested <think>", "<think>a<think>b</think> \\boxed{19}", 1.0, 0.0),
    ("two think blocks", "<think>a</think><think>b</think> \\boxed{19}", 1.0, 0.0),
    ("<think> after the answer", "<think>a</think> \\boxed{19} <think>", 1.0, 0.0),
    # Agree at 0 for different reasons: ours wants the (required) reasoning closed, TRL's wants <think>.
    ("no tags", "The answer is \\boxed{19}.", 0.0, 0.0),
]


@pytest.mark.parametrize(
    ("trace", "ours", "trl"), [c[1:] for c in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES]
)
def test_format_beside_trl_think_format_reward(trace, ours, trl):
    assert trl_call(format_reward, [trace]) == [ours]
    assert trl_call(format_reward, [as_message(trace)]) == [ours]
    assert trl_call(think_format_reward, [as_message(trace)]) == [trl]
    if trace.startswith(R1_PREFILL):  # as the stage hands it over: the prefill in its own column
        generated = trace[len(R1_PREFILL) :]
        assert trl_call(format_reward, [generated], prefill=[R1_PREFILL]) == [ours]


def test_format_cases_cover_agreement_and_both_directions_of_difference():
    """The table is not one-sided: it holds cases where the two agree at 1 and at 0, and cases where each
    is the stricter one."""
    pairs = {(ours, trl) for _, _, ours, trl in FORMAT_CASES}
    assert pairs == {(1.0, 1.0), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0)}


def test_trl_think_format_fails_an_r1_completion_unless_the_prefill_is_joined():
    generated = "12+7=19.\n</think>\nThe answer is \\boxed{19}."  # what an R1 model generates after <think>\n
    assert trl_call(think_format_reward, [as_message(generated)]) == [0.0]
    assert trl_call(think_format_reward, [as_message(R1_PREFILL + generated)]) == [1.0]
    assert trl_call(format_reward, [generated], prefill=[R1_PREFILL]) == [1.0]


def test_require_think_false_accepts_an_untagged_answer_which_trl_never_does():
    trace = "The answer is \\boxed{19}."
    assert trl_call(format_reward, [trace], require_think=False) == [1.0]
    assert trl_call(think_format_reward, [as_message(trace)]) == [0.0]


def test_trl_text_rewards_take_no_plain_string_completions():
    """The stage's completions are strings (plain-text prompts); TRL's text rewards index them as messages."""
    with pytest.raises(TypeError):
        trl_call(think_format_reward, ["<think>r</think> \\boxed{19}"])
    with pytest.raises(TypeError):
        trl_call(accuracy_reward, ["<think>r</think> \\boxed{19}"], solution=["19"])


# ------------------------------------------------------------------------------------------ accuracy

# (case, whole trace, gold, ours, TRL's accuracy_reward, TRL's reasoning_accuracy_reward)
ACCURACY_CASES = [
    ("correct", "<think>12+7=19.</think> The answer is \\boxed{19}.", "19", 1.0, 1.0, 1.0),
    ("wrong", "<think>12+7=18.</think> The answer is \\boxed{18}.", "19", 0.0, 0.0, 0.0),
    ("equivalent forms", "<think>r</think> \\boxed{0.5}", "\\frac{1}{2}", 1.0, 1.0, 1.0),
    ("unjudgeable gold", "<think>r</think> \\boxed{19}", "proof", None, None, None),
    ("empty", "", "19", 0.0, 0.0, 0.0),
    ("only </think>", "r</think> \\boxed{19}", "19", 1.0, 1.0, 1.0),
    # Differ.
    ("missing </think>, box in reasoning", "<think>\\boxed{19}", "19", 0.0, 1.0, 0.0),
    # math-verify reads {18, 19} from boxes on one line (its rightmost, widest match), 19 across lines.
    ("box in reasoning, another after", "<think>maybe \\boxed{18}</think> \\boxed{19}", "19", 1.0, 0.0, 1.0),
    ("the same across lines", "<think>\nmaybe \\boxed{18}\n</think>\n\\boxed{19}", "19", 1.0, 1.0, 1.0),
    ("two boxes after </think>", "<think>r</think> \\boxed{18} no, \\boxed{19}", "19", 1.0, 0.0, 0.0),
    ("two boxes, gold the first", "<think>r</think> \\boxed{18} no, \\boxed{19}", "18", 0.0, 0.0, 0.0),
    ("no box, a number", "<think>r</think> The answer is 19.", "19", 1.0, 0.0, 0.0),
    ("no tags", "The answer is \\boxed{19}.", "19", 1.0, 1.0, 0.0),
]


@pytest.mark.parametrize(
    ("trace", "gold", "ours", "trl", "trl_reasoning"),
    [c[1:] for c in ACCURACY_CASES],
    ids=[c[0] for c in ACCURACY_CASES],
)
def test_accuracy_beside_trl_accuracy_rewards(trace, gold, ours, trl, trl_reasoning):
    assert trl_call(accuracy, [trace], answer=[gold]) == [ours]
    assert trl_call(accuracy_reward, [as_message(trace)], solution=[gold]) == [trl]
    assert trl_call(reasoning_accuracy_reward, [as_message(trace)], solution=[gold]) == [trl_reasoning]


def test_accuracy_judges_the_r1_trace_with_its_prefill_and_scales_the_verdict():
    """What TRL's have no parameter for: the stage's prefill column (joined back) and RLinf's +5 / -5
    (`correct` / `wrong`)."""
    generated = "maybe \\boxed{18}\n</think>\n\\boxed{19}"
    got = trl_call(accuracy, [generated, generated], answer=["19", "18"], prefill=[R1_PREFILL] * 2)
    assert got == [1.0, 0.0]
    scaled = trl_call(
        accuracy,
        [generated, generated],
        answer=["19", "18"],
        prefill=[R1_PREFILL] * 2,
        correct=5.0,
        wrong=-5.0,
    )
    assert scaled == [5.0, -5.0]
