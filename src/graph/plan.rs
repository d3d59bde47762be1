//! The memory planner: one arena, an offset for every buffer from its lifetime.
//!
//! Time is a list of steps: forward of node `i` is step `i`, the loss reads the output at step
//! `F` (the node count), backward of node `i` is step `2F - i`. A buffer lives over an inclusive
//! interval of steps, so the inputs and the output of one step never share bytes (no op works in
//! place). Buffers:
//! * the forward value of each tensor, from its node to its last reader; in training extended to
//!   its last backward reader when backward needs it (what each op saves is listed in
//!   [`saved_by`]);
//! * a *recomputed* copy, in training, of each batch-norm output that backward needs: rather
//!   than keeping BN(+ReLU) outputs alive from forward to backward, backward recomputes them
//!   from the BN input (which BN's own backward keeps anyway) and the saved statistics, just
//!   before their first backward reader. This removes almost half of the saved activations;
//! * each BN layer's saved `[mean; invstd]` (f32), from its forward to its backward; when the
//!   convolution before it computes the statistics (`PlanOptions::bn_stats_in_conv`), from that
//!   convolution's forward;
//! * the gradient of each tensor that needs one, from its first contribution (the backward of
//!   its last reader) to the backward of its producer.
//!
//! Offsets come from first-fit placement in decreasing size order; [`Plan::check`] verifies
//! that no two buffers with overlapping lifetimes overlap in bytes.
use crate::backend::{Backend, Shape4, View};
use crate::graph::{Graph, Op, TensorId};

/// Offsets are multiples of this: the device's alignment (256 bytes, for vector loads), defined
/// with the arena that these offsets index.
pub use crate::gpu::memory::ALIGN;

/// Element sizes the plan is made for: the CPU backend stores f32 activations, the CUDA
/// backend fp16; BN statistics are f32 on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtypeSizes {
    pub activation: usize,
    pub stats: usize,
}

impl DtypeSizes {
    pub const F32: Self = Self {
        activation: 4,
        stats: 4,
    };
    pub const F16: Self = Self {
        activation: 2,
        stats: 4,
    };
    /// For `CpuBackend::<f64>` (gradient checks).
    pub const F64: Self = Self {
        activation: 8,
        stats: 8,
    };
}

/// Inference only (forward, BN with running statistics) or training (forward and backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    pub mode: Mode,
    pub dtypes: DtypeSizes,
    /// Compute the gradient of the graph input (for tests and saliency), off for training.
    pub input_grad: bool,
    /// Recompute BN(+ReLU) outputs in backward instead of keeping them (see the module doc).
    pub recompute_bn: bool,
    /// In inference, fold each batch norm into the convolution before it
    /// ([`Graph::fuse_for_inference`](crate::graph::Graph::fuse_for_inference)).
    pub fuse_conv_bn: bool,
    /// In training, a convolution whose only reader is a batch norm computes that BN's batch
    /// statistics ([`Backend::conv2d_fwd_bn_stats`](crate::backend::Backend::conv2d_fwd_bn_stats)),
    /// and the BN only applies them: on the GPU the statistics come from the convolution's
    /// epilogue instead of a second read of its output.
    pub bn_stats_in_conv: bool,
    /// In training, fuse each batch norm without ReLU with the residual join that is its only
    /// reader ([`Graph::fuse_for_training`]).
    pub fuse_bn_add_relu: bool,
}

impl PlanOptions {
    pub fn new(mode: Mode, dtypes: DtypeSizes) -> Self {
        Self {
            mode,
            dtypes,
            input_grad: false,
            recompute_bn: true,
            fuse_conv_bn: true,
            bn_stats_in_conv: true,
            fuse_bn_add_relu: true,
        }
    }

    /// The graph these options run: `graph` with the fusions of its mode applied
    /// ([`Graph::fuse_for_inference`] or [`Graph::fuse_for_training`]). It is what the GPU
    /// executor plans and runs and what the ONNX export writes; memory estimates must plan it too.
    pub fn graph_for(&self, graph: Graph) -> Graph {
        self.graph_on(graph, false)
    }

    /// The graph an executor on backend `B` runs: [`Self::graph_for`], and in inference the
    /// rewrites only some backends have ops for ([`Graph::fuse_concat_conv`] where
    /// [`Backend::SPLITS_CONCAT_CONV`]).
    pub fn graph_for_backend<B: Backend>(&self, graph: Graph) -> Graph {
        self.graph_on(graph, B::SPLITS_CONCAT_CONV)
    }

    fn graph_on(&self, graph: Graph, split_concat_conv: bool) -> Graph {
        match self.mode {
            Mode::Eval if self.fuse_conv_bn && split_concat_conv => graph.fuse_for_inference().fuse_concat_conv(),
            Mode::Eval if self.fuse_conv_bn => graph.fuse_for_inference(),
            Mode::Train if self.fuse_bn_add_relu => graph.fuse_for_training(),
            _ => graph,
        }
    }
}

/// What one buffer is, for reports and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    Forward(TensorId),
    Recomputed(TensorId),
    Stats(TensorId),
    Gradient(TensorId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub kind: BufferKind,
    pub offset: usize,
    pub bytes: usize,
    /// First and last step (inclusive) during which the buffer holds a live value.
    pub first: usize,
    pub last: usize,
}

/// The plan: views for every buffer, the arena size and the peak of live bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub options: PlanOptions,
    /// Forward value of each tensor.
    pub fwd: Vec<View>,
    /// Backward-time copy of recomputed tensors.
    pub recomputed: Vec<Option<View>>,
    /// Saved `[mean; invstd]` of each BN node (training only).
    pub stats: Vec<Option<View>>,
    /// For a convolution node that computes the batch statistics of the BN reading it, that BN
    /// node (see [`PlanOptions::bn_stats_in_conv`]).
    pub bn_stats_of: Vec<Option<usize>>,
    /// For a BN node whose statistics its convolution computes, that convolution node.
    pub bn_stats_by: Vec<Option<usize>>,
    /// Gradient of each tensor that needs one.
    pub grad: Vec<Option<View>>,
    /// Which tensors receive gradients.
    pub needs_grad: Vec<bool>,
    pub buffers: Vec<Buffer>,
    /// Bytes the arena must have.
    pub arena_bytes: usize,
    /// Largest sum of live buffer sizes over all steps: a lower bound for any arena.
    pub live_peak_bytes: usize,
}

/// Which of its own tensors node `i`'s backward reads: (its first input, its output).
pub fn saved_by(op: &Op) -> (bool, bool) {
    match op {
        Op::Conv { .. } | Op::ConvTranspose { .. } => (true, false), // weight gradient
        Op::BatchNorm { .. } => (true, false),                       // xhat and ReLU mask from x
        Op::BatchNormAddRelu { .. } => (true, true),                 // xhat from x, mask y > 0
        Op::MaxPool { .. } => (true, false),                         // where the maxima were
        Op::Relu | Op::AddRelu => (false, true),                     // mask y > 0
        Op::Input | Op::Add | Op::Upsample { .. } | Op::Concat => (false, false),
        Op::ConvBnEval { .. } | Op::ConcatConvBnEval { .. } => (false, false), // inference only
    }
}

fn align(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Plans the memory of `graph` for `options`.
pub fn plan(graph: &Graph, options: PlanOptions) -> Plan {
    let n = graph.nodes.len();
    let f = n; // the loss step
    let train = options.mode == Mode::Train;
    let bwd_step = |i: usize| 2 * f - i;

    let mut needs_grad = vec![false; n];
    if train {
        for (i, node) in graph.nodes.iter().enumerate() {
            needs_grad[i] = match node.op {
                Op::Input => options.input_grad,
                _ => graph.node_params(i) > 0 || node.inputs.iter().any(|t| needs_grad[t.0]),
            };
        }
    }
    // Readers of each tensor in forward, and the nodes whose backward reads it (a node whose
    // output needs no gradient runs no backward and saves nothing).
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut bwd_readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (j, node) in graph.nodes.iter().enumerate() {
        for t in &node.inputs {
            readers[t.0].push(j);
        }
        if needs_grad[j] {
            let (input, output) = saved_by(&node.op);
            if input {
                bwd_readers[node.inputs[0].0].push(j);
            }
            if output {
                bwd_readers[j].push(j);
            }
        }
    }

    // Convolutions that compute the statistics of the one BN reading them.
    let mut bn_stats_of = vec![None; n];
    let mut bn_stats_by = vec![None; n];
    if train && options.bn_stats_in_conv {
        for (i, node) in graph.nodes.iter().enumerate() {
            if let (Op::Conv { .. }, [j]) = (&node.op, readers[i].as_slice()) {
                let reader = &graph.nodes[*j];
                let is_bn = matches!(reader.op, Op::BatchNorm { .. } | Op::BatchNormAddRelu { .. });
                if is_bn && reader.inputs[0] == TensorId(i) && TensorId(i) != graph.output {
                    bn_stats_of[i] = Some(*j);
                    bn_stats_by[*j] = Some(i);
                }
            }
        }
    }

    let act = |s: Shape4| align(s.len() * options.dtypes.activation);
    let mut buffers = Vec::new();
    let mut recomputed = vec![false; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        let t = TensorId(i);
        let mut last = readers[i].iter().copied().max().unwrap_or(i).max(i);
        if t == graph.output {
            last = last.max(f);
        }
        if !bwd_readers[i].is_empty() {
            let first_bwd = bwd_step(*bwd_readers[i].iter().max().expect("non-empty"));
            let last_bwd = bwd_step(*bwd_readers[i].iter().min().expect("non-empty"));
            let recompute = options.recompute_bn && matches!(node.op, Op::BatchNorm { .. }) && t != graph.output;
            if recompute {
                recomputed[i] = true;
                buffers.push((BufferKind::Recomputed(t), act(node.shape), first_bwd, last_bwd));
            } else {
                last = last.max(last_bwd);
            }
        }
        buffers.push((BufferKind::Forward(t), act(node.shape), i, last));
        if train && matches!(node.op, Op::BatchNorm { .. } | Op::BatchNormAddRelu { .. }) {
            buffers.push((
                BufferKind::Stats(t),
                align(2 * node.shape.c * options.dtypes.stats),
                bn_stats_by[i].unwrap_or(i),
                bwd_step(i),
            ));
        }
        if needs_grad[i] {
            let first = if t == graph.output {
                f
            } else {
                bwd_step(
                    *readers[i]
                        .iter()
                        .max()
                        .expect("every tensor but the output has a reader"),
                )
            };
            buffers.push((BufferKind::Gradient(t), act(node.shape), first, bwd_step(i)));
        }
    }

    let offsets = place(&buffers);
    let buffers: Vec<Buffer> = buffers
        .iter()
        .zip(&offsets)
        .map(|(&(kind, bytes, first, last), &offset)| Buffer {
            kind,
            offset,
            bytes,
            first,
            last,
        })
        .collect();
    let arena_bytes = buffers.iter().map(|b| b.offset + b.bytes).max().unwrap_or(0);
    let steps = if train { 2 * f + 1 } else { f + 1 };
    let mut live = vec![0usize; steps];
    for b in &buffers {
        for l in &mut live[b.first..=b.last] {
            *l += b.bytes;
        }
    }
    let live_peak_bytes = live.into_iter().max().unwrap_or(0);

    let mut fwd = vec![None; n];
    let mut rec = vec![None; n];
    let mut stats = vec![None; n];
    let mut grad = vec![None; n];
    for b in &buffers {
        let (slot, t) = match b.kind {
            BufferKind::Forward(t) => (&mut fwd, t),
            BufferKind::Recomputed(t) => (&mut rec, t),
            BufferKind::Stats(t) => (&mut stats, t),
            BufferKind::Gradient(t) => (&mut grad, t),
        };
        let shape = match b.kind {
            BufferKind::Stats(t) => Shape4::new(1, 1, 1, 2 * graph.shape(t).c),
            _ => graph.shape(t),
        };
        slot[t.0] = Some(View {
            offset: b.offset,
            shape,
        });
    }
    debug_assert_eq!(recomputed, rec.iter().map(Option::is_some).collect::<Vec<_>>());
    Plan {
        options,
        fwd: fwd
            .into_iter()
            .map(|v| v.expect("every tensor has a forward buffer"))
            .collect(),
        recomputed: rec,
        stats,
        bn_stats_of,
        bn_stats_by,
        grad,
        needs_grad,
        buffers,
        arena_bytes,
        live_peak_bytes,
    }
}

/// First-fit decreasing: the largest buffers are placed first, each at the lowest offset where
/// it overlaps no already placed buffer that is live at the same time.
fn place(buffers: &[(BufferKind, usize, usize, usize)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].1), buffers[i].2));
    let mut offsets = vec![usize::MAX; buffers.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    for &i in &order {
        let (_, bytes, first, last) = buffers[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].2 <= last && first <= buffers[j].3)
            .map(|&j| (offsets[j], offsets[j] + buffers[j].1))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (start, end) in busy {
            if start >= at + bytes {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        placed.push(i);
    }
    offsets
}

impl Plan {
    /// Verifies the plan: every pair of buffers live at a common step is disjoint in bytes and
    /// every buffer is aligned. Returns a description of the first violation.
    pub fn check(&self) -> Result<(), String> {
        let mut by_first: Vec<&Buffer> = self.buffers.iter().collect();
        by_first.sort_by_key(|b| b.first);
        for (i, a) in by_first.iter().enumerate() {
            if a.offset % ALIGN != 0 {
                return Err(format!("{:?} at unaligned offset {}", a.kind, a.offset));
            }
            for b in &by_first[i + 1..] {
                if b.first > a.last {
                    break;
                }
                if a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes {
                    return Err(format!(
                        "{:?} and {:?} are live together and share bytes",
                        a.kind, b.kind
                    ));
                }
            }
        }
        Ok(())
    }
}
