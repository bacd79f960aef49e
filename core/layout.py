"""Where a run's stages write: the one description of `runs/<run>/...`.

    runs/<run>/
      tiny_model/{policy,reward_model}/      the offline default's models
      raw/                                   synthetic OpenR1 shards (when no input_dir is given)
      data/                                  data_process: sft / pairs / prompts parquet + manifest
      round_<k>/sft/model/                   train_sft (round k > 0 continues from round k-1's model)
      round_<k>/sft_control/model/           its compute-matched control (k > 0)
      round_<k>/reward_model/model/          reward_model
      round_<k>/reject_sampling/             samples, scored, selected (next round's SFT data), pairs
      round_<k>/grpo/model/                  grpo (the last round)
      eval/<name>/                           held-out evaluation of one model
      bench/<model>/<benchmark>/             a standard benchmark
      logs/pipeline/<step>.log               each pipeline step's output
      pipeline.json, plan/, report/          the pipeline's record, dry-run plan and report

A pipeline step's name is its directory relative to the run (`round_1/sft`, `eval/round_1_sft`), so the
plan, pipeline.json and the report name a step and find its output the same way. The stages' own
defaults (`output_dir: ${run_dir}/round_${round}/sft`, ...) spell the same paths in their schemas and
YAML, where a user reads them; tests/test_layout.py composes every stage and checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "model"  # the servable model inside a training stage's directory


@dataclass(frozen=True)
class RunLayout:
    run_dir: str

    def path(self, step: str) -> str:
        """The directory of a step, by its name."""
        return f"{self.run_dir}/{step}"

    # ------------------------------------------------------------------ step names (= relative directories)
    @staticmethod
    def round_step(k: int, stage: str) -> str:
        return f"round_{k}/{stage}"

    @staticmethod
    def eval_step(name: str) -> str:
        return f"eval/{name}"

    @staticmethod
    def bench_step(model: str, benchmark: str) -> str:
        return f"bench/{model}/{benchmark}"

    # ------------------------------------------------------------------ directories
    @property
    def tiny_policy(self) -> str:
        return f"{self.run_dir}/tiny_model/policy"

    @property
    def data(self) -> str:
        return self.path("data")

    def round_dir(self, k: int, stage: str) -> str:
        return self.path(self.round_step(k, stage))

    def model(self, k: int, stage: str = "sft") -> str:
        """The servable model a training stage of round k saved (`stage`: sft, sft_control, reward_model, grpo)."""
        return f"{self.round_dir(k, stage)}/{MODEL}"

    def eval_dir(self, name: str) -> str:
        return self.path(self.eval_step(name))

    def bench_dir(self, model: str, benchmark: str) -> str:
        return self.path(self.bench_step(model, benchmark))

    def step_log(self, step: str) -> str:
        """`runs/<run>/logs/pipeline/round_1.sft.log` for step round_1/sft."""
        return f"{self.run_dir}/logs/pipeline/{step.replace('/', '.')}.log"
