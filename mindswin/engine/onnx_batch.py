"""ONNX with a dynamic batch from MindSpore's fixed-shape exporter.

MindSpore 2.10 exports ONNX only for a static input shape, and its graph carries the batch
inside shape constants (the targets of ``Reshape`` and ``Expand``, e.g. ``B x 256`` tokens)
and inside constants it folded at full size (``ones_like`` of an activation). The graph is
exported twice, at two batch sizes, and compared:

* an integer constant whose entries differ is a shape: each differing entry must be the
  batch times one integer factor in both files (``2 x 256`` and ``3 x 256``), and is then
  computed in the graph from the input's batch (``Shape -> Gather -> Mul -> Add``);
* a float constant that differs must be one value repeated (a folded ``ones_like``); it
  becomes a single broadcast element;
* anything else that differs, or graphs that differ in their operators, is refused: the
  rewrite could not be proven right.

The result is checked by ``onnx.checker`` and its input and output take any batch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["BatchRewriteError", "batch_dynamic_model"]

BATCH_DIM = "batch"


class BatchRewriteError(ValueError):
    """The two exports cannot be merged into one dynamic-batch graph (named tensor, why)."""


def _constants(model: Any) -> Dict[str, Tuple[np.ndarray, Any]]:
    """Every constant tensor of the graph by output name: initializers and ``Constant`` nodes."""
    from onnx import numpy_helper

    found = {init.name: (numpy_helper.to_array(init), init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = (numpy_helper.to_array(node.attribute[0].t), node)
    return found


def _batch_factors(name: str, small: np.ndarray, large: np.ndarray, batches: Tuple[int, int]) -> np.ndarray:
    """Per entry of an integer shape constant: its multiple of the batch (0 where it does not depend on it)."""
    if small.shape != large.shape:
        raise BatchRewriteError(f"constant {name} changes shape with the batch ({small.shape} vs {large.shape})")
    factors = np.zeros(small.shape, np.int64)
    moved = small != large
    for index in zip(*np.nonzero(moved)):
        a, b = int(small[index]), int(large[index])
        if a % batches[0] or b % batches[1] or a // batches[0] != b // batches[1]:
            raise BatchRewriteError(f"constant {name} entry {index} is {a} at batch {batches[0]} and {b} at batch "
                                    f"{batches[1]}: not one multiple of the batch")
        factors[index] = a // batches[0]
    return factors


def batch_dynamic_model(small: Any, large: Any, batches: Tuple[int, int]) -> Any:
    """``small`` (exported at ``batches[0]``) rewritten to take any batch, proven against ``large``.

    Args:
        small, large: ``onnx.ModelProto`` of the same cell exported at the two batch sizes.
        batches: The two batch sizes (different, both above 1, so that no size-1 axis of the
            model is taken for the batch).

    Raises:
        BatchRewriteError: the graphs differ otherwise than in batch-sized constants.
    """
    import onnx
    from onnx import helper, numpy_helper

    if batches[0] == batches[1] or min(batches) < 2:
        raise ValueError(f"two different batch sizes above 1 are needed, got {batches}")
    if [(n.op_type, list(n.input), list(n.output)) for n in small.graph.node] != \
            [(n.op_type, list(n.input), list(n.output)) for n in large.graph.node]:
        raise BatchRewriteError("the exports at two batch sizes have different operators: the batch is not only "
                                "in constants")
    input_name = small.graph.input[0].name
    before: List[Any] = [
        helper.make_node("Shape", [input_name], ["batch_dynamic/shape"]),
        helper.make_node("Gather", ["batch_dynamic/shape", "batch_dynamic/zero"], ["batch_dynamic/batch"], axis=0),
    ]
    extra_initializers = [numpy_helper.from_array(np.zeros(1, np.int64), "batch_dynamic/zero")]
    replaced: Dict[str, Any] = {}  # constant output name -> its old holder (initializer or node), to drop
    theirs = _constants(large)
    for name, (value, holder) in _constants(small).items():
        other = theirs[name][0]
        if value.shape == other.shape and np.array_equal(value, other):
            continue
        if np.issubdtype(value.dtype, np.integer):
            factors = _batch_factors(name, value, other, batches)
            fixed = np.where(factors != 0, 0, value).astype(value.dtype)
            stem = f"batch_dynamic/{len(replaced)}"
            extra_initializers += [numpy_helper.from_array(factors.astype(value.dtype), f"{stem}/factors"),
                                   numpy_helper.from_array(fixed, f"{stem}/fixed")]
            batch = "batch_dynamic/batch"
            if value.dtype != np.int64:
                before.append(helper.make_node("Cast", [batch], [f"{stem}/batch"],
                                               to=helper.np_dtype_to_tensor_dtype(value.dtype)))
                batch = f"{stem}/batch"
            before += [helper.make_node("Mul", [batch, f"{stem}/factors"], [f"{stem}/scaled"]),
                       helper.make_node("Add", [f"{stem}/scaled", f"{stem}/fixed"], [name])]
        elif np.all(value == value.flat[0]) and np.all(other == value.flat[0]):
            # a folded ones_like (or full_like): one element broadcasts to the same result
            extra_initializers.append(numpy_helper.from_array(value.reshape(-1)[:1].reshape((1,) * value.ndim),
                                                              name))
        else:
            raise BatchRewriteError(f"constant {name} ({value.dtype}, shape {value.shape}) holds batch-dependent "
                                    "values that are not a shape")
        replaced[name] = holder
    graph = small.graph
    kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in replaced)]
    kept_initializers = [i for i in graph.initializer if i.name not in replaced]
    del graph.node[:]
    graph.node.extend(before + kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers + extra_initializers)
    del graph.value_info[:]  # intermediate shapes were written for the export's batch
    for tensor in list(graph.input) + list(graph.output):
        dim = tensor.type.tensor_type.shape.dim[0]
        if dim.dim_value != batches[0]:
            raise BatchRewriteError(f"{tensor.name}'s first axis is {dim.dim_value}, not the batch {batches[0]}")
        dim.Clear()
        dim.dim_param = BATCH_DIM
    onnx.checker.check_model(small)
    return small
