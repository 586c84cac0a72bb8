"""Mixed precision levels for mindswin models.

mindswin implements AMP explicitly instead of through ``mindspore.amp.auto_mixed_precision``
(whose O2 casts every cell, including the L2 normalisation whose epsilon underflows in
float16, and whose loss-scale cell does not run on CPU):

* ``O0``: everything in float32.
* ``O2``: every matmul (patch projection, qkv/proj/MLP linears, ``q @ k^T``, ``attn @ v``,
  patch merging, head) runs in float16 (or bfloat16); LayerNorm, the q/k normalisation,
  the logit scale, the CPB MLP and its sigmoid, and the softmax stay in float32, as do the
  master weights, the residual stream and the logits.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

from .config import choices
from .models.layers import set_compute_dtype

__all__ = ["AMP_LEVELS", "AMP_DTYPES", "apply_amp"]

AMP_LEVELS = choices("amp_level")
# The allowed amp_dtype names are MindSpore's own dtype names.
AMP_DTYPES = {name: getattr(ms, name) for name in choices("amp_dtype")}


def apply_amp(model: nn.Cell, amp_level: str = "O0", amp_dtype: str = "float16") -> nn.Cell:
    """Set ``model``'s compute precision for ``amp_level`` (in place; returns ``model``)."""
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {AMP_LEVELS}, got {amp_level!r} (O1/O3 are not offered: "
                         "O2 already keeps the numerically sensitive parts in float32)")
    if model.compile_cache:
        # Graph mode keys compiled graphs by cell and inputs, not by Python attributes: a
        # dtype switch after the first call would be silently ignored.
        raise RuntimeError("apply_amp must be called before the model is first run in graph mode; "
                           "create the model, call apply_amp, then run it")
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {tuple(AMP_DTYPES)}, got {amp_dtype!r}")
    return set_compute_dtype(model, ms.float32 if amp_level == "O0" else AMP_DTYPES[amp_dtype])
