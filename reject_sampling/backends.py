"""Generation backends behind one interface: vLLM (the default when importable), transformers `generate` and
a running OpenAI-compatible server (`OpenAIBackend`).

    backend = make_backend(model_cfg, sampling_cfg, tokenizer, adapter=None, use_cpu=False, max_model_len=...)
    completions = backend.generate(rendered_prompts, prompt_ids)   # per prompt, sampling.n Completions
    backend.close()

Both backends tokenize the chat-rendered prompts with the same Hugging Face tokenizer (no special tokens
added: the template already has them), stop at the tokenizer's eos plus the eos ids of the model's
generation_config (a trained model stops at its end-of-turn token) plus `sampling.stop` strings (cut from the
text, as vLLM does), and take every sampling parameter from SamplingConfig, never from the model's
generation_config (an Instruct model's repetition_penalty would otherwise apply under HF only).
`n_tokens` counts the completion's tokens including the stop token.

Reproducibility, honestly:
- vLLM: every request has its own seed, `request_seed(seed, prompt id)` (vLLM gives sample i seed + i), so a
  prompt's samples do not depend on which prompts share its chunk, shard or batch: a resumed or sharded run
  draws the same samples as an uninterrupted one. (On a GPU, vLLM does not promise bit-identical logits
  across different batch compositions, so a rare sample can still differ.)
- transformers: `generate()` has no per-row random generator, so torch's global RNG is seeded once per
  `generate()` call from (seed, id of the call's first prompt). Samples are reproducible when the same
  prompts form the same calls, which holds for a rerun and for a resumed run (chunks are fixed); a different
  `num_shards`, `chunk_prompts` or `transformers_batch_size` draws different, equally valid, samples.
- Greedy decoding (temperature 0) is deterministic on both, and the two agree in float32 (tested on the
  tiny model). Sampled texts never agree across backends: their random streams differ.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.config import ModelConfig
from reject_sampling.config import SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (eos, end-of-turn or a stop string) | "length" (max_new_tokens or context)
    n_tokens: int


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], ids: list[str]) -> list[list[Completion]]: ...

    def close(self) -> None: ...


def request_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt seed from the run's seed and the prompt id; 31 bits, so seed + sample index stays an int32."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def stop_token_ids(tokenizer: Any, model: ModelConfig) -> list[int]:
    """The chat template's end-of-turn token, the tokenizer's eos, then the eos ids of the model's
    generation_config.json (if any): a base model given `model.chat_template` stops at the turn's end too."""
    from core.models import chat_renderer

    ids = [chat_renderer(model, tokenizer).eot_id]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    model_path = model.path
    gen_file = Path(model_path) / "generation_config.json"
    if gen_file.exists():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path, local_files_only=True).eos_token_id
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ValueError(f"{model_path}: neither the tokenizer nor generation_config.json names an eos token")
    return list(dict.fromkeys(ids))


def resolve_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def _dtype_name(model: ModelConfig, use_cpu: bool) -> str:
    """`auto` → float32 on the CPU (vLLM's CPU default would be bf16), the checkpoint's choice on a GPU."""
    if model.dtype != "auto":
        return model.dtype
    return "float32" if use_cpu else "auto"


def _empty_cuda_cache() -> None:
    import torch  # here, not at the top: the pipeline imports this module to check steps, without torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tokenize(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


