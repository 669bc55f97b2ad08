"""Store an ONNX model's large weights as float16 while it still computes in float32.

Bundles are committed to git and must stay small, but CPU runtimes (tract, onnxruntime)
are fastest and most accurate in float32, and a full float16 graph would change every
activation's precision. Storing only the *weights* as float16 halves the file and costs one
rounding of each weight (relative error <= 2^-11), while all arithmetic stays float32:

    before:  initializer W (float32) ------------------------------> Conv
    after:   initializer W__fp16 (float16) -> Cast(to=FLOAT) -> W --> Conv

The Cast node produces the original name, so no consumer changes; a runtime folds the Cast
once when it loads the model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Suffix of the float16 initializers; the Cast output keeps the original name.
FP16_SUFFIX = "__fp16"

#: Smallest initializer (in values) worth storing as float16: below it the Cast node costs
#: more bytes than it saves. ``make_parity_fixture.py`` rounds the same tensors.
MIN_ELEMENTS = 1024


def store_weights_as_fp16(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite ``model`` in place; returns how many initializers were converted.

    Only float32 initializers with at least ``min_elements`` values are converted: small
    ones (biases, BatchNorm-folded shifts) save nothing worth an extra node and their
    precision matters more per byte. Values beyond float16's range would become infinite,
    so such a tensor is refused instead of silently corrupted.
    """
    graph = model.graph
    cast_nodes = []
    kept = []
    converted = 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        if np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError(f"initializer {init.name!r} exceeds float16 range")
        half = numpy_helper.from_array(values.astype(np.float16), init.name + FP16_SUFFIX)
        kept.append(half)
        cast_nodes.append(
            helper.make_node(
                "Cast",
                [half.name],
                [init.name],
                to=TensorProto.FLOAT,
                name=f"cast_{init.name}",
            )
        )
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Casts go first so the node list stays topologically sorted.
    nodes = cast_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted
