"""Per-device memory of one Swin V2 training step, predicted from the architecture alone.

    python -m mindswin.memory_plan --model swinv2_base_window12_192 --img_size 384 --window_size 24 \\
        --batch_size 64 --amp_level O2 --recompute --zero_ranks 8 --device 910A
    python -m mindswin.memory_plan --table 910A 910B      # the largest batch per card (docs/memory_plan.md)

What a step holds at its peak, in five parts:

* **weights**: float32 master weights (and, under AMP O2, the float16 copy each matmul keeps
  for its backward pass);
* **gradients**: one float32 gradient per weight (ZeRO-1 shards optimizer state, not gradients);
* **optimizer**: AdamW's two float32 moments, divided by the ZeRO-1 ranks; plus EMA weights;
* **activations**: what autodiff keeps from the forward pass for the backward pass, counted
  tensor by tensor from mindswin's own forward (see :func:`block_memory`);
* **attention**: the part of it that grows with windows x heads x N^2 (probabilities, the
  shifted blocks' bias-plus-mask), and **transient**: the largest live set of one block's
  backward pass (or, with recompute, one block's recomputed forward).

Two backends, because they run different graphs: ``"ascend"`` (MindSpore's own ops) and
``"cpu"`` (the fused CPU kernels). On both, ``recompute`` (a
:class:`~mindswin.models.swin_v2.BlockCheckpoint` per block) keeps only each block's input
and reruns one block at a time in the backward pass. ``graph`` is the compiled graph, which the
CPU backend holds in the same memory as the tensors: a fixed amount per block graph, more for a
checkpointed block (its rerun is a second copy of the block) and per sequential-attention group
(see :func:`cpu_graph_bytes`); on Ascend the graph lives in host memory, not on the card.
``runtime`` is what the process holds besides: on CPU the framework and allocator pools
(measured by ``bench/memory_plan_check.py``, which checks the plan against measured peaks); on
Ascend a reserve for the runtime, HCCL buffers and kernel workspaces that is an assumption, not
a measurement (no card here).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence

from .models.attention_paths import ROW_BLOCK_ATTENTION_MIN_TOKENS
from .models.flops import count_parameters
from .models.kernels import ATTENTION_ROWS
from .models.registry import model_spec
from .models.sequential_attention import chunk_ranges, sequential_pays_under_checkpoint
from .models.swin_v2 import (
    BlockConfig,
    clip_window_shift,
    geometry_problem,
    num_windows,
    padded_resolution,
    stage_block_configs,
    to_pair,
)

__all__ = ["DEVICES", "MemoryPlan", "BlockMemory", "block_memory", "cpu_graph_bytes", "sequential_groups",
           "attends_in_row_blocks",
           "sequential_group_scores",
           "plan_memory", "plan_inference_memory", "largest_batch", "model_arguments"]

GIB = 2 ** 30
MIB = 2 ** 20
FLOAT32 = 4
# HBM per card (Ascend 910A: 32 GB; Atlas A2 / 910B: 64 GB).
DEVICES = {"910A": 32 * GIB, "910B": 64 * GIB}
# Held on a card besides the step (runtime context, HCCL buffers, kernel workspaces): assumed, not measured.
ASCEND_RUNTIME = 2 * GIB
# Measured by bench/memory_plan_check.py (MindSpore 2.10, Swin V2-T at 128 px): framework, the graph
# outside the blocks (stem, head, loss, AdamW) and allocator pools of a one-step process.
CPU_RUNTIME = 300 * MIB
# Host memory of the compiled graph on MindSpore 2.10's CPU backend: the process's growth from the
# built model to the end of the second step, Swin V2-T at 128 px (tensors of a few MB), 8 against 12
# blocks, recompute off and on, sequential groups of 64 and 16 windows (one and up to four groups
# per block); the same growth was measured at 256 px and, compile only, at 1,024 px.
CPU_GRAPH_PER_BLOCK = 52 * MIB
CPU_GRAPH_PER_CHECKPOINTED_BLOCK = 83 * MIB  # the block, its rerun and the rerun's backward
CPU_GRAPH_PER_CHECKPOINTED_CORE = 20 * MIB  # a sequential core inside a checkpointed block, once
# Each sequential group (unrolled in the forward and the backward pass): a fixed part and a part
# that grows with the group's float32 scores (w h N^2 4). Fitted to the compile step of Swin V2-T
# with recompute and groups of 8 windows (16 groups), over the batched model's: +183 MB at
# 256 px / window 8 (N = 64) and +608 MB at 1,024 px / window 32 (N = 1,024).
CPU_GRAPH_PER_SEQUENTIAL_GROUP = 9 * MIB
# Evaluation (a forward pass, no autodiff) on the CPU backend: the graph per block, and the share of
# a block's training-forward live set (kept + attention + transient) that is live at once. Fitted to
# the peak RSS of Swin V2-T at 256 px / window 8, batch 8, 32 and 128 (1,041, 1,469 and 4,103 MB)
# and Swin V2-S / window 16 at batch 16 (1,534 MB), float32, fused kernels (AMD EPYC, AVX2, 2 cores).
CPU_INFERENCE_GRAPH_PER_BLOCK = 30 * MIB
INFERENCE_LIVE_SHARE = 0.7
CPU_GRAPH_PER_GROUP_SCORE_BYTE = 0.26
BACKENDS = ("ascend", "cpu")


@dataclass(frozen=True)
class BlockMemory:
    """Bytes one block keeps for its backward pass, and the most it adds while it runs."""

    kept: int  # token-stream tensors (q/k/v, norms' and linears' inputs, MLP hidden)
    attention: int  # probabilities and bias-plus-mask: windows x heads x N^2
    transient: int  # largest live set beyond what is kept, forward or backward
    block_input: int  # what recompute keeps instead of ``kept + attention``


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes per device, by part (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    ema: int
    activations: int
    attention: int
    transient: int
    graph: int
    runtime: int

    @property
    def total(self) -> int:
        return sum(self.breakdown().values())

    def breakdown(self) -> Dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def format(self) -> str:
        width = max(len(name) for name in self.breakdown())
        lines = [f"{name:<{width}}  {value / GIB:9.2f} GiB" for name, value in self.breakdown().items()]
        return "\n".join(lines + [f"{'total':<{width}}  {self.total / GIB:9.2f} GiB"])


def block_memory(config: BlockConfig, batch_size: int, backend: str, compute_bytes: int,
                 cpu_threads: int = 1) -> BlockMemory:
    """What one block holds, tensor by tensor, as mindswin's forward builds it.

    ``T`` tokens of width ``C`` (``Tp`` after window padding), hidden width ``M``, ``h`` heads,
    ``N`` tokens per window; ``a`` bytes per matmul operand (4, or 2 under AMP O2), 4 for the
    float32 parts (normalisation, softmax, LayerNorm, residual stream). Kept for the backward pass:

    * both backends: the qkv and proj inputs (``Tp C a`` each), v (``Tp C a``), the two LayerNorm
      inputs (``T C 4``, three with the extra norm), the fc1 input (``T C a``), the fc2 input
      (``T M a``);
    * cpu (fused kernels): unit q and k from the qkv kernel (``2 Tp C 4``), their matmul-dtype
      copies under O2 (``2 Tp C a``), the GELU kernel's float32 input (``T M 4``); under O2 also
      the float32 tensors that a cell with its own ``bprop`` keeps as its outputs before they are
      cast for a matmul (in float32 they are the matmul's input itself): the GELU kernel's output
      (``T M 4``), the qkv kernel's v and the window gather's output (``2 Tp C 4``);
    * ascend (MindSpore ops): the cosine normalisation's operands, float32 q and k, their
      broadcast inverse norms, unit q and its broadcast temperature (``6 Tp C 4``), matmul-dtype
      q and k (``2 Tp C a``), the GELU input (``T M a``);
    * attention, batched: the float32 probabilities ``B nW h N^2`` (and their ``a`` copy under
      O2), plus each shifted block's bias-plus-mask ``nW h N^2 4`` (one per image, not per batch);
      sequential: only the position bias ``h N^2 4`` (the backward pass recomputes one group's
      probabilities, and adds its slice of the mask, at a time); the same for the cpu attention
      kernels (windows of ``ROW_BLOCK_ATTENTION_MIN_TOKENS`` tokens or more, float32), which keep
      nothing and recompute the probabilities of ``ATTENTION_ROWS`` query rows at a time.

    The transient is the larger of the attention's (logits and probabilities forward, or their
    gradients backward: two float32 ``B nW h N^2``, of one group when sequential, three then,
    plus the bias gradients; on cpu the fused softmax backward also sums the bias gradient
    from ``cpu_threads`` partial copies) and the MLP backward's (the hidden gradient,
    ``T M (4 + a)``).
    """
    resolution = config.input_resolution
    window, shift = clip_window_shift(resolution, config.window_size, config.shift_size)
    padded = padded_resolution(resolution, window)
    windows = num_windows(resolution, window)
    n = window[0] * window[1]
    tokens = batch_size * resolution[0] * resolution[1]
    padded_tokens = batch_size * padded[0] * padded[1]
    dim, heads, hidden = config.dim, config.num_heads, int(config.dim * config.mlp_ratio)
    a = compute_bytes
    kept = padded_tokens * dim * 3 * a + tokens * dim * ((3 if config.extra_norm else 2) * FLOAT32 + a)
    kept += tokens * hidden * a
    amp_copy = a if a != FLOAT32 else 0
    if backend == "cpu":
        kept += padded_tokens * dim * (2 * FLOAT32 + 2 * amp_copy) + tokens * hidden * FLOAT32
        if amp_copy:
            kept += tokens * hidden * FLOAT32 + padded_tokens * dim * 2 * FLOAT32
    else:
        kept += padded_tokens * dim * (6 * FLOAT32 + 2 * a) + tokens * hidden * a
    window_chunk, head_chunk = config.attn_chunks
    scores = batch_size * windows * heads * n * n
    position_bias = heads * n * n * FLOAT32
    cpb_hidden = (2 * window[0] - 1) * (2 * window[1] - 1) * 512 * FLOAT32  # the CPB MLP's hidden layer
    # The fused CPU kernel adds a shifted block's position bias and mask row by row; elsewhere their
    # (windows, heads, N, N) sum (of a group, when sequential) is built, from two tiled operands.
    row_by_row = backend == "cpu"
    sequential = bool(window_chunk or head_chunk)
    if attends_in_row_blocks(config, backend, a):
        # The attention kernels keep nothing of their own; per thread, a block of query rows' probabilities,
        # their gradient and mask rows, and a copy of the bias gradient; then q, k and v's gradients.
        attention = position_bias + cpb_hidden
        attention_transient = cpu_threads * (position_bias + 3 * ATTENTION_ROWS * n * FLOAT32) + position_bias + \
            3 * padded_tokens * dim * FLOAT32
    elif sequential:
        group_windows = min(window_chunk or windows, windows)
        group_heads = min(head_chunk or heads, heads)
        attention = position_bias + cpb_hidden
        # A group's probabilities, their gradient and the logits' gradient; with the mask, also the
        # group's mask and, built, its bias-plus-mask, the two operands and its gradient (per image).
        attention_transient = batch_size * group_windows * group_heads * n * n * (3 * FLOAT32 + amp_copy)
        group_bias = group_heads * n * n * FLOAT32
        if any(shift):
            attention_transient += group_windows * n * n * FLOAT32
            if not row_by_row:
                group_bias *= group_windows
                attention_transient += 4 * group_bias
        if row_by_row:  # the fused softmax backward sums the bias gradient from per-thread copies
            attention_transient += cpu_threads * group_bias
    else:
        mask = windows * n * n * FLOAT32 if any(shift) else 0
        bias = position_bias if row_by_row or not any(shift) else windows * position_bias
        attention = scores * (FLOAT32 + amp_copy) + bias + cpb_hidden + (mask if row_by_row else 0)
        # Backward: the probabilities' and logits' gradients, the bias gradient before and after
        # its reduction over images (forward: logits, the mask made from its factors and, built,
        # the bias-plus-mask's two tiled operands).
        attention_transient = scores * (2 * FLOAT32 + amp_copy) + 2 * bias + mask
        if row_by_row:
            attention_transient += cpu_threads * bias
    transient = max(attention_transient, tokens * hidden * (FLOAT32 + a))
    return BlockMemory(kept, attention, transient, tokens * dim * FLOAT32)


def attends_in_row_blocks(config: BlockConfig, backend: str, compute_bytes: int) -> bool:
    """Whether the block attends in the fused CPU attention kernel (which then also stands in for
    sequential attention): cpu, float32, windows of ``ROW_BLOCK_ATTENTION_MIN_TOKENS`` tokens or more."""
    window, _ = clip_window_shift(config.input_resolution, config.window_size, config.shift_size)
    return backend == "cpu" and compute_bytes == FLOAT32 and window[0] * window[1] >= ROW_BLOCK_ATTENTION_MIN_TOKENS


def sequential_group_scores(config: BlockConfig) -> int:
    """Float32 bytes of one sequential group's ``(w, h, N, N)`` scores, per image."""
    window, _ = clip_window_shift(config.input_resolution, config.window_size, config.shift_size)
    windows, n = num_windows(config.input_resolution, window), window[0] * window[1]
    window_chunk, head_chunk = config.attn_chunks
    return min(window_chunk or windows, windows) * min(head_chunk or config.num_heads, config.num_heads) * \
        n * n * FLOAT32


def sequential_groups(config: BlockConfig) -> int:
    """Groups (windows x heads) the sequential attention of a block computes one after another (0: batched)."""
    window_chunk, head_chunk = config.attn_chunks
    if not (window_chunk or head_chunk):
        return 0
    window, _ = clip_window_shift(config.input_resolution, config.window_size, config.shift_size)
    windows = num_windows(config.input_resolution, window)
    return len(chunk_ranges(windows, window_chunk)) * len(chunk_ranges(config.num_heads, head_chunk))


def cpu_graph_bytes(blocks: Sequence[BlockConfig], recompute: bool, compute_bytes: int = FLOAT32) -> int:
    """Host memory of the blocks' compiled graph on MindSpore's CPU backend (kernels, their launch
    state, the IR): it grows with the number of kernels, hardly with the tensors, so a deep model or a
    sequential attention of many groups pays it at any resolution. The sequential core unrolls its
    groups twice (forward, and the backward that recomputes each group's probabilities); a group
    costs more at larger windows (:data:`CPU_GRAPH_PER_GROUP_SCORE_BYTE`)."""
    per_block = CPU_GRAPH_PER_CHECKPOINTED_BLOCK if recompute else CPU_GRAPH_PER_BLOCK
    total = 0
    for config in blocks:
        groups = 0 if attends_in_row_blocks(config, "cpu", compute_bytes) else sequential_groups(config)
        total += per_block
        if groups:
            total += groups * (CPU_GRAPH_PER_SEQUENTIAL_GROUP +
                               int(CPU_GRAPH_PER_GROUP_SCORE_BYTE * sequential_group_scores(config)))
        if groups and recompute:
            total += CPU_GRAPH_PER_CHECKPOINTED_CORE
    return total


def _stem_and_merging_bytes(model_args: Dict[str, Any], stages: List[List[BlockConfig]], batch_size: int,
                            compute_bytes: int) -> int:
    """Kept outside the blocks: the images, the patch embedding's norm input, each patch merging's
    reduction input (``T C a``) and norm input (``T C / 2`` float32)."""
    height, width = to_pair(model_args.get("img_size", 256))
    kept = batch_size * model_args.get("in_chans", 3) * height * width * FLOAT32
    first = stages[0][0]
    kept += batch_size * first.input_resolution[0] * first.input_resolution[1] * first.dim * FLOAT32
    for blocks in stages[:-1]:
        tokens = batch_size * blocks[0].input_resolution[0] * blocks[0].input_resolution[1]
        kept += tokens * blocks[0].dim * compute_bytes + tokens * blocks[0].dim // 2 * FLOAT32
    return kept


def _check_plan_options(model_args: Dict[str, Any], batch_size: int, amp_level: str, backend: str) -> None:
    """Refuse (ValueError) an unknown backend or AMP level, a batch below 1, an image or window side
    below 1, a negative sequential-attention group and an image the patches do not tile."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if amp_level not in ("O0", "O2"):
        raise ValueError(f"amp_level must be 'O0' or 'O2', got {amp_level!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for key in ("img_size", "window_size"):
        if key in model_args and min(to_pair(model_args[key])) < 1:
            raise ValueError(f"{key} must be at least 1, got {model_args[key]}")
    for key in ("sequential_attention", "sequential_attention_heads"):
        if model_args.get(key, 0) < 0:
            raise ValueError(f"{key} must be at least 0 (0: all at once), got {model_args[key]}")
    problem = geometry_problem(model_args.get("img_size", 256), model_args.get("patch_size", 4))
    if problem:
        raise ValueError(f"img_size {model_args.get('img_size')}: {problem}")


def plan_memory(model_args: Dict[str, Any], batch_size: int = 1, amp_level: str = "O0", recompute: bool = False,
                zero_ranks: int = 1, ema: bool = False, backend: str = "ascend",
                runtime_bytes: Optional[int] = None, cpu_threads: Optional[int] = None) -> MemoryPlan:
    """Predict one training step's peak bytes per device.

    Args:
        model_args: :class:`~mindswin.models.swin_v2.SwinTransformerV2` arguments, including
            ``img_size``, ``window_size`` and ``sequential_attention`` (see :func:`model_arguments`).
        batch_size: Images per device.
        amp_level: ``"O0"`` (float32) or ``"O2"`` (float16/bfloat16 matmuls, float32 master weights).
        recompute: Activation checkpointing per block (the ``recompute`` key).
        zero_ranks: Ranks the AdamW moments are sharded over (ZeRO-1; 1: not sharded).
        ema: Whether an EMA copy of the weights is kept.
        backend: ``"ascend"`` or ``"cpu"`` (see the module docstring).
        runtime_bytes: What the process holds besides the step (None: the backend's default).
        cpu_threads: Threads of the fused CPU kernels (None: every core, their default).

    Returns:
        The :class:`MemoryPlan`.
    """
    _check_plan_options(model_args, batch_size, amp_level, backend)
    if zero_ranks < 1:
        raise ValueError(f"zero_ranks must be at least 1, got {zero_ranks}")
    compute_bytes = FLOAT32 if amp_level == "O0" else 2
    params = count_parameters(**model_args)
    stages = stage_block_configs(**model_args)
    threads = cpu_threads or os.cpu_count() or 1
    configs = [config for stage in stages for config in stage]
    if recompute:  # a checkpointed block attends in one batch where one group is all it would have
        configs = [config if sequential_pays_under_checkpoint(sequential_groups(config))
                   else config._replace(attn_chunks=(0, 0)) for config in configs]
    blocks = [block_memory(config, batch_size, backend, compute_bytes, threads) for config in configs]
    if recompute:
        activations = sum(block.block_input for block in blocks)
        attention = 0  # each block's, rerun one at a time, is in its transient
        transient = max(block.kept + block.attention + block.transient for block in blocks)
    else:
        activations = sum(block.kept for block in blocks)
        attention = sum(block.attention for block in blocks)
        transient = max(block.transient for block in blocks)
    activations += _stem_and_merging_bytes(model_args, stages, batch_size, compute_bytes)
    if runtime_bytes is None:
        runtime_bytes = CPU_RUNTIME if backend == "cpu" else ASCEND_RUNTIME
    graph = cpu_graph_bytes(configs, recompute, compute_bytes) if backend == "cpu" else 0
    return MemoryPlan(weights=params * (FLOAT32 + (compute_bytes if compute_bytes != FLOAT32 else 0)),
                      gradients=params * FLOAT32, optimizer=-(-2 * params * FLOAT32 // zero_ranks),
                      ema=params * FLOAT32 if ema else 0, activations=activations, attention=attention,
                      transient=transient, graph=graph, runtime=runtime_bytes)


def plan_inference_memory(model_args: Dict[str, Any], batch_size: int = 1, amp_level: str = "O0",
                          backend: str = "ascend", runtime_bytes: Optional[int] = None,
                          cpu_threads: Optional[int] = None) -> MemoryPlan:
    """Predict one forward pass's peak bytes per device (evaluation): no gradients, optimizer or kept activations.

    A forward pass without autodiff frees each block's tensors once the next one has used
    them, so its peak is the weights, the graph and the largest block's live set. That set is
    taken as :data:`INFERENCE_LIVE_SHARE` of what the block holds during training's forward
    pass (:func:`block_memory`: kept + attention + transient), a share fitted to measured peaks
    on the CPU backend (within 12% of them, see the constant). Arguments as :func:`plan_memory`'s.
    """
    _check_plan_options(model_args, batch_size, amp_level, backend)
    compute_bytes = FLOAT32 if amp_level == "O0" else 2
    params = count_parameters(**model_args)
    configs = [config for stage in stage_block_configs(**model_args) for config in stage]
    threads = cpu_threads or os.cpu_count() or 1
    blocks = [block_memory(config, batch_size, backend, compute_bytes, threads) for config in configs]
    live = max(block.kept + block.attention + block.transient for block in blocks)
    if runtime_bytes is None:
        runtime_bytes = CPU_RUNTIME if backend == "cpu" else ASCEND_RUNTIME
    return MemoryPlan(weights=params * (FLOAT32 + (compute_bytes if compute_bytes != FLOAT32 else 0)),
                      gradients=0, optimizer=0, ema=0, activations=0, attention=0,
                      transient=int(INFERENCE_LIVE_SHARE * live),
                      graph=CPU_INFERENCE_GRAPH_PER_BLOCK * len(configs) if backend == "cpu" else 0,
                      runtime=runtime_bytes)


def largest_batch(model_args: Dict[str, Any], budget_bytes: int, limit: int = 4096,
                  planner: Callable[..., MemoryPlan] = plan_memory, **options: Any) -> int:
    """The largest per-device batch, at most ``limit``, whose plan fits ``budget_bytes`` (0: not even one image).

    ``planner`` is :func:`plan_memory` (a training step) or :func:`plan_inference_memory`, and
    ``options`` its arguments. The plan grows with the batch, so a doubling then a bisection finds it.
    """
    def fits(batch: int) -> bool:
        return planner(model_args, batch_size=batch, **options).total <= budget_bytes

    if not fits(1):
        return 0
    low = 1
    while low < limit and fits(min(2 * low, limit)):
        low = min(2 * low, limit)
    high = min(2 * low, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def model_arguments(model: str, img_size: Optional[int] = None, window_size: Optional[int] = None,
                    sequential_attention: int = 0, sequential_attention_heads: int = 0,
                    **overrides: Any) -> Dict[str, Any]:
    """The :class:`SwinTransformerV2` arguments of a registered variant at another geometry."""
    args = model_spec(model).model_kwargs()
    args.update({key: value for key, value in dict(img_size=img_size, window_size=window_size).items()
                 if value is not None})
    args.update(overrides, sequential_attention=sequential_attention,
                sequential_attention_heads=sequential_attention_heads)
    return args


# The table of docs/memory_plan.md: (model, pre-training window) per size, at the paper's windows.
TABLE_MODELS = ("swinv2_tiny_window8_256", "swinv2_small_window8_256", "swinv2_base_window12_192",
                "swinv2_large_window12_192", "swinv2_huge_window12_192", "swinv2_giant_window12_192")
TABLE_SIZES = ((192, 12), (256, 16), (384, 24), (640, 40), (1536, 32))
# (column title, plan options): what each column of the table changes.
TABLE_SETTINGS = (
    ("plain", {}),
    ("recompute", {"recompute": True}),
    ("seq 16", {"sequential": 16}),
    ("recompute + seq 16", {"recompute": True, "sequential": 16}),
    ("recompute + seq + ZeRO-1/8", {"recompute": True, "sequential": 16, "zero_ranks": 8}),
    ("recompute + seq + ZeRO-1/64", {"recompute": True, "sequential": 16, "zero_ranks": 64}),
)


def largest_batch_table(device: str, amp_level: str = "O2") -> str:
    """Markdown: the largest batch per ``device`` card for every table model, size and setting."""
    header = "| model | size / window | " + " | ".join(title for title, _ in TABLE_SETTINGS) + " |"
    lines = [f"### {device} ({DEVICES[device] // GIB} GB), AMP {amp_level}, AdamW, EMA off", "", header,
             "|---|---|" + "---|" * len(TABLE_SETTINGS)]
    for model in TABLE_MODELS:
        for size, window in TABLE_SIZES:
            cells = []
            for _, setting in TABLE_SETTINGS:
                setting = dict(setting)
                args = model_arguments(model, size, window, sequential_attention=setting.pop("sequential", 0))
                cells.append(str(largest_batch(args, DEVICES[device], amp_level=amp_level, **setting)))
            lines.append(f"| {model} | {size} / {window} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mindswin.memory_plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swinv2_tiny_window8_256", help="registered model name")
    parser.add_argument("--img_size", type=int, help="input side (default: the model's)")
    parser.add_argument("--window_size", type=int, help="attention window (default: the model's)")
    parser.add_argument("--batch_size", type=int, default=1, help="images per device")
    parser.add_argument("--amp_level", default="O0", choices=("O0", "O2"))
    parser.add_argument("--recompute", action="store_true", help="activation checkpointing per block")
    parser.add_argument("--sequential_attention", type=int, default=0, help="windows per group (0: batched)")
    parser.add_argument("--sequential_attention_heads", type=int, default=0, help="heads per group (0: all)")
    parser.add_argument("--zero_ranks", type=int, default=1, help="ranks the optimizer state is sharded over")
    parser.add_argument("--ema", action="store_true", help="an EMA copy of the weights")
    parser.add_argument("--backend", default="ascend", choices=BACKENDS)
    parser.add_argument("--device", choices=tuple(DEVICES), help="also print the largest batch that fits this card")
    parser.add_argument("--table", nargs="+", choices=tuple(DEVICES), help="print the largest-batch table instead")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.table:
        print("\n".join(largest_batch_table(device, args.amp_level if args.amp_level != "O0" else "O2")
                        for device in args.table))
        return 0
    try:
        model_args = model_arguments(args.model, args.img_size, args.window_size, args.sequential_attention,
                                     args.sequential_attention_heads)
        options = dict(amp_level=args.amp_level, recompute=args.recompute, zero_ranks=args.zero_ranks, ema=args.ema,
                       backend=args.backend)
        plan = plan_memory(model_args, batch_size=args.batch_size, **options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.model} at {model_args['img_size']} px / window {model_args['window_size']}, batch "
          f"{args.batch_size} per device, {args.backend}:")
    print(plan.format())
    if args.device:
        budget = DEVICES[args.device]
        verdict = "fits" if plan.total <= budget else "does NOT fit"
        print(f"{args.device} ({budget // GIB} GB): {verdict}; largest batch that fits: "
              f"{largest_batch(model_args, budget, **options)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