class TransformersBackend:
    """transformers `generate`: prompts in batches of `transformers_batch_size`, left padded, n samples each."""

    name = "transformers"

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        tokenizer: Any,
        adapter: str | None = None,
        use_cpu: bool = True,
    ):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.sampling, self.tokenizer = sampling, tokenizer
        self.device = "cpu" if use_cpu else "cuda"
        dtype = _dtype_name(model, use_cpu)
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        self.model = AutoModelForCausalLM.from_pretrained(
            model.path,
            dtype=getattr(torch, dtype),
            local_files_only=True,
            trust_remote_code=model.trust_remote_code,
        )
        if adapter is not None:
            from peft import PeftModel

            # Merged once: generation then runs at the base model's speed.
            self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload()
        self.model.to(self.device).eval()
        self.eos_ids = stop_token_ids(tokenizer, model)
        vocab = self.model.get_input_embeddings().num_embeddings
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None and pad < vocab else self.eos_ids[0]
        # Only SamplingConfig decides how to sample (see the module docstring).
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids, pad_token_id=self.pad_id)

    def generate(self, prompts: list[str], ids: list[str]) -> list[list[Completion]]:
        size = self.sampling.transformers_batch_size
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), size):
            out += self._generate_batch(prompts[start : start + size], ids[start : start + size])
        return out

    def _generate_batch(self, prompts: list[str], ids: list[str]) -> list[list[Completion]]:
        import torch

        s = self.sampling
        encoded = tokenize(self.tokenizer, prompts)
        width = max(len(e) for e in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            input_ids[row, width - len(e) :] = torch.tensor(e)
            attention[row, width - len(e) :] = 1
        greedy = s.temperature == 0
        # Greedy generate() refuses num_return_sequences > 1: decode once, repeat n times.
        per_prompt = 1 if greedy else s.n
        kwargs: dict[str, Any] = {"do_sample": False}
        if not greedy:
            kwargs = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k}
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        torch.manual_seed(request_seed(s.seed, ids[0]))
        with torch.no_grad():
            sequences = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=s.max_new_tokens,
                num_return_sequences=per_prompt,
                **kwargs,
            )
        rows = [self._completion(r) for r in sequences[:, width:].tolist()]
        grouped = [rows[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
        return [g * s.n if greedy else g for g in grouped]

    def _completion(self, tokens: list[int]) -> Completion:
        eos = set(self.eos_ids)
        end = next((i for i, t in enumerate(tokens) if t in eos), None)
        if end is not None:
            tokens, finish = tokens[: end + 1], "stop"
            text = self.tokenizer.decode(tokens[:-1], skip_special_tokens=True)
        else:
            finish = "length"
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(stop) for stop in self.sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            # A stop string ended the row (the rest is padding): keep the text before it, and count the
            # tokens up to the one that completed it.
            n = self._tokens_until_stop(tokens)
            return Completion(text[:cut], "stop", n)
        return Completion(text, finish, len(tokens))

    def _tokens_until_stop(self, tokens: list[int]) -> int:
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)
            if any(stop in text for stop in self.sampling.stop):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def close(self) -> None:
        del self.model
        _empty_cuda_cache()


class VLLMBackend:
    """vLLM's offline `LLM.generate`: one request per prompt with SamplingParams(n=sampling.n, seed=...)."""

    name = "vllm"

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        tokenizer: Any,
        adapter: str | None = None,
        use_cpu: bool = False,
        max_model_len: int | None = None,
        progress: bool = True,
    ):
        if use_cpu:
            # Read by vLLM when it is imported: set them first.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(sampling.cpu_kvcache_space_gb)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: 3x faster start
        from vllm import LLM

        self.sampling, self.tokenizer, self.progress = sampling, tokenizer, progress
        self.stop_ids = stop_token_ids(tokenizer, model)
        kwargs: dict[str, Any] = {}
        if use_cpu:
            # vLLM 0.31's CPU runner crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split over two steps; without chunked prefill every prompt is prefilled at once.
            kwargs["enable_chunked_prefill"] = False
        else:
            kwargs["gpu_memory_utilization"] = sampling.gpu_memory_utilization
        if adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=sampling.max_lora_rank, max_loras=1)
        self.llm = LLM(
            model=model.path,
            tokenizer=model.tokenizer_dir,
            trust_remote_code=model.trust_remote_code,
            dtype=_dtype_name(model, use_cpu),
            seed=sampling.seed,
            tensor_parallel_size=sampling.tensor_parallel_size,
            enable_prefix_caching=sampling.enable_prefix_caching,
            enforce_eager=use_cpu if sampling.enforce_eager is None else sampling.enforce_eager,
            max_model_len=max_model_len,
            **kwargs,
        )
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def generate(self, prompts: list[str], ids: list[str]) -> list[list[Completion]]:
        from vllm import SamplingParams, TokensPrompt

        s = self.sampling
        # vLLM refuses n > 1 with greedy decoding: decode once, repeat n times.
        greedy = s.temperature == 0
        inputs = [TokensPrompt(prompt_token_ids=e) for e in tokenize(self.tokenizer, prompts)]
        params = [
            SamplingParams(
                n=1 if greedy else s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k if s.top_k > 0 else -1,
                max_tokens=s.max_new_tokens,
                stop=list(s.stop) or None,
                stop_token_ids=self.stop_ids,
                seed=request_seed(s.seed, prompt_id),
            )
            for prompt_id in ids
        ]
        results = self.llm.generate(inputs, params, use_tqdm=self.progress, lora_request=self.lora)
        out = [[self._completion(o) for o in sorted(r.outputs, key=lambda o: o.index)] for r in results]
        return [c * s.n for c in out] if greedy else out

    @staticmethod
    def _completion(output: Any) -> Completion:
        if output.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a request with '{output.finish_reason}'")
        return Completion(output.text, output.finish_reason, len(output.token_ids))

    def close(self) -> None:
        del self.llm
        _empty_cuda_cache()


class OpenAIBackend:
    """A running OpenAI-compatible server's completions endpoint (vLLM, SGLang, a hosted API): one request per
    prompt with n samples and the prompt's own seed, at most `max_concurrency` in flight, each retried with
    the openai client's exponential backoff and bounded by `timeout_s`.

    The prompt is rendered here, by the model's own chat template, and sent as its token ids
    (`prompt_format=tokens`, what vLLM and SGLang take), so the server sees exactly what a local engine does,
    never its own chat template. With `extensions` the request carries vLLM / SGLang's top_k, the template's
    end-of-turn and eos as stop_token_ids, and return_token_ids (n_tokens = the ids returned); a strict
    OpenAI endpoint gets the end-of-turn as a stop string and n_tokens counted by the local tokenizer."""

    name = "openai"

    def __init__(self, model: ModelConfig, sampling: SamplingConfig, tokenizer: Any):
        import openai

        self.sampling, self.tokenizer = sampling, tokenizer
        o = sampling.openai
        if not o.extensions and sampling.top_k > 0:
            raise ValueError("sampling.top_k needs sampling.openai.extensions=true (a vLLM or SGLang server)")
        self.client = openai.OpenAI(
            base_url=o.base_url,
            api_key=os.environ.get(o.api_key_env) or "EMPTY",
            timeout=o.timeout_s,
            max_retries=o.max_retries,
        )
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.model = o.model or self._served_model()
        log.info(
            "openai backend: %s at %s, up to %d requests at once", self.model, o.base_url, o.max_concurrency
        )

    def _served_model(self) -> str:
        import openai

        try:
            served = [m.id for m in self.client.models.list()]
        except openai.APIConnectionError as e:
            raise ConnectionError(
                f"no OpenAI-compatible server answers at {self.sampling.openai.base_url} ({e}): start it, "
                "or point sampling.openai.base_url at it"
            ) from e
        if len(served) != 1:
            raise ValueError(
                f"{self.sampling.openai.base_url} serves {served}: name one with sampling.openai.model"
            )
        return served[0]

    def generate(self, prompts: list[str], ids: list[str]) -> list[list[Completion]]:
        from concurrent.futures import ThreadPoolExecutor

        s = self.sampling
        greedy = s.temperature == 0
        encoded = tokenize(self.tokenizer, prompts)
        with ThreadPoolExecutor(max_workers=s.openai.max_concurrency) as pool:
            out = list(pool.map(self._request, prompts, encoded, ids, [1 if greedy else s.n] * len(prompts)))
        return [c * s.n for c in out] if greedy else out

    def _request(self, prompt: str, token_ids: list[int], prompt_id: str, n: int) -> list[Completion]:
        import openai

        s, o = self.sampling, self.sampling.openai
        stop = list(s.stop)
        extra: dict[str, Any] = {}
        if o.extensions:
            extra = {"stop_token_ids": self.stop_ids, "return_token_ids": True, "skip_special_tokens": True}
            extra["top_k"] = s.top_k if s.top_k > 0 else -1
        else:
            stop += [t for t in (self.tokenizer.decode([i]) for i in self.stop_ids) if t]
        try:
            response = self.client.completions.create(
                model=self.model,
                prompt=[token_ids] if o.prompt_format == "tokens" else prompt,
                n=n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_new_tokens,
                seed=request_seed(s.seed, prompt_id),
                stop=stop or None,
                extra_body=extra or None,
            )
        except openai.APIConnectionError as e:
            raise ConnectionError(
                f"prompt {prompt_id}: the server at {o.base_url} did not answer after {o.max_retries} retries ({e})"
            ) from e
        return [self._completion(c) for c in sorted(response.choices, key=lambda c: c.index)]

    def _completion(self, choice: Any) -> Completion:
        if choice.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"the server finished a request with '{choice.finish_reason}'")
        token_ids = (choice.model_extra or {}).get("token_ids")
        if token_ids is None:
            token_ids = tokenize(self.tokenizer, [choice.text])[0] + (
                [0] if choice.finish_reason == "stop" else []
            )
        return Completion(choice.text, choice.finish_reason, len(token_ids))

    def close(self) -> None:
        self.client.close()


def make_backend(
    model: ModelConfig,
    sampling: SamplingConfig,
    tokenizer: Any,
    *,
    adapter: str | None = None,
    use_cpu: bool,
    max_model_len: int | None = None,
    progress: bool = True,
) -> Backend:
    name = resolve_backend(sampling.backend)
    log.info("generation backend: %s (sampling.backend=%s)", name, sampling.backend)
    if name == "vllm":
        return VLLMBackend(model, sampling, tokenizer, adapter, use_cpu, max_model_len, progress)
    if name == "openai":
        if adapter is not None:
            raise ValueError(
                "sampling.backend=openai samples what the server serves: serve the adapter there"
            )
        return OpenAIBackend(model, sampling, tokenizer)
    return TransformersBackend(model, sampling, tokenizer, adapter, use_cpu)
