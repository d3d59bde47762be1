//! The executor: replays a planned graph forward and backward over any [`Backend`].
//!
//! Backward visits nodes in reverse. Each node's backward reads the output gradient, the
//! tensors its op saved (see [`saved_by`]) and writes the gradients of its inputs; the first
//! contribution to a gradient overwrites it, later ones add (so no buffer is zero-filled).
//! A recomputed BN output is rebuilt just before its first backward reader.
use crate::backend::{AddReluJoin, Backend, Grad, ParamId, View};
use crate::graph::plan::{plan, Mode, Plan, PlanOptions};
use crate::graph::{Graph, Op, TensorId};

#[cfg(doc)]
use crate::graph::plan::saved_by;

pub struct Executor<B: Backend> {
    graph: Graph,
    plan: Plan,
    backend: B,
}

impl<B: Backend> Executor<B> {
    /// Plans `graph` for `options`, prepares the backend and initialises the parameters from
    /// `seed` (see [`ParamInfo::initial_values`](crate::graph::ParamInfo::initial_values)),
    /// unless the backend adopted another's parameters ([`Backend::params_adopted`]): those may
    /// already be trained, and belong to their owner.
    pub fn new(graph: Graph, options: PlanOptions, backend: B, seed: u64) -> Self {
        Self::with_params(graph, options, backend, seed, |_| None)
    }

