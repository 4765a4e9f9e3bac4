"""Static int8 (QDQ) quantization of the YOLO11n-pose ONNX model, and its check against fp32.

Run by scripts/quantize_model.sh (which makes the virtualenv). Defaults are the chosen recipe:
    python quantize_model.py --out models/yolo11n-pose-int8.onnx            # quantize
    python quantize_model.py --out X.onnx --eval results.jsonl              # quantize, then evaluate
    python quantize_model.py --eval-only X.onnx --eval results.jsonl        # evaluate an existing file
    python quantize_model.py --rect --model models/yolo11n-pose-rect.onnx --out models/yolo11n-pose-rect-int8.onnx
                             # a dynamic-shape model, calibrated on rectangular letterboxes

Calibration frames are letterboxed exactly as the detector does it (Ultralytics LetterBox: pad 114,
RGB, /255, NCHW float32) from samples/vtest.avi, decoded by the ffmpeg CLI (bgr24).
Calibration uses only the first --calib-split of the video (half by default), the evaluation only the
rest, so the model is never judged on the frames it was calibrated on.
The evaluation compares the int8 model with the fp32 one over those frames: detections at
conf >= 0.25 after class-agnostic NMS at IoU 0.7 (max 300, Ultralytics predict defaults), matched
one-to-one (greedy, highest IoU first) at IoU >= 0.5; precision = matched / int8 detections,
recall = matched / fp32 detections. It also times bare inference (median of --bench-runs runs after
warm-up, intra_op_num_threads=2, ORT_ENABLE_ALL) for both models.

The recipe (defaults): quant_pre_process, then quantize_static QDQ, int8 per-channel symmetric
weights, uint8 asymmetric activations, MinMax calibration with CalibMovingAverage on 100 frames spread
evenly over the first half of vtest.avi; kept float: the model.10 attention MatMul/Softmax/Mul (see ATTENTION) and the
head's decode tail plus the last conv of each head branch (--exclude final). Then the float DFL
softmax is moved to the innermost axis (dfl_last_axis: same output values, ~3 ms less). The
exporter's metadata_props (names, kpt_shape, stride, ...) are copied into the output.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization import calibrate as ort_calibrate
from onnxruntime.quantization.shape_inference import quant_pre_process

from yolo_frames import ffmpeg_frames, letterbox, session, to_input

CONF, NMS_IOU, MAX_DET, MATCH_IOU = 0.25, 0.7, 300, 0.5


# ---------------------------------------------------------------- frames
def load_frames(video, cache, stride=None):
    """All letterboxed frames, [N, 640, 640, 3] uint8 (or rectangular with a stride), cached as
    .npy (~1 GB for vtest.avi)."""
    if cache and os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(video):
        return np.load(cache, mmap_mode="r")
    frames = np.stack([letterbox(f, stride=stride) for f in ffmpeg_frames(video)])
    if cache:
        np.save(cache, frames)
    return frames


class Reader(CalibrationDataReader):
    def __init__(self, frames, indices):
        self.frames, self.indices, self.i = frames, list(indices), 0

    def get_next(self):
        if self.i >= len(self.indices):
            return None
        x = to_input(self.frames[self.indices[self.i]])
        self.i += 1
        return {"images": x}

    def rewind(self):
        self.i = 0


def chunked_histogram_collect(chunk):
    """ORT's HistogramCalibrater keeps every intermediate tensor of every calibration frame before
    building histograms (hundreds of MB per frame here); feed it `chunk` frames at a time instead
    (its HistogramCollector merges histograms across calls)."""
    orig = ort_calibrate.HistogramCalibrater.collect_data

    class Chunk(CalibrationDataReader):
        def __init__(self, items):
            self.items = items

        def get_next(self):
            return self.items.pop(0) if self.items else None

    def collect(self, reader):
        while True:
            items = []
            while len(items) < chunk:
                x = reader.get_next()
                if not x:
                    break
                items.append(x)
            if not items:
                break
            orig(self, Chunk(items))

    ort_calibrate.HistogramCalibrater.collect_data = collect


# ---------------------------------------------------------------- quantization
HEAD = "/model.23/"
BRANCH = re.compile(r"^/model\.23/cv[234]\.\d/")
FINAL_CONV = re.compile(r"^/model\.23/(cv[234]\.\d/cv[234]\.\d\.2/Conv|dfl/conv/Conv)$")
SCORE_CONV = re.compile(r"^/model\.23/cv3\.\d/cv3\.\d\.2/Conv$")
# The C2PSA block's self-attention over the 20x20 map (model.10): q.k scaling Mul, both MatMuls and the
# Softmax. ORT pins a quantized Softmax output to [0, 1] (uint8 step 1/255) while most of the 400
# attention weights are below 1/400, so quantizing it biases every feature after it (and all person
# scores down by ~0.1). At 20x20 these ops cost little in float.
ATTENTION = r"^/model\.10/m/m\.0/attn/(MatMul|MatMul_1|Softmax|Mul)$"


def nodes_to_exclude(model, preset, extra):
    """Node names kept in float.
    tail:  the head's decode tail: every /model.23/ node outside the cv2/cv3/cv4 conv branches except
           the DFL conv (Reshape, Concat, Softmax, Sigmoid, Slice, Add/Sub/Mul/Div).
    final: tail + the last 1x1 conv of each branch (box cv2.*.2, score cv3.*.2, keypoint cv4.*.2) and
           the DFL conv, so the head's raw outputs stay float.
    score: tail + only the score branch's last conv (cv3.*.2), whose logits span a wide range.
    head:  every /model.23/ node.
    none:  nothing."""
    out = []
    for n in model.graph.node:
        name = n.name
        if preset == "none" or not name.startswith(HEAD):
            hit = False
        elif preset == "head":
            hit = True
        else:
            tail = not BRANCH.match(name) and name != "/model.23/dfl/conv/Conv"
            hit = tail or (preset == "final" and bool(FINAL_CONV.match(name))) \
                or (preset == "score" and bool(SCORE_CONV.match(name)))
        for rx in extra:
            if re.search(rx, name):
                hit = True
        if hit:
            out.append(name)
    return out


def dfl_last_axis(m):
    """Reshape->Transpose(0,2,1,3)->Softmax(axis=1)->Conv(16->1, weights arange(16)) becomes
    Reshape->Transpose(0,1,3,2)->Softmax(axis=-1)->MatMul(arange(16)[:,None]): same values,
    softmax over the innermost axis (ORT's fast path) instead of a strided one."""
    g = m.graph
    nodes = {n.name: n for n in g.node}
    tr, sm, cv = nodes["/model.23/dfl/Transpose"], nodes["/model.23/dfl/Softmax"], nodes["/model.23/dfl/conv/Conv"]
    inits = {i.name: i for i in g.initializer}
    w = numpy_helper.to_array(inits[cv.input[1]])
    assert w.shape == (1, 16, 1, 1) and len(cv.input) == 2, w.shape
    assert [a.ints for a in tr.attribute if a.name == "perm"][0] == [0, 2, 1, 3]
    del tr.attribute[:]; tr.attribute.append(helper.make_attribute("perm", [0, 1, 3, 2]))
    del sm.attribute[:]; sm.attribute.append(helper.make_attribute("axis", -1))
    wname = "model.23.dfl.matmul.weight"
    g.initializer.append(numpy_helper.from_array(w.reshape(16, 1).astype(np.float32), wname))
    mm = helper.make_node("MatMul", [sm.output[0], wname], [cv.output[0]], name="/model.23/dfl/MatMul")
    idx = list(g.node).index(cv)
    g.node.remove(cv); g.node.insert(idx, mm)
    # value_info for the old conv output / transposed tensor has the old shapes: drop them
    for vi in list(g.value_info):
        if vi.name in (tr.output[0], sm.output[0], cv.output[0]):
            g.value_info.remove(vi)
    if not any(n.input[1] == cv.input[1] for n in g.node if len(n.input) > 1):
        g.initializer.remove(inits[cv.input[1]])
    return m


def calibration_end(args, frames):
    """Frames [0, this) calibrate; the rest are for the evaluation."""
    return max(1, int(len(frames) * args.calib_split))


def quantize(args, frames):
    src = onnx.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        # ORT's pre-processing writes scratch files (sym_shape_infer_temp.onnx, <uuid>.data) into
        # the working directory: keep them in the temporary one.
        cwd = os.getcwd()
        os.chdir(tmp)
        pre = os.path.join(tmp, "pre.onnx")
        # ORT's symbolic shape inference cannot follow the dynamic-shape export's Shape/Reshape
        # arithmetic ("Incomplete symbolic shape inference"); ONNX's own shape inference still runs.
        quant_pre_process(args.model, pre, skip_symbolic_shape=args.rect)
        pre_model = onnx.load(pre)
        exclude = nodes_to_exclude(pre_model, args.exclude,
                                   args.exclude_regex + ([ATTENTION] if args.float_attention else []))
        n = calibration_end(args, frames)
        idx = np.unique(np.round(np.linspace(0, n - 1, args.calib_frames)).astype(int)) \
            if args.calib_frames < n else np.arange(n)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[args.method]
        # MinMax keeps only per-frame ReduceMin/ReduceMax scalars. (Its CalibMaxIntermediateOutputs
        # option is not used: in ORT 1.31.1 it drops the collected frames without computing them.)
        extra = {"ActivationSymmetric": args.sym_act, "WeightSymmetric": True}
        if args.method == "percentile":
            extra["CalibPercentile"] = args.percentile
        if args.moving_average:
            # Mean of the per-frame min/max instead of the extremes over all frames: clips rare
            # outliers, a finer step for the bulk of each tensor.
            extra["CalibMovingAverage"] = True
        if args.method != "minmax":
            chunked_histogram_collect(8)
        act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[args.act_type]
        t0 = time.time()
        quantize_static(pre, args.out, Reader(frames, idx), quant_format=QuantFormat.QDQ,
                        activation_type=act, weight_type=QuantType.QInt8, per_channel=args.per_channel,
                        reduce_range=args.reduce_range, calibrate_method=method,
                        nodes_to_exclude=exclude, extra_options=extra)
        took = time.time() - t0
        os.chdir(cwd)
    # quant_pre_process drops the exporter's metadata (names, kpt_shape, stride, ...): copy it back.
    q = onnx.load(args.out)
    kept = {p.key for p in q.metadata_props}
    for p in src.metadata_props:
        if p.key not in kept:
            q.metadata_props.add(key=p.key, value=p.value)
    if args.dfl_last_axis:
        q = dfl_last_axis(q)
        onnx.checker.check_model(q)
    onnx.save(q, args.out)
    print(f"quantized in {took:.0f} s: {len(idx)} calibration frames, {len(exclude)} nodes kept float -> {args.out}",
          file=sys.stderr)
    return {"calib_frames": int(len(idx)), "excluded_nodes": len(exclude), "quantize_s": round(took, 1)}


# ---------------------------------------------------------------- evaluation
def bench(path, x, runs, warmup=10):
    s = session(path)
    for _ in range(warmup):
        s.run(None, {"images": x})
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, {"images": x})
        ts.append((time.perf_counter() - t) * 1000)
    ts = np.array(ts)
    return {"median_ms": round(float(np.median(ts)), 2), "p10_ms": round(float(np.percentile(ts, 10)), 2),
            "p90_ms": round(float(np.percentile(ts, 90)), 2), "runs": runs,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def iou_matrix(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def decode(out):
    """output0 [1, 56, 8400] -> [K, 56] rows: x1, y1, x2, y2, score, 51 keypoint values (input pixels)."""
    p = out[0].T
    p = p[p[:, 4] >= CONF]
    if len(p) == 0:
        return np.zeros((0, 56), np.float32)
    p = p[np.argsort(-p[:, 4], kind="stable")]
    box = np.concatenate([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], axis=1)
    keep, alive = [], np.ones(len(p), bool)
    ious = iou_matrix(box, box)
    for i in range(len(p)):
        if alive[i]:
            keep.append(i)
            if len(keep) == MAX_DET:
                break
            alive &= ious[i] <= NMS_IOU
    return np.concatenate([box[keep], p[keep, 4:]], axis=1)


def run_all(path, frames):
    s = session(path)
    dets, ts = [], []
    for f in frames:
        x = to_input(f)
        t = time.perf_counter()
        out = s.run(None, {"images": x})[0]
        ts.append((time.perf_counter() - t) * 1000)
        dets.append(decode(out))
    return dets, float(np.median(ts))


def match(ref, got):
    tp, ious, dscore, dkpt = 0, [], [], []
    for r, g in zip(ref, got):
        if len(r) == 0 or len(g) == 0:
            continue
        m = iou_matrix(r[:, :4], g[:, :4])
        pairs = np.argwhere(m >= MATCH_IOU)
        pairs = pairs[np.argsort(-m[pairs[:, 0], pairs[:, 1]], kind="stable")]
        ur, ug = set(), set()
        for i, j in pairs:
            if i in ur or j in ug:
                continue
            ur.add(i), ug.add(j)
            tp += 1
            ious.append(m[i, j])
            dscore.append(abs(r[i, 4] - g[j, 4]))
            kr, kg = r[i, 5:].reshape(17, 3), g[j, 5:].reshape(17, 3)
            dkpt.append(np.linalg.norm(kr[:, :2] - kg[:, :2], axis=1).mean())
    nref, ngot = sum(len(r) for r in ref), sum(len(g) for g in got)
    return {"fp32_dets": nref, "int8_dets": ngot, "matched": tp,
            "precision": round(tp / max(ngot, 1), 4), "recall": round(tp / max(nref, 1), 4),
            "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
            "mean_abs_score_diff": round(float(np.mean(dscore)), 4) if dscore else None,
            "mean_kpt_px_diff": round(float(np.mean(dkpt)), 2) if dkpt else None}


def evaluate(args, frames, path):
    first = calibration_end(args, frames)
    frames = frames[first:]
    ref_cache = os.path.join(args.work, f"fp32_dets_{os.path.basename(args.model)}_from_{first}.npz")
    ref = None
    if os.path.exists(ref_cache) and os.path.getmtime(ref_cache) >= os.path.getmtime(args.model):
        z = np.load(ref_cache)
        if len(z.files) == len(frames):
            ref = [z[f"f{i}"] for i in range(len(frames))]
    if ref is None:
        ref, _ = run_all(args.model, frames)
        np.savez(ref_cache, **{f"f{i}": d for i, d in enumerate(ref)})
    got, run_median = run_all(path, frames)
    res = match(ref, got)
    x = to_input(frames[len(frames) // 2])
    res["int8_bench"] = bench(path, x, args.bench_runs)
    res["int8_video_median_ms"] = round(run_median, 2)
    if args.bench_fp32:
        res["fp32_bench"] = bench(args.model, x, args.bench_runs)
    res["size_bytes"] = os.path.getsize(path)
    return res


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(root, "models/yolo11n-pose.onnx"))
    ap.add_argument("--out", default=os.path.join(root, "models/yolo11n-pose-int8.onnx"))
    ap.add_argument("--video", default=os.path.join(root, "samples/vtest.avi"))
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/yolo-pipeline/quant-work"),
                    help="cache of letterboxed frames and fp32 detections")
    ap.add_argument("--calib-frames", type=int, default=100, help="evenly spread over the calibration part")
    ap.add_argument("--calib-split", type=float, default=0.5,
                    help="the part of the video that calibrates (from its start); the evaluation uses the rest")
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    ap.add_argument("--percentile", type=float, default=99.999)
    ap.add_argument("--exclude", choices=["none", "tail", "score", "final", "head"], default="final")
    ap.add_argument("--exclude-regex", action="append", default=[], help="also keep matching nodes float")
    ap.add_argument("--act-type", choices=["uint8", "int8"], default="uint8")
    ap.add_argument("--keep-dfl-layout", dest="dfl_last_axis", action="store_false",
                    help="do not move the DFL softmax to the innermost axis (see dfl_last_axis)")
    ap.add_argument("--no-moving-average", dest="moving_average", action="store_false",
                    help="minmax over the extremes of all frames instead of the mean of per-frame min/max")
    ap.add_argument("--quantize-attention", dest="float_attention", action="store_false",
                    help="also quantize the model.10 attention MatMul/Softmax (they stay float by default)")
    ap.add_argument("--sym-act", action="store_true")
    ap.add_argument("--reduce-range", action="store_true")
    ap.add_argument("--no-per-channel", dest="per_channel", action="store_false")
    ap.add_argument("--eval", metavar="JSONL", help="evaluate vs fp32 and append a JSON line here")
    ap.add_argument("--eval-only", metavar="ONNX", help="evaluate this model, do not quantize")
    ap.add_argument("--bench-runs", type=int, default=50)
    ap.add_argument("--bench-fp32", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--rect", action="store_true",
                    help="letterbox to the smallest stride-32 rectangle (for a model with dynamic height and width)")
    args = ap.parse_args()
    # Absolute, since quantize() runs in a temporary directory.
    args.model, args.out, args.video = (os.path.abspath(p) for p in (args.model, args.out, args.video))
    os.makedirs(args.work, exist_ok=True)
    frames = load_frames(args.video, os.path.join(args.work, "frames-rect.npy" if args.rect else "frames.npy"),
                         stride=32 if args.rect else None)
    print(f"{len(frames)} frames", file=sys.stderr)
    rec = {"label": args.label}
    if args.eval_only:
        path = args.eval_only
    else:
        path = args.out
        rec.update({k: getattr(args, k) for k in ("calib_frames", "calib_split", "method", "exclude", "exclude_regex",
                                                   "act_type", "sym_act", "reduce_range", "per_channel",
                                                   "moving_average", "float_attention", "dfl_last_axis")})
        if args.method == "percentile":
            rec["percentile"] = args.percentile
        rec.update(quantize(args, frames))
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert meta.get("names") == "{0: 'person'}" and meta.get("kpt_shape") == "[17, 3]", meta
    if args.eval:
        rec["model"] = path
        rec.update(evaluate(args, frames, path))
        with open(args.eval, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
