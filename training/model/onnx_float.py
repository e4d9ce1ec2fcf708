"""A float32 copy of a dynamically quantised (INT8) ONNX model.

The offline CLIP tower is quantised the way onnxruntime's `quantize_dynamic`
does it: each MatMul became

    x -> DynamicQuantizeLinear -> MatMulInteger(xq, Wq, x_zp, W_zp) -> Cast -> Mul(x_scale * W_scale)

`DynamicQuantizeLinear` picks one scale for the whole input tensor, so an
image's embedding depends on the other images in its batch (up to 0.08 abs
between batch 8 and batch 1 here). Rewriting each pattern as
`MatMul(x, (Wq - W_zp) * W_scale)` gives a float32 model with the same
(int8-rounded) weights whose output for an image does not depend on its
batch-mates. Which of the two is faster is measured by `dmguard bench
--compare-encoder` (docs/operations.md); `dmguard models --float32` makes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dequantize_model(src: Path, dst: Path) -> dict:
    """Write the float32 model to `dst`; returns counts of what was rewritten."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ImportError("dequantize_model needs the onnx package: pip install onnx") from e

    model = onnx.load(str(src))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {init.name: init for init in graph.initializer}

    drop, new_inits, replaced = set(), [], 0
    replacements = {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        xq, wq_name, _, wzp_name = node.input
        quantize = producer[xq]
        (cast,) = consumers[node.output[0]]
        (rescale,) = consumers[cast.output[0]]
        scales = producer[[i for i in rescale.input if i != cast.output[0]][0]]
        ws_name = next(i for i in scales.input if i in inits)
        if (
            quantize.op_type != "DynamicQuantizeLinear"
            or cast.op_type != "Cast"
            or rescale.op_type != "Mul"
        ):
            raise ValueError(f"unexpected pattern around {node.name}")
        wq = numpy_helper.to_array(inits[wq_name]).astype(np.float32)
        wzp = numpy_helper.to_array(inits[wzp_name]).astype(np.float32)
        ws = numpy_helper.to_array(inits[ws_name]).astype(np.float32)
        weight = ((wq - wzp) * ws).astype(np.float32)
        name = wq_name.removesuffix("_quantized") + "_float"
        new_inits.append(numpy_helper.from_array(weight, name))
        replacements[id(rescale)] = helper.make_node(
            "MatMul", [quantize.input[0], name], list(rescale.output), name=node.name + "_float"
        )
        drop.update((id(node), id(cast)))
        replaced += 1

    nodes = [replacements.get(id(n), n) for n in graph.node if id(n) not in drop]
    nodes = _without_dead_nodes(nodes, {o.name for o in graph.output})
    used = {i for n in nodes for i in n.input}
    kept = [i for i in list(graph.initializer) + new_inits if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".part")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    ops = {n.op_type for n in nodes}
    return {
        "matmuls_rewritten": replaced,
        "int8_ops_left": sorted(ops & {"MatMulInteger", "DynamicQuantizeLinear"}),
    }


def _without_dead_nodes(nodes: list, outputs: set[str]) -> list:
    """Drop nodes none of whose outputs is used (repeatedly), keeping graph order."""
    while True:
        used = outputs | {i for n in nodes for i in n.input}
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive
