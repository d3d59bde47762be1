//! Static computation graphs: the builder the models call, the parameter registry, the memory
//! planner ([`plan`]) and the executor ([`exec`]).
//!
//! A network is fixed for a run: image size and batch size fix every shape, so it is built once
//! as a list of [`Node`]s in execution order, each one op with its inputs and one output tensor
//! (tensor `i` is the output of node `i`). Memory is planned once from the tensors' lifetimes and
//! every step replays the list, forward then backward, without allocating.
//!
//! Parameter names are hierarchical (`stage3.m1.b2.block0.conv1.weight`): the builder's scope
//! stack gives the prefix, the layer its name and the parameter its role (`weight`, `bias`,
//! `running_mean`, `running_var`, PyTorch's names). They are the checkpoint keys, so they must
//! stay stable.
pub mod exec;
pub mod plan;

use std::collections::HashSet;
use std::fmt::Display;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::backend::{BnParams, BnRefs, ConvParams, ConvRefs, ParamId, PoolParams, Shape4, UpsampleMode};

/// A tensor of the graph: the output of the node with the same index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// One operation. Its backward is implied by the op (see [`exec`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The graph input (the image batch); computes nothing.
    Input,
    Conv {
        p: ConvParams,
        w: ParamId,
        bias: Option<ParamId>,
    },
    ConvTranspose {
        p: ConvParams,
        w: ParamId,
    },
    /// Batch norm, optionally followed by ReLU in the same op (the GPU fuses them).
    BatchNorm {
        bn: BnRefs,
        relu: bool,
    },
    /// Training only: a batch norm without ReLU and the residual join that was its only reader,
    /// `max(bn(x) + input 1, 0)` in one pass, and their backward in one (the ReLU mask from the
    /// output, the residual's gradient written by the BN's reduction pass). Made by
    /// [`Graph::fuse_for_training`].
    BatchNormAddRelu {
        bn: BnRefs,
    },
    /// Inference only: a convolution with the eval-mode batch norm (+ ReLU) that was its only
    /// reader folded into its epilogue, and with `residual` also the block join after that BN,
    /// `relu(bn(conv(x)) + input 1)` (`relu` is then true). Made by
    /// [`Graph::fuse_for_inference`].
    ConvBnEval {
        p: ConvParams,
        w: ParamId,
        bias: Option<ParamId>,
        bn: BnRefs,
        relu: bool,
        residual: bool,
    },
    /// Inference only, on backends that run it ([`Backend::SPLITS_CONCAT_CONV`]): a 1x1
    /// convolution with its eval-mode batch norm (+ ReLU) on the channel concatenation of input
    /// 0 and the bilinear upsamplings of the other inputs to input 0's size (HRNet's head). A 1x1
    /// convolution and an upsampling commute (both linear, on different axes), so each input
    /// is convolved with its slice of the weights at its own resolution and only the products
    /// are upsampled and summed: no concatenation, and the convolution's work shrinks with the
    /// inputs' resolutions (HRNet-W32's head: 8.5 GMAC to 1.1 at 768x768). Made by
    /// [`Graph::fuse_concat_conv`]; docs/maths.md#the-heads-split-convolution.
    ///
    /// [`Backend::SPLITS_CONCAT_CONV`]: crate::backend::Backend::SPLITS_CONCAT_CONV
    ConcatConvBnEval {
        p: ConvParams,
        w: ParamId,
        bias: Option<ParamId>,
        bn: BnRefs,
        relu: bool,
    },
    Relu,
    Add,
    AddRelu,
    Upsample {
        mode: UpsampleMode,
    },
    Concat,
    MaxPool {
        p: PoolParams,
    },
}

impl Op {
    /// The weight, bias and geometry of a convolution, plain or fused with its batch norm (the
    /// split concatenation's too: its geometry is the 1x1 convolution over all the inputs'
    /// channels); `None` for every other op.
    pub fn conv_refs(&self) -> Option<ConvRefs> {
        match *self {
            Op::Conv { p, w, bias } | Op::ConvBnEval { p, w, bias, .. } | Op::ConcatConvBnEval { p, w, bias, .. } => {
                Some(ConvRefs { w, bias, p })
            }
            _ => None,
        }
    }

    /// Short name for summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv { .. } => "conv",
            Op::ConvTranspose { .. } => "conv_transpose",
            Op::ConvBnEval { residual: true, .. } => "conv_bn_add_relu",
            Op::ConvBnEval { relu: true, .. } => "conv_bn_relu",
            Op::ConvBnEval { relu: false, .. } => "conv_bn",
            Op::ConcatConvBnEval { .. } => "concat_conv_bn",
            Op::BatchNorm { relu: true, .. } => "bn_relu",
            Op::BatchNorm { relu: false, .. } => "bn",
            Op::BatchNormAddRelu { .. } => "bn_add_relu",
            Op::Relu => "relu",
            Op::Add => "add",
            Op::AddRelu => "add_relu",
            Op::Upsample {
                mode: UpsampleMode::Nearest,
            } => "upsample_nearest",
            Op::Upsample {
                mode: UpsampleMode::Bilinear,
            } => "upsample_bilinear",
            Op::Concat => "concat",
            Op::MaxPool { .. } => "maxpool",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Hierarchical layer name, e.g. `stage2.m0.b1.block3.conv2`.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<TensorId>,
    /// Shape of this node's output tensor.
    pub shape: Shape4,
}

/// How a parameter starts (docs/maths.md#networks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `N(0, std)`: HRNet uses std 0.001 for every convolution.
    Normal {
        std: f32,
    },
    /// Kaiming normal, fan-out, ReLU gain: `N(0, sqrt(2 / (c_out * kh * kw)))` (torchvision ResNet).
    KaimingFanOut,
    Zeros,
    Ones,
}

/// The role of a parameter; running statistics are state, not trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
    BnGamma,
    BnBeta,
    RunningMean,
    RunningVar,
}

impl ParamKind {
    pub fn trainable(self) -> bool {
        !matches!(self, ParamKind::RunningMean | ParamKind::RunningVar)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Stable hierarchical name, the checkpoint key.
    pub name: String,
    /// Logical shape: conv `[c_out, kh, kw, c_in]` (KRSC), transposed conv `[c_in, kh, kw, c_out]`,
    /// vectors `[c]`.
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub init: Init,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Initial values, drawn from a generator seeded by `seed` and the parameter's name, so a
    /// parameter's start does not depend on which other parameters exist.
    pub fn initial_values(&self, seed: u64) -> Vec<f32> {
        let n = self.len();
        match self.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal { std } => normal_values(n, std, seed ^ fnv1a(&self.name)),
            Init::KaimingFanOut => {
                let fan_out = self.shape[0] * self.shape[1..self.shape.len() - 1].iter().product::<usize>();
                normal_values(n, (2.0 / fan_out as f32).sqrt(), seed ^ fnv1a(&self.name))
            }
        }
    }
}

fn normal_values(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dist = Normal::new(0.0f32, std).expect("init std is finite and positive");
    (0..n).map(|_| dist.sample(&mut rng)).collect()
}

/// 64-bit FNV-1a: a stable hash of parameter names (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A finished network: nodes in execution order, parameters, input and output.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub params: Vec<ParamInfo>,
    pub input: TensorId,
    pub output: TensorId,
}

impl Graph {
    pub fn shape(&self, t: TensorId) -> Shape4 {
        self.nodes[t.0].shape
    }

    pub fn input_shape(&self) -> Shape4 {
        self.shape(self.input)
    }

    pub fn output_shape(&self) -> Shape4 {
        self.shape(self.output)
    }

    /// What a backend must know to store each parameter, in `params` order.
    pub fn param_specs(&self) -> Vec<crate::backend::ParamSpec> {
        self.params
            .iter()
            .map(|p| crate::backend::ParamSpec {
                len: p.len(),
                trainable: p.kind.trainable(),
            })
            .collect()
    }

    /// Number of trainable parameters (what PyTorch's `sum(p.numel() for p in parameters())` counts).
    pub fn param_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.kind.trainable())
            .map(ParamInfo::len)
            .sum()
    }

    /// Trainable parameters of the node at `i`.
    pub fn node_params(&self, i: usize) -> usize {
        let ids: Vec<ParamId> = match &self.nodes[i].op {
            Op::Conv { w, bias, .. } => std::iter::once(*w).chain(*bias).collect(),
            Op::ConvTranspose { w, .. } => vec![*w],
            Op::BatchNorm { bn, .. } | Op::BatchNormAddRelu { bn } => vec![bn.gamma, bn.beta],
            Op::ConvBnEval { w, bias, bn, .. } | Op::ConcatConvBnEval { w, bias, bn, .. } => {
                std::iter::once(*w).chain(*bias).chain([bn.gamma, bn.beta]).collect()
            }
            _ => Vec::new(),
        };
        ids.iter().map(|id| self.params[id.0].len()).sum()
    }

    /// Multiply-accumulates of node `i` (convolutions only; the rest is negligible).
    pub fn node_macs(&self, i: usize) -> u64 {
        let node = &self.nodes[i];
        match &node.op {
            Op::Conv { p, .. } | Op::ConvBnEval { p, .. } => p.macs(self.shape(node.inputs[0])),
            Op::ConvTranspose { p, .. } => (self.shape(node.inputs[0]).pixels() * p.weight_len()) as u64,
            Op::ConcatConvBnEval { p, .. } => node
                .inputs
                .iter()
                .map(|&t| self.shape(t))
                .map(|x| (x.pixels() * x.c * p.c_out) as u64)
                .sum(),
            _ => 0,
        }
    }

    /// Forward multiply-accumulates of the whole graph.
    pub fn macs(&self) -> u64 {
        (0..self.nodes.len()).map(|i| self.node_macs(i)).sum()
    }

    /// The graph for inference with every convolution whose only reader is a batch norm fused
    /// with it ([`Op::ConvBnEval`]), and then every residual join (`AddRelu`) one of whose
    /// inputs is such a fused node without ReLU, read by nothing else, fused into that node too.
    /// Parameters are shared unchanged, so weights and checkpoints work on both graphs. Only
    /// valid with eval-mode batch norm (running statistics).
    pub fn fuse_for_inference(&self) -> Graph {
        self.fuse_conv_bn().fuse_into_joins(|producer| match producer.op {
            Op::ConvBnEval {
                p,
                w,
                bias,
                bn,
                relu: false,
                residual: false,
            } => Some(Op::ConvBnEval {
                p,
                w,
                bias,
                bn,
                relu: true,
                residual: true,
            }),
            _ => None,
        })
    }

    /// This (inference) graph with each 1x1, stride-1 [`Op::ConvBnEval`] without residual whose
    /// input is a concatenation read by nothing else, of one tensor at the output's size and
    /// bilinear upsamplings (each read by nothing else), computed without the concatenation
    /// ([`Op::ConcatConvBnEval`]); the concatenation and the upsamplings are dropped.
    /// Parameters are shared unchanged.
    pub fn fuse_concat_conv(&self) -> Graph {
        let readers = self.reader_counts();
        let only_reader = |t: TensorId| readers[t.0] == 1 && t != self.output;
        let mut dropped = vec![false; self.nodes.len()];
        let mut replaced: Vec<Option<Node>> = vec![None; self.nodes.len()];
        for (k, node) in self.nodes.iter().enumerate() {
            let Op::ConvBnEval {
                p,
                w,
                bias,
                bn,
                relu,
                residual: false,
            } = node.op
            else {
                continue;
            };
            let cat = node.inputs[0];
            if (p.kh, p.kw, p.stride, p.pad) != (1, 1, 1, 0) || !only_reader(cat) || self.nodes[cat.0].op != Op::Concat
            {
                continue;
            }
            let parts = &self.nodes[cat.0].inputs;
            let upsampled = |t: &TensorId| {
                self.nodes[t.0].op
                    == Op::Upsample {
                        mode: UpsampleMode::Bilinear,
                    }
                    && only_reader(*t)
            };
            if parts.len() < 2 || upsampled(&parts[0]) || !parts[1..].iter().all(upsampled) {
                continue;
            }
            dropped[cat.0] = true;
            let mut inputs = vec![parts[0]];
            for t in &parts[1..] {
                dropped[t.0] = true;
                inputs.push(self.nodes[t.0].inputs[0]);
            }
            replaced[k] = Some(Node {
                name: node.name.clone(),
                op: Op::ConcatConvBnEval { p, w, bias, bn, relu },
                inputs,
                shape: node.shape,
            });
        }
        self.rebuilt(&dropped, replaced)
    }

    /// How many nodes read each tensor.
    fn reader_counts(&self) -> Vec<usize> {
        let mut readers = vec![0usize; self.nodes.len()];
        for node in &self.nodes {
            for t in &node.inputs {
                readers[t.0] += 1;
            }
        }
        readers
    }

    /// The graph for training with each batch norm without ReLU whose only reader is a residual
    /// join (`AddRelu`) fused with it ([`Op::BatchNormAddRelu`]): the batch-norm output is never
    /// written, and the join's backward happens inside the batch norm's. Parameters are shared
    /// unchanged; node ids change.
    pub fn fuse_for_training(&self) -> Graph {
        self.fuse_into_joins(|producer| match producer.op {
            Op::BatchNorm { bn, relu: false } => Some(Op::BatchNormAddRelu { bn }),
            _ => None,
        })
    }

    /// Each `AddRelu` with an input whose producer `absorb` turns into a fused op, and which only
    /// the join reads, becomes that op with inputs (the producer's input, the join's other input).
    /// The fused node takes the join's place in the order (where both its inputs exist) and the
    /// producer's is dropped.
    fn fuse_into_joins(&self, absorb: impl Fn(&Node) -> Option<Op>) -> Graph {
        let readers = self.reader_counts();
        let fused = |t: TensorId| {
            if readers[t.0] == 1 && t != self.output && self.nodes[t.0].inputs.len() == 1 {
                absorb(&self.nodes[t.0])
            } else {
                None
            }
        };
        let mut replaced: Vec<Option<Node>> = vec![None; self.nodes.len()];
        let mut absorbed = vec![false; self.nodes.len()];
        for (k, node) in self.nodes.iter().enumerate() {
            let (Op::AddRelu, [a, b]) = (&node.op, node.inputs.as_slice()) else {
                continue;
            };
            // A producer reading the residual itself stays apart: the fused backward would write
            // both gradients of that one tensor in the wrong order.
            let own_input = |producer: &TensorId, residual: &TensorId| self.nodes[producer.0].inputs[0] == *residual;
            let (op, producer, residual) = match (fused(*a), fused(*b)) {
                (Some(op), _) if !own_input(a, b) => (op, *a, *b),
                (_, Some(op)) if !own_input(b, a) => (op, *b, *a),
                _ => continue,
            };
            absorbed[producer.0] = true;
            let p = &self.nodes[producer.0];
            replaced[k] = Some(Node {
                name: fused_name(&p.name, &node.name),
                op,
                inputs: vec![p.inputs[0], residual],
                shape: node.shape,
            });
        }
        self.rebuilt(&absorbed, replaced)
    }

    /// This graph without the `dropped` nodes and with `replaced[k]` (inputs in this graph's ids)
    /// in place of node k, ids renumbered. A kept node must read kept nodes only.
    fn rebuilt(&self, dropped: &[bool], replaced: Vec<Option<Node>>) -> Graph {
        let mut new_id: Vec<Option<TensorId>> = vec![None; self.nodes.len()];
        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for (k, (node, replacement)) in self.nodes.iter().zip(replaced).enumerate() {
            if dropped[k] {
                continue;
            }
            let mut out = replacement.unwrap_or_else(|| node.clone());
            out.inputs = out
                .inputs
                .iter()
                .map(|t| new_id[t.0].expect("inputs come first"))
                .collect();
            nodes.push(out);
            new_id[k] = Some(TensorId(nodes.len() - 1));
        }
        Graph {
            nodes,
            params: self.params.clone(),
            input: new_id[self.input.0].expect("input kept"),
            output: new_id[self.output.0].expect("output kept"),
        }
    }

    /// Every convolution whose only reader is a batch norm, fused with it.
    fn fuse_conv_bn(&self) -> Graph {
        let readers = self.reader_counts();
        let mut dropped = vec![false; self.nodes.len()];
        let replaced = self
            .nodes
            .iter()
            .map(|node| {
                let Op::BatchNorm { bn, relu } = node.op else {
                    return None;
                };
                let src = node.inputs[0];
                let conv = &self.nodes[src.0];
                let Op::Conv { p, w, bias } = conv.op else { return None };
                if readers[src.0] != 1 || src == self.output {
                    return None;
                }
                // The conv is dropped; the fused node reads the conv's input.
                dropped[src.0] = true;
                Some(Node {
                    name: fused_name(&conv.name, &node.name),
                    op: Op::ConvBnEval {
                        p,
                        w,
                        bias,
                        bn,
                        relu,
                        residual: false,
                    },
                    inputs: conv.inputs.clone(),
                    shape: node.shape,
                })
            })
            .collect();
        self.rebuilt(&dropped, replaced)
    }

    /// Looks a parameter up by name.
    pub fn param_id(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name).map(ParamId)
    }
}

/// The name of a fused node: the producer's, then the last component of the absorbing node's
/// (`stage2.b0.block0.conv2` + `...bn2` -> `stage2.b0.block0.conv2+bn2`).
fn fused_name(producer: &str, absorbing: &str) -> String {
    format!("{producer}+{}", absorbing.rsplit('.').next().unwrap_or_default())
}

/// Builds a [`Graph`]. Layer names are scoped: `b.scope("stage2", |b| b.conv("conv1", ..))`
/// names the layer `stage2.conv1` and its weight `stage2.conv1.weight`.
pub struct GraphBuilder {
    nodes: Vec<Node>,
    params: Vec<ParamInfo>,
    scope: Vec<String>,
    names: HashSet<String>,
    conv_init: Init,
    bn: BnParams,
}

impl GraphBuilder {
    /// A builder whose graph input has shape `input`; returns the input tensor too.
    pub fn new(input: Shape4, conv_init: Init) -> (Self, TensorId) {
        let mut b = Self {
            nodes: Vec::new(),
            params: Vec::new(),
            scope: Vec::new(),
            names: HashSet::new(),
            conv_init,
            bn: BnParams::default(),
        };
        let x = b.push("input", Op::Input, Vec::new(), input);
        (b, x)
    }

    /// Runs `f` with `name` appended to the scope.
    pub fn scope<R>(&mut self, name: impl Display, f: impl FnOnce(&mut Self) -> R) -> R {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    /// Changes the initialisation of the convolutions added from now on.
    pub fn set_conv_init(&mut self, init: Init) {
        self.conv_init = init;
    }

    pub fn shape(&self, t: TensorId) -> Shape4 {
        self.nodes[t.0].shape
    }

    fn full_name(&self, local: &str) -> String {
        let mut parts = self.scope.clone();
        parts.push(local.to_string());
        parts.join(".")
    }

    fn push(&mut self, local: &str, op: Op, inputs: Vec<TensorId>, shape: Shape4) -> TensorId {
        let name = self.full_name(local);
        assert!(self.names.insert(name.clone()), "duplicate layer name {name}");
        self.nodes.push(Node {
            name,
            op,
            inputs,
            shape,
        });
        TensorId(self.nodes.len() - 1)
    }

    fn param(&mut self, layer: &str, role: &str, shape: Vec<usize>, kind: ParamKind, init: Init) -> ParamId {
        let name = format!("{}.{role}", self.full_name(layer));
        self.params.push(ParamInfo {
            name,
            shape,
            kind,
            init,
        });
        ParamId(self.params.len() - 1)
    }

    /// `k x k` convolution with "same" padding (`k / 2`), optional bias.
    pub fn conv(&mut self, name: &str, x: TensorId, c_out: usize, k: usize, stride: usize, bias: bool) -> TensorId {
        let xs = self.shape(x);
        let p = ConvParams::square(xs.c, c_out, k, stride, k / 2);
        let w = self.param(
            name,
            "weight",
            vec![c_out, k, k, xs.c],
            ParamKind::Weight,
            self.conv_init,
        );
        let bias = bias.then(|| self.param(name, "bias", vec![c_out], ParamKind::Bias, Init::Zeros));
        let shape = p.out_shape(xs);
        self.push(name, Op::Conv { p, w, bias }, vec![x], shape)
    }

    /// Transposed convolution without bias (the SimpleBaseline deconvolution).
    pub fn conv_transpose(
        &mut self,
        name: &str,
        x: TensorId,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> TensorId {
        let xs = self.shape(x);
        let p = ConvParams::square(xs.c, c_out, k, stride, pad);
        let w = self.param(
            name,
            "weight",
            vec![xs.c, k, k, c_out],
            ParamKind::Weight,
            self.conv_init,
        );
        let shape = p.transposed_out_shape(xs);
        self.push(name, Op::ConvTranspose { p, w }, vec![x], shape)
    }

    /// Batch norm (gamma 1, beta 0, running mean 0, running var 1), with ReLU when `relu`.
    pub fn batchnorm(&mut self, name: &str, x: TensorId, relu: bool) -> TensorId {
        let c = self.shape(x).c;
        let bn = BnRefs {
            gamma: self.param(name, "weight", vec![c], ParamKind::BnGamma, Init::Ones),
            beta: self.param(name, "bias", vec![c], ParamKind::BnBeta, Init::Zeros),
            running_mean: self.param(name, "running_mean", vec![c], ParamKind::RunningMean, Init::Zeros),
            running_var: self.param(name, "running_var", vec![c], ParamKind::RunningVar, Init::Ones),
            params: self.bn,
        };
        let shape = self.shape(x);
        self.push(name, Op::BatchNorm { bn, relu }, vec![x], shape)
    }

    /// Convolution (no bias) then batch norm, optionally ReLU: the network's basic unit. `names`:
    /// the convolution's and the batch norm's (their PyTorch module names, as `("conv1", "bn1")`).
    pub fn conv_bn(
        &mut self,
        (conv, bn): (&str, &str),
        x: TensorId,
        c_out: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> TensorId {
        let y = self.conv(conv, x, c_out, k, stride, false);
        self.batchnorm(bn, y, relu)
    }

    pub fn relu(&mut self, name: &str, x: TensorId) -> TensorId {
        let shape = self.shape(x);
        self.push(name, Op::Relu, vec![x], shape)
    }

    fn binary(&mut self, name: &str, op: Op, a: TensorId, b: TensorId) -> TensorId {
        assert_ne!(a, b, "{name}: adding a tensor to itself is not supported");
        assert_eq!(self.shape(a), self.shape(b), "{name}: operand shapes differ");
        let shape = self.shape(a);
        self.push(name, op, vec![a, b], shape)
    }

    pub fn add(&mut self, name: &str, a: TensorId, b: TensorId) -> TensorId {
        self.binary(name, Op::Add, a, b)
    }

    pub fn add_relu(&mut self, name: &str, a: TensorId, b: TensorId) -> TensorId {
        self.binary(name, Op::AddRelu, a, b)
    }

    /// Upsamples by the integer `factor`.
    pub fn upsample(&mut self, name: &str, x: TensorId, factor: usize, mode: UpsampleMode) -> TensorId {
        let xs = self.shape(x);
        let shape = Shape4 {
            h: xs.h * factor,
            w: xs.w * factor,
            ..xs
        };
        self.push(name, Op::Upsample { mode }, vec![x], shape)
    }

    /// Concatenates along channels.
    pub fn concat(&mut self, name: &str, xs: &[TensorId]) -> TensorId {
        let first = self.shape(xs[0]);
        for &x in xs {
            let s = self.shape(x);
            assert!(
                s.n == first.n && s.h == first.h && s.w == first.w,
                "{name}: concat inputs differ in size"
            );
        }
        let c = xs.iter().map(|&x| self.shape(x).c).sum();
        self.push(name, Op::Concat, xs.to_vec(), Shape4 { c, ..first })
    }

    pub fn maxpool(&mut self, name: &str, x: TensorId, k: usize, stride: usize, pad: usize) -> TensorId {
        let p = PoolParams { k, stride, pad };
        let shape = p.out_shape(self.shape(x));
        self.push(name, Op::MaxPool { p }, vec![x], shape)
    }

    /// Finishes the graph with `output` as its result. Every node must contribute to it.
    pub fn finish(self, output: TensorId) -> Graph {
        let mut used = vec![false; self.nodes.len()];
        used[output.0] = true;
        for i in (0..self.nodes.len()).rev() {
            if used[i] {
                for t in &self.nodes[i].inputs {
                    used[t.0] = true;
                }
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            panic!("layer {} does not contribute to the output", self.nodes[i].name);
        }
        Graph {
            nodes: self.nodes,
            params: self.params,
            input: TensorId(0),
            output,
        }
    }
}
