//! The inference graph as an ONNX model: one or a few standard operators per graph node.
//!
//! The input is the graph [`PlanOptions::graph_for`](crate::graph::plan::PlanOptions::graph_for)
//! gives in eval mode, the very list of nodes the CPU and CUDA backends execute, so the export
//! cannot drift from cephalo's own inference. Layouts change on the way: cephalo's activations are
//! NHWC and its weights KRSC, ONNX's are NCHW and OIHW.
//!
//! | cephalo node                         | ONNX                                                 |
//! |--------------------------------------|------------------------------------------------------|
//! | `ConvBnEval` (conv + eval BN folded) | `Conv` with the BN folded into weights and bias      |
//! |   ... with ReLU / residual join      |   then `Relu`, or `Add` + `Relu`                     |
//! | `Conv` (the head's last, with bias)  | `Conv`                                               |
//! | `ConvTranspose`                      | `ConvTranspose`                                      |
//! | `BatchNorm` (after a deconvolution)  | `BatchNormalization` (running statistics), `Relu`    |
//! | `Upsample` bilinear                  | `Resize` linear, `half_pixel`                        |
//! | `Upsample` nearest                   | `Resize` nearest, `asymmetric`, `floor`              |
//! | `Add`, `AddRelu`, `Relu`, `Concat`, `MaxPool` | the operators of the same names             |
//!
//! The upsampling modes are the CPU twin's formulas (`backend/cpu/resample.rs`): bilinear samples
//! source `(o + 0.5) / f - 0.5` clamped to the image, which is ONNX's `half_pixel` (PyTorch's
//! `align_corners=False`); nearest copies source `o / f` rounded down, which is `asymmetric`
//! with `floor`.
use anyhow::{bail, Result};
use half::f16;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use crate::backend::{BnRefs, BnRunning, BnWeights, ConvParams, ParamId, Shape4, UpsampleMode};
use crate::graph::{Graph, Node, Op};

/// The operator set the models declare: 17 has every operator used here in its current form
/// (`Resize` 13, `BatchNormalization` 15) and is what onnxruntime, OpenCV 4.8+ and TensorRT 8.6+
/// read.
pub const OPSET: i64 = 17;
/// IR version 8 is the one opset 17 was published with; readers of opset 17 accept it.
pub const IR_VERSION: i64 = 8;
/// Names of the graph's input and output.
pub const INPUT_NAME: &str = "image";
pub const OUTPUT_NAME: &str = "heatmaps";
/// The symbolic batch dimension of `--batch dynamic`.
pub const DYNAMIC_BATCH: &str = "N";

/// What to export beyond the graph itself.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxOptions {
    /// Weights and activations in fp16; the input and output stay f32 (a `Cast` at each end), so
    /// the same calling code runs both models.
    pub fp16: bool,
    /// A symbolic batch dimension instead of the graph's fixed batch size.
    pub dynamic_batch: bool,
    /// The model's name (the ONNX graph's name).
    pub name: String,
    pub doc: String,
    /// Key-value metadata for the user (landmarks, normalisation, ...).
    pub metadata: Vec<(String, String)>,
}

/// `graph` (an inference graph) with the values `weight` gives for each parameter, as an ONNX
/// model. Fails on an op that has no inference meaning (training-only fused nodes).
pub fn to_model<'a>(graph: &Graph, weight: impl Fn(ParamId) -> &'a [f32], options: &OnnxOptions) -> Result<ModelProto> {
    let mut w = Writer {
        graph,
        weight: &weight,
        fp16: options.fp16,
        nodes: Vec::new(),
        initializers: Vec::new(),
        names: vec![String::new(); graph.nodes.len()],
        out_of_fp16: None,
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        w.names[i] = w.lower(node)?;
    }
    if let Some(name) = w.out_of_fp16 {
        bail!(
            "--fp16: {name} holds values beyond fp16's range (65504) once batch norm is folded in: export this model in f32"
        );
    }
    let last = w.names[graph.output.0].clone();
    if options.fp16 {
        w.node(
            "Cast",
            "output_cast",
            vec![last],
            OUTPUT_NAME,
            vec![int("to", DataType::FLOAT as i64)],
        );
    } else {
        w.node("Identity", "output", vec![last], OUTPUT_NAME, Vec::new());
    }
    let batch = |s: Shape4| {
        let n = if options.dynamic_batch {
            Dim::Param(DYNAMIC_BATCH)
        } else {
            Dim::Value(s.n)
        };
        [n, Dim::Value(s.c), Dim::Value(s.h), Dim::Value(s.w)]
    };
    let onnx_graph = GraphProto {
        name: options.name.clone(),
        node: w.nodes,
        initializer: w.initializers,
        input: vec![value_info(INPUT_NAME, DataType::FLOAT, &batch(graph.input_shape()))],
        output: vec![value_info(OUTPUT_NAME, DataType::FLOAT, &batch(graph.output_shape()))],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "cephalo".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: options.doc.clone(),
        graph: Some(onnx_graph).into(),
        metadata_props: options
            .metadata
            .iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

enum Dim {
    Value(usize),
    Param(&'static str),
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Value(v) => tensor_shape_proto::dimension::Value::DimValue(*v as i64),
                Dim::Param(p) => tensor_shape_proto::dimension::Value::DimParam((*p).to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto {
                    dim,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// Collects the ONNX nodes and initializers while walking the graph.
struct Writer<'g, 'a, F: Fn(ParamId) -> &'a [f32]> {
    graph: &'g Graph,
    weight: &'g F,
    fp16: bool,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The ONNX tensor holding each graph tensor's value.
    names: Vec<String>,
    /// The first weight tensor fp16 cannot hold.
    out_of_fp16: Option<String>,
}

impl<'a, F: Fn(ParamId) -> &'a [f32]> Writer<'_, 'a, F> {
    /// Emits the ONNX nodes of `node`; returns the name of the tensor holding its output.
    fn lower(&mut self, node: &Node) -> Result<String> {
        let name = node.name.clone();
        let inputs: Vec<String> = node.inputs.iter().map(|t| self.names[t.0].clone()).collect();
        let input = |k: usize| inputs[k].clone();
        Ok(match &node.op {
            Op::Input => {
                if self.fp16 {
                    self.node(
                        "Cast",
                        "input_cast",
                        vec![INPUT_NAME.into()],
                        "image_fp16",
                        vec![int("to", DataType::FLOAT16 as i64)],
                    )
                } else {
                    INPUT_NAME.to_string()
                }
            }
            Op::Conv { p, w, bias } => {
                let weights = krsc_to_oihw((self.weight)(*w), p);
                let bias = bias.map(|b| (self.weight)(b).to_vec());
                self.conv(&name, input(0), p, weights, bias, &name)
            }
            Op::ConvBnEval {
                p,
                w,
                bias,
                bn,
                relu,
                residual,
            } => {
                let (weights, b) = self.folded(p, *w, *bias, bn);
                if *residual {
                    let conv = self.conv(&name, input(0), p, weights, Some(b), &format!("{name}/conv"));
                    let sum = self.node(
                        "Add",
                        &format!("{name}/add"),
                        vec![conv, input(1)],
                        &format!("{name}/sum"),
                        Vec::new(),
                    );
                    self.node("Relu", &format!("{name}/relu"), vec![sum], &name, Vec::new())
                } else if *relu {
                    let conv = self.conv(&name, input(0), p, weights, Some(b), &format!("{name}/conv"));
                    self.node("Relu", &format!("{name}/relu"), vec![conv], &name, Vec::new())
                } else {
                    self.conv(&name, input(0), p, weights, Some(b), &name)
                }
            }
            Op::ConvTranspose { p, w } => {
                let weights = self.initializer(
                    &format!("{name}.weight"),
                    &transposed_to_iohw((self.weight)(*w), p),
                    &[p.c_in, p.c_out, p.kh, p.kw],
                );
                let attrs = vec![
                    ints("kernel_shape", &[p.kh, p.kw]),
                    ints("strides", &[p.stride, p.stride]),
                    ints("pads", &[p.pad, p.pad, p.pad, p.pad]),
                ];
                self.node("ConvTranspose", &name, vec![input(0), weights], &name, attrs)
            }
            Op::BatchNorm { bn, relu } => {
                let c = node.shape.c;
                let stats = [
                    ("weight", bn.gamma),
                    ("bias", bn.beta),
                    ("running_mean", bn.running_mean),
                    ("running_var", bn.running_var),
                ];
                let mut inputs = vec![input(0)];
                for (role, id) in stats {
                    let values = (self.weight)(id).to_vec();
                    inputs.push(self.initializer(&format!("{name}.{role}"), &values, &[c]));
                }
                let attrs = vec![float("epsilon", bn.params.eps)];
                if *relu {
                    let y = self.node("BatchNormalization", &name, inputs, &format!("{name}/bn"), attrs);
                    self.node("Relu", &format!("{name}/relu"), vec![y], &name, Vec::new())
                } else {
                    self.node("BatchNormalization", &name, inputs, &name, attrs)
                }
            }
            Op::Relu => self.node("Relu", &name, vec![input(0)], &name, Vec::new()),
            Op::Add => self.node("Add", &name, vec![input(0), input(1)], &name, Vec::new()),
            Op::AddRelu => {
                let sum = self.node(
                    "Add",
                    &format!("{name}/add"),
                    vec![input(0), input(1)],
                    &format!("{name}/sum"),
                    Vec::new(),
                );
                self.node("Relu", &format!("{name}/relu"), vec![sum], &name, Vec::new())
            }
            Op::Upsample { mode } => {
                let xs = self.graph.shape(node.inputs[0]);
                let factor = (node.shape.h / xs.h) as f32;
                let scales = self.float_constant(&format!("{name}.scales"), &[1.0, 1.0, factor, factor]);
                let attrs = match mode {
                    UpsampleMode::Bilinear => vec![
                        string("mode", "linear"),
                        string("coordinate_transformation_mode", "half_pixel"),
                    ],
                    UpsampleMode::Nearest => vec![
                        string("mode", "nearest"),
                        string("coordinate_transformation_mode", "asymmetric"),
                        string("nearest_mode", "floor"),
                    ],
                };
                // Inputs: X, roi (unused: empty name), scales.
                self.node("Resize", &name, vec![input(0), String::new(), scales], &name, attrs)
            }
            Op::Concat => {
                let inputs = (0..node.inputs.len()).map(input).collect();
                self.node("Concat", &name, inputs, &name, vec![int("axis", 1)])
            }
            Op::MaxPool { p } => {
                let attrs = vec![
                    ints("kernel_shape", &[p.k, p.k]),
                    ints("strides", &[p.stride, p.stride]),
                    ints("pads", &[p.pad, p.pad, p.pad, p.pad]),
                ];
                self.node("MaxPool", &name, vec![input(0)], &name, attrs)
            }
            Op::BatchNormAddRelu { .. } => {
                bail!(
                    "node {} ({}) exists only in training graphs: export needs the inference graph",
                    node.name,
                    node.op.kind()
                )
            }
            Op::ConcatConvBnEval { .. } => {
                bail!(
                    "node {} ({}) exists only in the CPU executor's graph: export the graph of \
                     `PlanOptions::graph_for`, which keeps the concatenation",
                    node.name,
                    node.op.kind()
                )
            }
        })
    }

    /// The convolution's weights (OIHW) and bias with the eval-mode batch norm folded in:
    /// `bn(conv(x) + b) = conv(x) * scale + (b * scale + shift)`, so the weights of output
    /// channel o scale by `scale[o]`. `scale` and `shift` are the backend's own
    /// ([`bn_eval_affine`](crate::backend::cpu::batchnorm::bn_eval_affine)).
    fn folded(&self, p: &ConvParams, w: ParamId, bias: Option<ParamId>, bn: &BnRefs) -> (Vec<f32>, Vec<f32>) {
        let weights = BnWeights::new((self.weight)(bn.gamma), (self.weight)(bn.beta), bn.params);
        let running = BnRunning::new((self.weight)(bn.running_mean), (self.weight)(bn.running_var));
        let (scale, shift) = crate::backend::cpu::batchnorm::bn_eval_affine(weights, running);
        let mut weights = krsc_to_oihw((self.weight)(w), p);
        for (o, row) in weights.chunks_exact_mut(p.patch_len()).enumerate() {
            row.iter_mut().for_each(|v| *v *= scale[o]);
        }
        let b = match bias {
            Some(b) => (self.weight)(b)
                .iter()
                .zip(&scale)
                .zip(&shift)
                .map(|((&b, &s), &t)| b * s + t)
                .collect(),
            None => shift,
        };
        (weights, b)
    }

    /// A `Conv` of `x` with OIHW `weights`; returns its output tensor `out`.
    fn conv(
        &mut self,
        name: &str,
        x: String,
        p: &ConvParams,
        weights: Vec<f32>,
        bias: Option<Vec<f32>>,
        out: &str,
    ) -> String {
        let mut inputs = vec![
            x,
            self.initializer(&format!("{name}.weight"), &weights, &[p.c_out, p.c_in, p.kh, p.kw]),
        ];
        if let Some(b) = bias {
            inputs.push(self.initializer(&format!("{name}.bias"), &b, &[p.c_out]));
        }
        let attrs = vec![
            ints("kernel_shape", &[p.kh, p.kw]),
            ints("strides", &[p.stride, p.stride]),
            ints("pads", &[p.pad, p.pad, p.pad, p.pad]),
        ];
        self.node("Conv", name, inputs, out, attrs)
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs,
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
        output.to_string()
    }

    /// A weight tensor in the model's precision; returns its name.
    fn initializer(&mut self, name: &str, values: &[f32], dims: &[usize]) -> String {
        debug_assert_eq!(values.len(), dims.iter().product::<usize>(), "{name}");
        if self.fp16 && self.out_of_fp16.is_none() && values.iter().any(|v| v.abs() > f16::MAX.to_f32()) {
            self.out_of_fp16 = Some(name.to_string());
        }
        let (data_type, raw_data) = if self.fp16 {
            let raw = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            (DataType::FLOAT16, raw)
        } else {
            (DataType::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    /// An f32 tensor whatever the precision (`Resize`'s scales are always float).
    fn float_constant(&mut self, name: &str, values: &[f32]) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::FLOAT as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }
}

/// cephalo's convolution weights `[c_out][kh][kw][c_in]` as ONNX's `[c_out][c_in][kh][kw]`.
pub fn krsc_to_oihw(w: &[f32], p: &ConvParams) -> Vec<f32> {
    last_axis_second(w, p.c_out, p.kh, p.kw, p.c_in)
}

/// cephalo's transposed-convolution weights `[c_in][kh][kw][c_out]` as ONNX's
/// `[c_in][c_out][kh][kw]` (the same correlation as PyTorch's `ConvTranspose2d`, no flip).
pub fn transposed_to_iohw(w: &[f32], p: &ConvParams) -> Vec<f32> {
    last_axis_second(w, p.c_in, p.kh, p.kw, p.c_out)
}

/// A `[a][kh][kw][b]` tensor as `[a][b][kh][kw]`.
fn last_axis_second(w: &[f32], a: usize, kh: usize, kw: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for i in 0..a {
        for r in 0..kh {
            for s in 0..kw {
                for j in 0..b {
                    out[((i * b + j) * kh + r) * kw + s] = w[((i * kh + r) * kw + s) * b + j];
                }
            }
        }
    }
    out
}

fn attr(name: &str, type_: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: type_.into(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::INT)
    }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        ints: v.iter().map(|&x| x as i64).collect(),
        ..attr(name, AttributeType::INTS)
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: v,
        ..attr(name, AttributeType::FLOAT)
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::STRING)
    }
}
