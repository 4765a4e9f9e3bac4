//! The model: an ONNX Runtime session, what its input wants and what its output means.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{parse_kpt_shape, parse_names, Layout};
use crate::error::DetectorError;
use crate::identity::file_sha256;
use crate::preprocess::InputShape;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

/// A model's raw output for one frame: the first output tensor, row-major.
#[derive(Debug, Clone)]
pub struct RawOutput {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub struct Model {
    session: Session,
    /// The file it was loaded from, for errors.
    pub path: PathBuf,
    /// The input's size: the model's fixed one, or the source's aspect where it is dynamic.
    pub input: InputShape,
    /// Whether one run can take several frames (the input's first dimension is dynamic).
    pub dynamic_batch: bool,
    /// Several frames' inputs laid end to end, re-used from run to run.
    batch_input: Vec<f32>,
    /// How to read the output tensor.
    pub layout: Layout,
    /// Class names by id, from the model's metadata where present.
    pub class_names: Vec<String>,
    /// For the wire message: file stem, a sha256 prefix of the file, keypoints per detection.
    pub info: wire::ModelInfo,
    /// The model file's whole SHA-256 (hex): part of a file run's identity.
    pub sha256: String,
}

impl Model {
    pub fn load(path: &Path, intra_threads: usize) -> Result<Self, DetectorError> {
        let err = |reason: String| DetectorError::model(path, reason);
        let sha256 = file_sha256(path).map_err(|e| {
            // The default model path is relative: run from elsewhere, it is not found.
            let hint = match std::env::current_dir() {
                Ok(cwd) if path.is_relative() && e.kind() == std::io::ErrorKind::NotFound => format!(
                    " (a relative path is taken from the working directory, {}: run from the repository's root or give --model an absolute path)",
                    cwd.display()
                ),
                _ => String::new(),
            };
            err(format!("cannot read: {e}{hint}"))
        })?;
        let env = ort::init()
            .with_name("detector")
            .with_logger(Arc::new(ort_log))
            .build()
            .map_err(|e| err(format!("cannot start ONNX Runtime: {e}")))?;
        let session = Session::builder(&env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
            .and_then(|b| Ok(b.with_intra_threads(intra_threads)?))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| err(format!("not a loadable ONNX model: {e}")))?;

        let input = session.inputs().first().ok_or_else(|| err("the model has no input".into()))?;
        let in_shape: Vec<i64> = input.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        let output = session.outputs().first().ok_or_else(|| err("the model has no output".into()))?;
        let out_shape: Vec<i64> = output.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();

        let meta = session.metadata().map_err(|e| err(format!("cannot read metadata: {e}")))?;
        let names = meta.custom("names").map(|s| parse_names(&s)).unwrap_or_default();
        let kpt_shape = meta.custom("kpt_shape").and_then(|s| parse_kpt_shape(&s));
        let end2end = meta.custom("end2end").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let (imgsz, stride) = (meta.custom("imgsz"), meta.custom("stride"));
        drop(meta);
        let (batch, input) = input_shape(&in_shape, imgsz.as_deref(), stride.as_deref()).map_err(err)?;
        let layout = Layout::from_shape(&out_shape, names.len(), kpt_shape, end2end).map_err(err)?;
        // What the wire cannot carry is refused here, once, rather than dead-lettered for every frame.
        let keypoints = layout.num_keypoints();
        if keypoints > wire::MAX_KEYPOINTS {
            return Err(err(format!("{keypoints} keypoints per detection; the wire carries at most {}", wire::MAX_KEYPOINTS)));
        }
        let class_names = (0..layout.num_classes())
            .map(|i| names.get(i).filter(|n| wire::is_label(n, wire::MAX_LABEL_CHARS)).cloned().unwrap_or_else(|| format!("class{i}")))
            .collect();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = if wire::is_label(&stem, wire::MAX_LABEL_CHARS) { stem } else { "model".to_string() };
        Ok(Model {
            session,
            path: path.to_path_buf(),
            input,
            dynamic_batch: batch == -1,
            batch_input: Vec::new(),
            layout,
            class_names,
            info: wire::ModelInfo { name, sha256: sha256[..12].to_string(), keypoints: keypoints as u32 },
            sha256,
        })
    }

    /// Runs letterboxed frames of one size (3 x h x w floats each) in one call, so at most one
    /// frame unless the batch is dynamic; returns each frame's output as a batch of one.
    pub fn run(&mut self, inputs: &[&[f32]], (w, h): (u32, u32)) -> Result<Vec<RawOutput>, DetectorError> {
        let frame_len = 3 * h as usize * w as usize;
        let n = inputs.len();
        if n == 0 || (n > 1 && !self.dynamic_batch) || inputs.iter().any(|i| i.len() != frame_len) {
            return Err(DetectorError::Inference(format!(
                "{n} inputs for a model whose batch is {}",
                if self.dynamic_batch { "dynamic" } else { "1" }
            )));
        }
        let input: &[f32] = if n == 1 {
            inputs[0]
        } else {
            self.batch_input.clear();
            inputs.iter().for_each(|i| self.batch_input.extend_from_slice(i));
            &self.batch_input
        };
        let shape = [n, 3, h as usize, w as usize];
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| DetectorError::Inference(format!("input tensor: {e}")))?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(|e| DetectorError::Inference(one_line(&e)))?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| DetectorError::Inference(format!("output tensor: {e}")))?;
        if shape.first() != Some(&(n as i64)) || data.len() % n != 0 {
            return Err(DetectorError::Inference(format!("output shape {shape:?} for a batch of {n}")));
        }
        let frame_shape: Vec<usize> = std::iter::once(1).chain(shape.iter().skip(1).map(|&d| d as usize)).collect();
        Ok(data.chunks_exact(data.len() / n).map(|d| RawOutput { shape: frame_shape.clone(), data: d.to_vec() }).collect())
    }
}

/// ONNX Runtime's own log, into ours. Each of its errors in a run comes back as the run's error
/// too, which the detector reports with the camera and frame: on its own it is only a detail.
fn ort_log(level: ort::logging::LogLevel, _category: &str, _id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel;
    let message = one_line(message);
    match level {
        LogLevel::Fatal => tracing::error!(target: "onnxruntime", location, "{message}"),
        LogLevel::Error | LogLevel::Warning => tracing::debug!(target: "onnxruntime", location, "{message}"),
        LogLevel::Info | LogLevel::Verbose => tracing::trace!(target: "onnxruntime", location, "{message}"),
    }
}

/// ONNX Runtime's messages end in a newline, some hold more: one log line each.
fn one_line(text: impl std::fmt::Display) -> String {
    text.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The input's batch dimension and size from its shape `[batch, 3, H, W]`: fixed H and W, or both
/// dynamic (-1), which the rectangular letterbox fills within the export's `imgsz` (default 640)
/// at its `stride` (default 32), both from the exporter's metadata.
fn input_shape(shape: &[i64], imgsz: Option<&str>, stride: Option<&str>) -> Result<(i64, InputShape), String> {
    let fixed = match shape {
        [b, 3, h, w] if (*b == 1 || *b == -1) && *h > 0 && *w > 0 => Some((*b, *w as u32, *h as u32)),
        [b, 3, -1, -1] if *b == 1 || *b == -1 => None,
        _ => return Err(format!("expected an image input [1 or dynamic, 3, H, W], H and W both fixed or both dynamic, got {shape:?}")),
    };
    if let Some((b, w, h)) = fixed {
        return Ok((b, InputShape::Fixed { w, h }));
    }
    // Ultralytics writes `imgsz` as "[640, 640]" (height, width) and `stride` as "32".
    let (h, w) = match imgsz {
        None => (640, 640),
        Some(s) => {
            let dims: Vec<u32> = s
                .trim_matches(['[', ']', ' '])
                .split(',')
                .map(|d| d.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("metadata imgsz {s:?} is not [height, width]"))?;
            match dims[..] {
                [h, w] if h > 0 && w > 0 => (h, w),
                [s] if s > 0 => (s, s),
                _ => return Err(format!("metadata imgsz {s:?} is not [height, width]")),
            }
        }
    };
    let stride = match stride {
        None => 32,
        Some(s) => s
            .trim()
            .parse()
            .ok()
            .filter(|&v: &u32| v > 0 && w % v == 0 && h % v == 0)
            .ok_or_else(|| format!("metadata stride {s:?} is not a positive divisor of imgsz {h}x{w}"))?,
    };
    Ok((shape[0], InputShape::Rect { w, h, stride }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_shapes() {
        let rect = InputShape::Rect { w: 640, h: 640, stride: 32 };
        assert_eq!(input_shape(&[1, 3, 640, 640], None, None), Ok((1, InputShape::Fixed { w: 640, h: 640 })));
        assert_eq!(input_shape(&[-1, 3, 480, 640], Some("[640, 640]"), None), Ok((-1, InputShape::Fixed { w: 640, h: 480 })));
        assert_eq!(input_shape(&[-1, 3, -1, -1], Some("[640, 640]"), Some("32")), Ok((-1, rect)));
        assert_eq!(input_shape(&[1, 3, -1, -1], None, None), Ok((1, rect)));
        assert_eq!(input_shape(&[1, 3, -1, -1], Some("[320, 480]"), Some("32")), Ok((1, InputShape::Rect { w: 480, h: 320, stride: 32 })));
        assert!(input_shape(&[1, 3, -1, 640], None, None).unwrap_err().contains("both fixed or both dynamic"));
        assert!(input_shape(&[1, 1, 640, 640], None, None).is_err());
        assert!(input_shape(&[1, 3, -1, -1], Some("big"), None).unwrap_err().contains("imgsz"));
        assert!(input_shape(&[1, 3, -1, -1], Some("[640, 640]"), Some("0")).unwrap_err().contains("stride"));
        assert!(input_shape(&[1, 3, -1, -1], Some("[640, 640]"), Some("48")).unwrap_err().contains("stride"));
    }
}