    /// [`Executor::new`] with each parameter's starting values from `values` (by parameter
    /// name, e.g. a checkpoint's) where it has them, and the seeded initialisation elsewhere: a
    /// loaded model does not spend its start-up drawing random weights it then overwrites.
    pub fn with_params<'v>(
        graph: Graph,
        options: PlanOptions,
        mut backend: B,
        seed: u64,
        values: impl Fn(&str) -> Option<&'v [f32]>,
    ) -> Self {
        assert_eq!(
            options.dtypes.activation,
            backend.activation_bytes(),
            "plan element size must match the backend's activations"
        );
        assert_eq!(
            options.dtypes.stats,
            backend.stats_bytes(),
            "plan statistics size must match the backend's"
        );
        let graph = options.graph_for_backend::<B>(graph);
        let plan = plan(&graph, options);
        backend.prepare(plan.arena_bytes, &graph.param_specs());
        if !backend.params_adopted() {
            for (i, p) in graph.params.iter().enumerate() {
                match values(&p.name).filter(|v| v.len() == p.len()) {
                    Some(v) => backend.write_param(ParamId(i), v),
                    None => backend.write_param(ParamId(i), &p.initial_values(seed)),
                }
            }
        }
        Self { graph, plan, backend }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Where the input batch goes (NHWC).
    pub fn input_view(&self) -> View {
        self.plan.fwd[self.graph.input.0]
    }

    /// Where the output heatmaps are after [`forward`](Self::forward).
    pub fn output_view(&self) -> View {
        self.plan.fwd[self.graph.output.0]
    }

    /// Where the loss writes the output gradient before [`backward`](Self::backward).
    pub fn output_grad_view(&self) -> View {
        self.plan.grad[self.graph.output.0].expect("output gradient exists in training mode")
    }

    /// Convenience: copy `input` in, run forward, copy the output out.
    pub fn predict(&mut self, input: &[f32]) -> Vec<f32> {
        let v = self.input_view();
        self.backend.write(v, input);
        self.forward();
        self.backend.read(self.output_view())
    }

    /// Convenience: copy the output gradient in and run backward.
    pub fn backward_from(&mut self, d_output: &[f32]) {
        let v = self.output_grad_view();
        self.backend.write(v, d_output);
        self.backward();
    }

    /// The input gradient after backward, when the plan asked for it.
    pub fn input_grad(&self) -> Option<Vec<f32>> {
        self.plan.grad[self.graph.input.0].map(|v| self.backend.read(v))
    }

    /// Runs every node forward, in one NVTX range per top-level module (stem, stage2, head, ...),
    /// so an nsys timeline reads like the network.
    pub fn forward(&mut self) {
        let mut module = ModuleRanges::new("forward");
        for i in 0..self.graph.nodes.len() {
            let node = &self.graph.nodes[i];
            module.enter(&node.name);
            self.backend.label(&node.name, node.shape);
            self.forward_node(i);
        }
    }

    /// Runs forward and returns each node's wall time in seconds. Meaningful for synchronous
    /// backends (the CPU); an asynchronous backend would only report launch times.
    pub fn forward_timed(&mut self) -> Vec<f64> {
        (0..self.graph.nodes.len())
            .map(|i| {
                let t = std::time::Instant::now();
                self.forward_node(i);
                t.elapsed().as_secs_f64()
            })
            .collect()
    }

    /// Runs node `i` forward (its inputs must be computed): for stepping through a network, e.g.
    /// to compare two backends tensor by tensor.
    pub fn forward_node(&mut self, i: usize) {
        let train = self.plan.options.mode == Mode::Train;
        let node = &self.graph.nodes[i];
        let y = self.plan.fwd[i];
        let x: Vec<View> = node.inputs.iter().map(|t| self.plan.fwd[t.0]).collect();
        let b = &mut self.backend;
        match &node.op {
            Op::Input => {}
            Op::Conv { p, w, bias } => match self.plan.bn_stats_of[i] {
                Some(j) => {
                    let (Op::BatchNorm { bn, .. } | Op::BatchNormAddRelu { bn }) = &self.graph.nodes[j].op else {
                        unreachable!("the planner pairs convolutions with batch norms")
                    };
                    let saved = self.plan.stats[j].expect("BN statistics are planned in training");
                    let conv = node.op.conv_refs().expect("a convolution");
                    b.conv2d_fwd_bn_stats(x[0], &conv, y, bn, saved);
                }
                None => b.conv2d_fwd(x[0], *w, *bias, p, y),
            },
            Op::ConvBnEval { bn, relu, residual, .. } => {
                let conv = node.op.conv_refs().expect("a convolution");
                b.conv2d_bn_fwd_eval(x[0], &conv, bn, *relu, residual.then(|| x[1]), y)
            }
            Op::ConcatConvBnEval { bn, relu, .. } => {
                let conv = node.op.conv_refs().expect("a convolution");
                b.concat_conv_bn_fwd_eval(&x, &conv, bn, *relu, y)
            }
            Op::ConvTranspose { p, w } => b.conv_transpose2d_fwd(x[0], *w, p, y),
            Op::BatchNorm { bn, relu } => {
                if train {
                    let saved = self.plan.stats[i].expect("BN statistics are planned in training");
                    if self.plan.bn_stats_by[i].is_some() {
                        b.batchnorm_apply_saved(x[0], bn, *relu, saved, y);
                    } else {
                        b.batchnorm_fwd_train(x[0], bn, *relu, y, saved);
                    }
                } else {
                    b.batchnorm_fwd_eval(x[0], bn, *relu, y);
                }
            }
            Op::BatchNormAddRelu { bn } => {
                assert!(train, "fused BN+add+ReLU nodes exist only in training graphs");
                let saved = self.plan.stats[i].expect("BN statistics are planned in training");
                if self.plan.bn_stats_by[i].is_some() {
                    b.batchnorm_add_relu_apply_saved(x[0], bn, x[1], saved, y);
                } else {
                    b.batchnorm_add_relu_fwd_train(x[0], bn, x[1], y, saved);
                }
            }
            Op::Relu => b.relu_fwd(x[0], y),
            Op::Add => b.add_fwd(x[0], x[1], y),
            Op::AddRelu => b.add_relu_fwd(x[0], x[1], y),
            Op::Upsample { mode } => b.upsample_fwd(x[0], *mode, y),
            Op::Concat => b.concat_fwd(&x, y),
            Op::MaxPool { p } => b.maxpool_fwd(x[0], p, y),
        }
    }

    /// Runs every node backward; the output gradient must be in [`output_grad_view`](Self::output_grad_view).
    pub fn backward(&mut self) {
        assert_eq!(self.plan.options.mode, Mode::Train, "backward needs a training plan");
        let n = self.graph.nodes.len();
        let mut module = ModuleRanges::new("backward");
        let mut written = vec![false; n];
        let mut rebuilt = vec![false; n];
        written[self.graph.output.0] = true;
        for i in (0..n).rev() {
            if !self.plan.needs_grad[i] {
                continue;
            }
            let node = self.graph.nodes[i].clone();
            module.enter(&node.name);
            self.backend.label(&node.name, node.shape);
            let dy = self.plan.grad[i].expect("planned");
            let grads: Vec<Option<Grad>> = node
                .inputs
                .iter()
                .map(|t| {
                    let g = self.plan.grad[t.0].map(|view| Grad {
                        view,
                        accumulate: written[t.0],
                    });
                    written[t.0] |= g.is_some();
                    g
                })
                .collect();
            let input = |k: usize| node.inputs[k];
            match &node.op {
                Op::Input => {}
                Op::ConvBnEval { .. } | Op::ConcatConvBnEval { .. } => {
                    unreachable!("fused nodes exist only in inference graphs")
                }
                Op::Conv { p, w, bias } => {
                    let x = self.saved(input(0), &mut rebuilt);
                    self.backend.conv2d_wgrad(x, dy, p, *w, *bias);
                    if let Some(g) = grads[0] {
                        self.backend.conv2d_dgrad(dy, *w, p, g);
                    }
                }
                Op::ConvTranspose { p, w } => {
                    let x = self.saved(input(0), &mut rebuilt);
                    self.backend.conv_transpose2d_wgrad(x, dy, p, *w);
                    if let Some(g) = grads[0] {
                        self.backend.conv_transpose2d_dgrad(dy, *w, p, g);
                    }
                }
                Op::BatchNorm { bn, relu } => {
                    let x = self.saved(input(0), &mut rebuilt);
                    let saved = self.plan.stats[i].expect("planned");
                    let g = grads[0].expect("batch norm reads a tensor that needs a gradient");
                    self.backend.batchnorm_bwd(dy, x, bn, *relu, saved, g);
                }
                Op::BatchNormAddRelu { bn } => {
                    let x = self.saved(input(0), &mut rebuilt);
                    let y = self.saved(TensorId(i), &mut rebuilt);
                    let saved = self.plan.stats[i].expect("planned");
                    let g = grads[0].expect("batch norm reads a tensor that needs a gradient");
                    let join = AddReluJoin {
                        y,
                        d_residual: grads[1],
                    };
                    self.backend.batchnorm_add_relu_bwd(dy, x, bn, saved, join, g);
                }
                Op::Relu => {
                    let y = self.saved(TensorId(i), &mut rebuilt);
                    if let Some(g) = grads[0] {
                        self.backend.relu_bwd(y, dy, g);
                    }
                }
                Op::Add => self.backend.add_bwd(dy, grads[0], grads[1]),
                Op::AddRelu => {
                    let y = self.saved(TensorId(i), &mut rebuilt);
                    self.backend.add_relu_bwd(y, dy, grads[0], grads[1]);
                }
                Op::Upsample { mode } => {
                    if let Some(g) = grads[0] {
                        self.backend.upsample_bwd(dy, *mode, g);
                    }
                }
                Op::Concat => {
                    let widths: Vec<usize> = node.inputs.iter().map(|t| self.graph.shape(*t).c).collect();
                    self.backend.concat_bwd(dy, &widths, &grads)
                }
                Op::MaxPool { p } => {
                    let x = self.saved(input(0), &mut rebuilt);
                    if let Some(g) = grads[0] {
                        self.backend.maxpool_bwd(x, dy, p, g);
                    }
                }
            }
        }
    }

    /// The view holding the forward value of `t` during backward, recomputing it if the plan
    /// dropped it after forward.
    fn saved(&mut self, t: TensorId, rebuilt: &mut [bool]) -> View {
        let Some(view) = self.plan.recomputed[t.0] else {
            return self.plan.fwd[t.0];
        };
        if !rebuilt[t.0] {
            let node = &self.graph.nodes[t.0];
            let Op::BatchNorm { bn, relu } = &node.op else {
                unreachable!("only batch-norm outputs are recomputed")
            };
            let x = self.plan.fwd[node.inputs[0].0];
            let saved = self.plan.stats[t.0].expect("planned");
            self.backend.batchnorm_apply_saved(x, bn, *relu, saved, view);
            rebuilt[t.0] = true;
        }
        view
    }

    /// Current value of a parameter (or running statistic).
    pub fn param(&self, id: ParamId) -> Vec<f32> {
        self.backend.read_param(id)
    }

    /// Gradient of a trainable parameter after backward.
    pub fn param_grad(&self, id: ParamId) -> Vec<f32> {
        self.backend.read_grad(id)
    }

    pub fn set_param(&mut self, id: ParamId, data: &[f32]) {
        assert_eq!(
            data.len(),
            self.graph.params[id.0].len(),
            "{}: length",
            self.graph.params[id.0].name
        );
        self.backend.write_param(id, data);
    }
}

/// The NVTX range of the module being run: opened when the first component of the node names
/// changes (`stage2.m0.b1.conv1` -> `forward stage2`), closed when the next module starts.
struct ModuleRanges {
    phase: &'static str,
    current: String,
    range: Option<crate::gpu::nvtx::RangeGuard>,
}

impl ModuleRanges {
    fn new(phase: &'static str) -> Self {
        Self {
            phase,
            current: String::new(),
            range: None,
        }
    }

    fn enter(&mut self, node_name: &str) {
        let module = node_name.split('.').next().unwrap_or(node_name);
        if module != self.current {
            self.range = None;
            self.current = module.to_string();
            self.range = Some(crate::gpu::nvtx::range(&format!("{} {module}", self.phase)));
        }
    }
}
