"""What the Python scripts here share: video frames as the detector sees them, Ultralytics'
letterbox, and an ONNX Runtime session set up as the detector's (2 threads, all optimisations).
Imported from beside them (a script's own folder is on Python's path)."""

import subprocess

import cv2
import numpy as np

SIZE = 640


def ffmpeg_frames(path, w=None, h=None):
    """BGR frames of a video as the ffmpeg CLI decodes them (the libavcodec the detector's OpenCV
    reads through); the size is probed when not given."""
    if w is None or h is None:
        cap = cv2.VideoCapture(path)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()
    p = subprocess.Popen(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         stdout=subprocess.PIPE)
    size = w * h * 3
    try:
        while True:
            buf = p.stdout.read(size)
            if len(buf) < size:
                break
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        p.kill()
        p.wait()


def letterbox(img, size=SIZE, stride=None):
    """Ultralytics LetterBox(scaleup=True, center=True): HWC RGB uint8; square (auto=False) unless
    a stride is given, then the smallest stride-multiple rectangle (auto=True)."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))  # Python round: half to even, like Ultralytics
    dw, dh = size - nw, size - nh
    if stride:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (nw, nh):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return np.ascontiguousarray(img[:, :, ::-1])


def to_input(lb):
    """A letterboxed frame (or a stack of them) as the model's input: NCHW float32 in [0, 1]."""
    x = lb[None] if lb.ndim == 3 else lb
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
