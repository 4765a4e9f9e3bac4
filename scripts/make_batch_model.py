"""Make a dynamic-batch copy of a static (batch 1) Ultralytics YOLO ONNX export, by graph surgery.

Run by scripts/make_batch_model.sh:
    python make_batch_model.py IN.onnx OUT.onnx

Why surgery and not a re-export: `yolo export dynamic=True` needs Ultralytics + PyTorch (~6 GB), and
the weights are all here already. Only the places where the exporter froze the batch size 1 change:
the graph input/output shapes, and the constant `shape` inputs of Reshape nodes. The simplified
YOLO11 export has no Shape/Gather/Expand/Tile; its other constants with a leading 1 (anchors,
strides) broadcast over any batch as they are. Weights, node order and metadata_props are kept.
"""

import sys

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

BATCH = "batch"


def dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def inferred_shapes(model):
    g = shape_inference.infer_shapes(model, strict_mode=True).graph
    return {vi.name: dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}


def main(src, dst):
    m = onnx.load(src)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    static = inferred_shapes(m)

    # These would need hand inspection (they can compute or bake in a batch size); none is expected.
    for n in g.node:
        assert n.op_type not in ("Shape", "Expand", "Tile", "ConstantOfShape", "Range", "Constant"), n.name

    # A Reshape target [1, ...] applied to an input whose dim 0 is 1 can become [0, ...]: with
    # allowzero=0, 0 copies the input's dim 0, so at batch 1 nothing changes, and it coexists with the
    # -1 most of these targets already use (a second -1 would be illegal). Whether that dim 0 really
    # is the batch is checked below by shape inference, not assumed.
    rewritten = []
    for n in g.node:
        if n.op_type != "Reshape":
            continue
        assert n.input[1] in inits, f"{n.name}: shape is computed, not a constant"
        assert not any(a.name == "allowzero" and a.i for a in n.attribute), n.name
        target = numpy_helper.to_array(inits[n.input[1]])
        if target[0] == 1 and static[n.input[0]][0] == 1:
            rewritten.append(n)
            print(f"{n.name}: {n.input[1]} {target.tolist()} -> [0, {', '.join(map(str, target[1:]))}]")
    for name in {n.input[1] for n in rewritten}:
        # Shape constants are shared (one [1, 51, -1] serves 4 Reshapes): all users must be rewritten ones.
        users = [n for n in g.node if name in n.input]
        assert all(u in rewritten for u in users), name
        target = numpy_helper.to_array(inits[name]).copy()
        target[0] = 0
        inits[name].CopyFrom(numpy_helper.from_array(target.astype(np.int64), name))

    out_dims = {vi.name: dims(vi) for vi in g.output}
    for vi in list(g.input) + list(g.output):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_param = BATCH
    # The exporter's value_info records every intermediate shape with batch 1: stale now.
    del g.value_info[:]

    # Check by inference at a concrete batch of 3 (declared output shape hidden): every intermediate
    # tensor, so every rewritten Reshape's input, must come out with dim 0 = 3, and the output as
    # [3, 56, 8400]. A batch-1 constant left anywhere would show up as a 1 or a shape error. (With a
    # symbolic dim, onnx's Resize inference turns dim 0 into an anonymous one, so it proves less.)
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    for vi in probe.graph.output:
        vi.type.tensor_type.ClearField("shape")
    shapes = inferred_shapes(probe)
    bad = {k: v for k, v in shapes.items() if k not in inits and v[:1] != [3]}
    assert not bad, bad
    for vi in g.output:
        assert shapes[vi.name] == [3] + out_dims[vi.name][1:], (vi.name, shapes[vi.name])
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, dst)
    print(f"{len(rewritten)} Reshape nodes rewritten; {dst}: at batch 3, output {shapes[g.output[0].name]}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
