"""Synthetic YOLO-layout models: output = constant + 0 * sum(images), so ONNX Runtime runs a real
graph on the real input while the output stays known. See tests/tests/detector_layouts.rs."""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 320


def model(name, rows, metadata):
    out = np.asarray(rows, dtype=np.float32)[None]  # [1, R, C]
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=1),  # [1,1,1,1]
        helper.make_node("Reshape", ["total", "shape111"], ["total3"]),     # [1,1,1]
        helper.make_node("Mul", ["total3", "zero"], ["nothing"]),
        helper.make_node("Add", ["fixed", "nothing"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(out, "fixed"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape111"),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_test_models.py")
    m.ir_version = 8
    for k, v in metadata.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    return m


def four_thirds_only(rows, metadata):
    """Dynamic batch, height and width, as models/yolo11n-pose-rect.onnx, with a fixed output of the
    end-to-end layout; but the graph also reshapes its input to one 640x480 frame, so ONNX Runtime
    fails on any other input: a frame of another aspect (16:9 is 640x384), or two frames at once.
    See tests/tests/detector_cameras.rs (a camera's inference errors stay its own)."""
    out = np.asarray(rows, dtype=np.float32)[None]  # [1, R, C]
    nodes = [
        helper.make_node("Reshape", ["images", "one_4_3"], ["one"]),                  # fails unless [1,3,480,640]
        helper.make_node("ReduceSum", ["one"], ["check"], keepdims=1),                # [1,1,1,1]
        helper.make_node("ReduceSum", ["images", "axes123"], ["per_frame"], keepdims=1),  # [N,1,1,1]
        helper.make_node("Add", ["per_frame", "check"], ["both"]),
        helper.make_node("Reshape", ["both", "shape_n11"], ["both3"]),               # [N,1,1]
        helper.make_node("Mul", ["both3", "zero"], ["nothing"]),
        helper.make_node("Add", ["fixed", "nothing"], ["output0"]),                   # [N,R,C]
    ]
    inits = [
        numpy_helper.from_array(out, "fixed"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
        numpy_helper.from_array(np.array([1, 3, 480, 640], np.int64), "one_4_3"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes123"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_n11"),
    ]
    graph = helper.make_graph(
        nodes, "four_thirds_only",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", out.shape[1], out.shape[2]])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_test_models.py")
    m.ir_version = 8
    for k, v in metadata.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    return m


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # YOLOv5 [1, anchors, 5 + classes]: cx, cy, w, h, objectness, person, car (rows > columns).
    v5 = [
        [100, 100, 20, 40, 0.9, 0.8, 0.1],  # person 0.72
        [102, 100, 20, 40, 0.9, 0.5, 0.1],  # person 0.45, overlaps the first: suppressed
        [250, 250, 10, 10, 0.9, 0.1, 0.9],  # a car
        [300, 300, 10, 10, 0.2, 1.0, 0.0],  # objectness under the threshold
    ] + [[0] * 7] * 12
    onnx.save(model("v5", v5, {"names": "{0: 'person', 1: 'car'}"}), out / "yolov5-layout.onnx")
    # End-to-end [1, 300, 6]: x1, y1, x2, y2, score, class; already suppressed, zero padding.
    e2e = [
        [20, 60, 60, 140, 0.5, 0],
        [24, 60, 64, 140, 0.9, 0],  # overlaps the first and stays: no NMS on end-to-end output
        [200, 200, 260, 300, 0.8, 1],
    ] + [[0] * 6] * 297
    onnx.save(model("e2e", e2e, {"names": "{0: 'person', 1: 'car'}"}), out / "end2end-layout.onnx")
    # One person in every 4:3 frame; an ONNX Runtime error on any other input.
    one_person = [[100, 100, 200, 300, 0.9, 0]] + [[0] * 6] * 299
    rect_meta = {"names": "{0: 'person', 1: 'car'}", "imgsz": "[640, 640]", "stride": "32"}
    onnx.save(four_thirds_only(one_person, rect_meta), out / "four-thirds-only.onnx")
    # No YOLO layout: [1, 3, 3].
    onnx.save(model("unknown", [[0] * 3] * 3, {}), out / "unknown-layout.onnx")


if __name__ == "__main__":
    main(sys.argv[1])
