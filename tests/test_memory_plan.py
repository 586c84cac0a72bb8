"""The memory plan: what each part counts, how the options move it, the largest batch and the command.

The plan's agreement with measured peaks is a benchmark (``bench/memory_plan_check.py``,
docs/memory_plan.md), not a test: a peak RSS depends on the machine and the allocator.
"""
import os

import pytest

from mindswin.memory_plan import (
    CPU_GRAPH_PER_BLOCK,
    CPU_GRAPH_PER_CHECKPOINTED_BLOCK,
    CPU_GRAPH_PER_CHECKPOINTED_CORE,
    CPU_GRAPH_PER_GROUP_SCORE_BYTE,
    CPU_GRAPH_PER_SEQUENTIAL_GROUP,
    DEVICES,
    FLOAT32,
    GIB,
    block_memory,
    largest_batch,
    largest_batch_table,
    main,
    model_arguments,
    plan_memory,
    sequential_groups,
)
from mindswin.models.flops import count_parameters
from mindswin.models.swin_v2 import BlockConfig, stage_block_configs

TINY_64 = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
               num_classes=10)


def test_state_parts_follow_the_parameter_count_and_zero_ranks():
    params = count_parameters(**TINY_64)
    plan = plan_memory(TINY_64)
    assert (plan.weights, plan.gradients, plan.optimizer, plan.ema) == (4 * params, 4 * params, 8 * params, 0)
    sharded = plan_memory(TINY_64, zero_ranks=8, ema=True)
    assert sharded.optimizer == -(-8 * params // 8) and sharded.ema == 4 * params
    assert (sharded.activations, sharded.attention) == (plan.activations, plan.attention)
    assert plan_memory(TINY_64, amp_level="O2").weights == 6 * params  # float32 master + float16 copy


def test_one_block_counted_by_hand():
    # 8 x 8 map, window 4 (4 windows of 16 tokens), shifted, 2 heads, C = 16, batch 3.
    config = BlockConfig(16, (8, 8), 2, (4, 4), (2, 2))
    block = block_memory(config, 3, "ascend", FLOAT32)
    tokens, c, hidden, scores = 3 * 64, 16, 64, 3 * 4 * 2 * 16 * 16
    assert block.kept == tokens * c * (3 + 3 + 6 + 2) * 4 + tokens * hidden * 2 * 4
    bias = 4 * 2 * 16 * 16 * 4  # bias-plus-mask per window and head (one per image)
    # probabilities + bias + the CPB MLP's hidden layer (7 x 7 offsets x 512)
    assert block.attention == scores * 4 + bias + 7 * 7 * 512 * 4
    mask = 4 * 16 * 16 * 4  # made from its factors while the bias is built
    assert block.transient == max(2 * scores * 4 + 2 * bias + mask, tokens * hidden * 8)
    # the fused CPU kernel adds the (heads, N, N) bias and the mask row by row, never their sum;
    # its backward sums the bias gradient from 5 per-thread copies
    cpu = block_memory(config, 3, "cpu", FLOAT32, cpu_threads=5)
    position_bias = 2 * 16 * 16 * 4
    assert cpu.attention == scores * 4 + position_bias + mask + 7 * 7 * 512 * 4
    assert cpu.transient == max(2 * scores * 4 + 2 * position_bias + mask + 5 * position_bias, tokens * hidden * 8)
    assert block.block_input == tokens * c * 4


def test_padding_is_counted_in_the_windowed_tensors():
    unpadded = block_memory(BlockConfig(16, (8, 8), 2, (4, 4), (0, 0)), 1, "ascend", FLOAT32)
    padded = block_memory(BlockConfig(16, (10, 10), 2, (4, 4), (0, 0)), 1, "ascend", FLOAT32)
    # 10 x 10 pads to 12 x 12: 9 windows instead of 4; the MLP sees 100 tokens, not 144.
    assert padded.attention == 9 * 2 * 16 * 16 * 4 + 2 * 16 * 16 * 4 + 7 * 7 * 512 * 4
    windowed_per_token = 11 * 16 * 4  # qkv input, q/k/v, proj input and the normalisation operands
    rest_per_token = 16 * 3 * 4 + 64 * 2 * 4
    assert padded.kept == 144 * windowed_per_token + 100 * rest_per_token
    assert unpadded.kept == 64 * (windowed_per_token + rest_per_token)


def test_sequential_attention_keeps_no_probabilities_and_one_group_at_a_time():
    batched = plan_memory(TINY_64, batch_size=4)
    sequential = plan_memory({**TINY_64, "sequential_attention": 1, "sequential_attention_heads": 1}, batch_size=4)
    position_biases = sum(config.num_heads * 16 * 16 * 4 + 7 * 7 * 512 * 4  # (h, N, N) and the CPB hidden layer
                          for stage in stage_block_configs(**TINY_64) for config in stage)
    assert sequential.attention == position_biases < batched.attention
    assert sequential.activations == batched.activations


def test_cpu_attention_kernel_keeps_no_probabilities_and_stands_in_for_sequential_attention():
    # window 12 at 96 px: a 24 x 24 map of 4 windows of 144 tokens, then 12 x 12, one window
    window12 = dict(TINY_64, img_size=96, window_size=12)
    batched = plan_memory(window12, batch_size=4, backend="cpu")
    position_biases = sum(config.num_heads * 144 * 144 * 4 + 23 * 23 * 512 * 4
                          for stage in stage_block_configs(**window12) for config in stage)
    assert batched.attention == position_biases
    # one (window, head) pair at a time per thread already: no groups, nor their graph
    assert plan_memory({**window12, "sequential_attention": 1}, batch_size=4, backend="cpu") == batched
    # float16 matmuls (AMP O2) and Ascend take MindSpore's ops, which keep the probabilities
    assert plan_memory(window12, batch_size=4, backend="cpu", amp_level="O2").attention > position_biases
    assert plan_memory(window12, batch_size=4).attention > position_biases


@pytest.mark.parametrize("backend", ["ascend", "cpu"])
def test_recompute_keeps_block_inputs_and_reruns_one_block(backend):
    plain = plan_memory(TINY_64, batch_size=8, backend=backend)
    checkpointed = plan_memory(TINY_64, batch_size=8, recompute=True, backend=backend)
    configs = [c for stage in stage_block_configs(**TINY_64) for c in stage]
    inputs = sum(8 * c.input_resolution[0] * c.input_resolution[1] * c.dim * 4 for c in configs)
    assert checkpointed.attention == 0  # each block's is in its rerun's transient
    assert checkpointed.activations - inputs == plain.activations - sum(
        block_memory(c, 8, backend, 4, os.cpu_count() or 1).kept for c in configs)
    blocks = [block_memory(c, 8, backend, 4, os.cpu_count() or 1) for c in configs]
    assert checkpointed.transient == max(b.kept + b.attention + b.transient for b in blocks)
    # what the step holds falls; on CPU the graph grows by the reruns (test_cpu_graph_...)
    assert checkpointed.total - checkpointed.graph < plain.total - plain.graph


def test_cpu_graph_grows_with_blocks_reruns_and_sequential_groups():
    blocks = 4  # TINY_64: depths 2, 2
    assert plan_memory(TINY_64).graph == 0  # on Ascend the graph is in host memory, not on the card
    assert plan_memory(TINY_64, backend="cpu").graph == blocks * CPU_GRAPH_PER_BLOCK
    assert plan_memory(TINY_64, backend="cpu", recompute=True).graph == blocks * CPU_GRAPH_PER_CHECKPOINTED_BLOCK
    one_by_one = {**TINY_64, "sequential_attention": 1, "sequential_attention_heads": 1}
    # 16 x 16 map, window 4: 16 windows x 2 heads per stage-1 block; 8 x 8: 4 windows x 4 heads
    groups = 2 * 16 * 2 + 2 * 4 * 4
    assert [sequential_groups(c) for stage in stage_block_configs(**one_by_one) for c in stage] == [32, 32, 16, 16]
    # each group's graph grows with its float32 scores: one window, one head, 16 x 16 tokens
    per_group = CPU_GRAPH_PER_SEQUENTIAL_GROUP + int(CPU_GRAPH_PER_GROUP_SCORE_BYTE * 16 * 16 * 4)
    assert plan_memory(one_by_one, backend="cpu").graph == blocks * CPU_GRAPH_PER_BLOCK + groups * per_group
    assert plan_memory(one_by_one, backend="cpu", recompute=True).graph == blocks * (
        CPU_GRAPH_PER_CHECKPOINTED_BLOCK + CPU_GRAPH_PER_CHECKPOINTED_CORE) + groups * per_group
    # one group per block: windows and heads both whole
    whole = {**TINY_64, "sequential_attention": 16}
    assert [sequential_groups(c) for stage in stage_block_configs(**whole) for c in stage] == [1, 1, 1, 1]


def test_recompute_counts_single_group_attention_as_batched():
    # TINY_64's maps have 16 and 4 windows: groups of 16 windows are one group per block, and a
    # checkpointed block then attends in one batch (the model does the same, test_sequential_attention)
    one_group = {**TINY_64, "sequential_attention": 16}
    for backend in ("ascend", "cpu"):
        assert plan_memory(one_group, recompute=True, backend=backend) == plan_memory(TINY_64, recompute=True,
                                                                                        backend=backend)
        assert plan_memory(one_group, backend=backend) != plan_memory(TINY_64, backend=backend)
    split = {**TINY_64, "sequential_attention": 4}  # 4 groups in stage 1, one in stage 2
    per_group = CPU_GRAPH_PER_SEQUENTIAL_GROUP + int(CPU_GRAPH_PER_GROUP_SCORE_BYTE * 4 * 2 * 16 * 16 * 4)
    assert plan_memory(split, recompute=True, backend="cpu").graph == 4 * CPU_GRAPH_PER_CHECKPOINTED_BLOCK + \
        2 * (CPU_GRAPH_PER_CHECKPOINTED_CORE + 4 * per_group)


def test_amp_halves_the_matmul_operands():
    full, half = plan_memory(TINY_64, batch_size=4), plan_memory(TINY_64, batch_size=4, amp_level="O2")
    assert half.activations < full.activations
    with pytest.raises(ValueError, match="amp_level"):
        plan_memory(TINY_64, amp_level="O3")
    with pytest.raises(ValueError, match="backend"):
        plan_memory(TINY_64, backend="gpu")


def test_largest_batch_is_the_boundary():
    budget = plan_memory(TINY_64, batch_size=37).total
    found = largest_batch(TINY_64, budget)
    assert found == 37
    assert plan_memory(TINY_64, batch_size=found + 1).total > budget
    assert largest_batch(TINY_64, plan_memory(TINY_64).total - 1) == 0


def test_paper_sizes_on_ascend_cards():
    giant = model_arguments("swinv2_giant_window12_192", 1536, 32, sequential_attention=16)
    # 3.0B float32 weights + gradients + a float16 copy alone exceed a 32 GB card.
    assert largest_batch(giant, DEVICES["910A"], amp_level="O2", recompute=True, zero_ranks=64) == 0
    assert largest_batch(giant, DEVICES["910B"], amp_level="O2", recompute=True, zero_ranks=64) >= 1
    base = model_arguments("swinv2_base_window12_192", 384, 24)
    # Swin-B at 384 px, batch 64: recompute is what makes it fit a 910A.
    assert plan_memory(base, batch_size=64, amp_level="O2").total > DEVICES["910A"]
    assert plan_memory(base, batch_size=64, amp_level="O2", recompute=True).total <= DEVICES["910A"]


def test_table_has_every_model_and_size():
    table = largest_batch_table("910B")
    assert table.count("| swinv2_") == 6 * 5 and "1536 / 32" in table


def test_command_prints_the_breakdown_and_the_verdict(capsys):
    assert main(["--model", "swinv2_base_window12_192", "--img_size", "384", "--window_size", "24",
                 "--batch_size", "64", "--amp_level", "O2", "--recompute", "--device", "910A"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "gradients", "optimizer", "activations", "attention", "graph", "total",
                 "910A (32 GB): fits"):
        assert part in out
    assert main(["--model", "swinv2_nonexistent"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["--img_size", "102"]) == 2  # not a multiple of the patch
    assert "img_size 102: it is not a multiple of the patch size 4" in capsys.readouterr().err
    assert GIB == 2 ** 30
