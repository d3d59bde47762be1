//! The parameters and shapes of the ops, and the argument structs that group an op's buffers by
//! what they are (a BN layer's weights, an optimizer's state, a loss's batch), shared by both
//! backends: defined once here, so that the CUDA wrappers and the CPU twins take the same types
//! and neither imports the other's. The argument structs are generic over the slice type (`&[f32]`
//! on the CPU, device views on the GPU).

/// The shape of an activation in NHWC order (channels last, like the GPU kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape4 {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape4 {
    pub const fn new(n: usize, h: usize, w: usize, c: usize) -> Self {
        Self { n, h, w, c }
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    /// True when the tensor holds no element.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of pixels (`n * h * w`): the rows of the NHWC matrix `[pixels x c]`.
    pub const fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

impl std::fmt::Display for Shape4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.h, self.w, self.c)
    }
}

/// Convolution geometry. Conv2d weights are stored **KRSC**: `[c_out][kh][kw][c_in]`, so that
/// for NHWC activations the weight is a row-major `[c_out x (kh*kw*c_in)]` matrix and the
/// convolution is one implicit GEMM (patch rows of `kh*kw*c_in` values times its transpose).
///
/// A transposed convolution with the same parameters is the adjoint (the input gradient) of this
/// convolution with `c_in` and `c_out` swapped; its weight is stored `[c_in][kh][kw][c_out]`,
/// which is exactly the KRSC weight of that adjoint convolution. (PyTorch's
/// `ConvTranspose2d.weight` is `[c_in][c_out][kh][kw]`: permute axes (0, 2, 3, 1) to import it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvParams {
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvParams {
    /// A square `k x k` kernel.
    pub const fn square(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> Self {
        Self {
            c_in,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad,
        }
    }

    /// Weight elements (`c_out * kh * kw * c_in`, the same for the transposed convolution).
    pub const fn weight_len(&self) -> usize {
        self.c_out * self.kh * self.kw * self.c_in
    }

    /// Columns of the patch matrix: `kh * kw * c_in`.
    pub const fn patch_len(&self) -> usize {
        self.kh * self.kw * self.c_in
    }

    /// Output shape of the convolution; panics when the input does not fit the kernel, which the
    /// graph builder rules out before any op runs.
    pub fn out_shape(&self, x: Shape4) -> Shape4 {
        assert_eq!(x.c, self.c_in, "conv input channels");
        assert!(
            x.h + 2 * self.pad >= self.kh && x.w + 2 * self.pad >= self.kw,
            "conv input {x} smaller than kernel {}x{}",
            self.kh,
            self.kw
        );
        Shape4 {
            n: x.n,
            h: (x.h + 2 * self.pad - self.kh) / self.stride + 1,
            w: (x.w + 2 * self.pad - self.kw) / self.stride + 1,
            c: self.c_out,
        }
    }

    /// Output shape of the transposed convolution: `(h - 1) * stride - 2 * pad + kh`.
    pub fn transposed_out_shape(&self, x: Shape4) -> Shape4 {
        assert_eq!(x.c, self.c_in, "transposed conv input channels");
        Shape4 {
            n: x.n,
            h: (x.h - 1) * self.stride + self.kh - 2 * self.pad,
            w: (x.w - 1) * self.stride + self.kw - 2 * self.pad,
            c: self.c_out,
        }
    }

    /// The convolution whose input gradient this transposed convolution is.
    pub const fn adjoint(&self) -> Self {
        Self {
            c_in: self.c_out,
            c_out: self.c_in,
            ..*self
        }
    }

    /// Multiply-accumulates of the convolution on input `x`.
    pub fn macs(&self, x: Shape4) -> u64 {
        (self.out_shape(x).pixels() * self.c_out * self.patch_len()) as u64
    }
}

/// Max-pooling window; padded positions never win (they count as minus infinity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolParams {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl PoolParams {
    /// A `k x k` window moved `stride` pixels at a time over an input padded by `pad`.
    pub const fn new(k: usize, stride: usize, pad: usize) -> Self {
        Self { k, stride, pad }
    }

    pub fn out_shape(&self, x: Shape4) -> Shape4 {
        Shape4 {
            n: x.n,
            h: (x.h + 2 * self.pad - self.k) / self.stride + 1,
            w: (x.w + 2 * self.pad - self.k) / self.stride + 1,
            c: x.c,
        }
    }
}

/// How [`resample`](super::cpu::resample) interpolates when upsampling by an integer factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpsampleMode {
    /// Each output pixel copies the input pixel it falls in (PyTorch `mode="nearest"`).
    Nearest,
    /// Bilinear with half-pixel centres (PyTorch `align_corners=False`).
    Bilinear,
}

/// Batch-normalisation constants. PyTorch semantics: in training the batch statistics over
/// `N*H*W` per channel normalise with the biased variance, and the running statistics move by
/// `momentum` towards the batch mean and the *unbiased* variance (`var * m / (m - 1)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnParams {
    pub eps: f32,
    pub momentum: f32,
}

impl Default for BnParams {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// One batch-norm layer's learned per-channel scale `gamma` and shift `beta` (C elements each),
/// and its constants. Generic over the slice type, so that both backends' wrappers can take it
/// (`DevSlice<f32>` on the GPU).
#[derive(Clone, Copy, Debug)]
pub struct BnWeights<S> {
    pub gamma: S,
    pub beta: S,
    pub params: BnParams,
}

impl<S> BnWeights<S> {
    pub fn new(gamma: S, beta: S, params: BnParams) -> Self {
        Self { gamma, beta, params }
    }
}

/// One batch-norm layer's running mean and (unbiased) variance, C elements each: read by eval,
/// updated by a training forward.
#[derive(Clone, Copy, Debug)]
pub struct BnRunning<S> {
    pub mean: S,
    pub var: S,
}

impl<S> BnRunning<S> {
    pub fn new(mean: S, var: S) -> Self {
        Self { mean, var }
    }
}

/// Where a batch-norm backward writes the gradients of gamma and beta (overwritten, C elements
/// each).
#[derive(Clone, Copy, Debug)]
pub struct BnGrads<M> {
    pub dgamma: M,
    pub dbeta: M,
}

impl<M> BnGrads<M> {
    pub fn new(dgamma: M, dbeta: M) -> Self {
        Self { dgamma, dbeta }
    }
}

/// Where an op writes an activation gradient, and whether it adds to what is there or
/// overwrites it: the slice counterpart of the backends' [`Grad`](super::Grad).
#[derive(Clone, Copy, Debug)]
pub struct GradOut<M> {
    pub data: M,
    pub accumulate: bool,
}

impl<M> GradOut<M> {
    pub fn new(data: M, accumulate: bool) -> Self {
        Self { data, accumulate }
    }
}

/// The residual join `y = max(bn(x) + residual, 0)` as the backward of the fused BN+add+ReLU
/// sees it: the join's output `y` (its ReLU mask) and where the residual's gradient goes, when it
/// wants one. `S` is the read-only tensor, `G` the gradient target (`View`/`Grad` for the
/// [`Backend`](super::Backend), device views on the GPU).
#[derive(Clone, Copy, Debug)]
pub struct AddReluJoin<S, G> {
    pub y: S,
    pub d_residual: Option<G>,
}

/// Shape of a batch of heatmaps, NHWC with the `k` landmark channels last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeatmapShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

impl HeatmapShape {
    /// `n` heatmaps of `h` x `w` with `k` landmark channels.
    pub const fn new(n: usize, h: usize, w: usize, k: usize) -> Self {
        Self { n, h, w, k }
    }

    /// Number of elements, `n*h*w*k`.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.k
    }

    /// True when any dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of predicted heatmaps and their targets, NHWC of `shape`: what a heatmap loss compares.
/// `P` is the predictions' slice type, `T` the targets' (`&[f32]` both on the CPU; fp16 and f32
/// device views on the GPU).
#[derive(Clone, Copy, Debug)]
pub struct HeatmapBatch<P, T> {
    pub pred: P,
    pub target: T,
    pub shape: HeatmapShape,
}

/// How a heatmap loss weighs its elements: one weight per landmark channel (`shape.k` of them)
/// and, when given, the Adaptive Wing paper's weight map.
#[derive(Clone, Copy, Debug)]
pub struct LossWeighting<S> {
    pub channel_weights: S,
    pub weight_map: Option<WeightMap>,
}

/// Adaptive Wing loss parameters (Wang, Bo, Li, ICCV 2019).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AWingParams {
    pub alpha: f32,
    pub omega: f32,
    pub eps: f32,
    pub theta: f32,
}

impl Default for AWingParams {
    /// The paper's and mmpose's defaults: alpha 2.1, omega 14, eps 1, theta 0.5.
    fn default() -> Self {
        Self {
            alpha: 2.1,
            omega: 14.0,
            eps: 1.0,
            theta: 0.5,
        }
    }
}

impl AWingParams {
    /// `(A, C)` of the linear branch `A*d - C` for target `y`. `A` is the slope of the log branch
    /// at `d = theta` and `C` makes the two branches meet there, so the loss and its gradient are
    /// continuous.
    pub fn linear_coeffs(&self, y: f32) -> (f32, f32) {
        let a = self.alpha - y;
        let r = self.theta / self.eps;
        let r_a = libm::powf(r, a);
        let big_a = self.omega * (1.0 / (1.0 + r_a)) * a * libm::powf(r, a - 1.0) / self.eps;
        let big_c = self.theta * big_a - self.omega * libm::log1pf(r_a);
        (big_a, big_c)
    }

    /// Loss and `d loss / d p` of one pixel, prediction `p`, target `y` in [0, 1].
    pub fn loss_and_grad(&self, p: f32, y: f32) -> (f32, f32) {
        let diff = p - y;
        let d = diff.abs();
        let sign = if diff < 0.0 { -1.0 } else { 1.0 };
        if d < self.theta {
            let a = self.alpha - y;
            let u = d / self.eps;
            // libm's pure-Rust powf and log1pf, not the platform's: the same seed must give the
            // same run on Linux and Windows, whose C libraries round these differently.
            let u_a = libm::powf(u, a);
            let loss = self.omega * libm::log1pf(u_a);
            // u^(a-1) as u^a / u saves a second powf (the kernel does the same). The derivative's
            // limit at d = 0 is 0 for a > 1 (targets below alpha - 1).
            let grad = if d == 0.0 {
                0.0
            } else {
                sign * self.omega * a * (u_a / u) / (self.eps * (1.0 + u_a))
            };
            (loss, grad)
        } else {
            let (big_a, big_c) = self.linear_coeffs(y);
            (big_a * d - big_c, sign * big_a)
        }
    }
}

/// The Adaptive Wing paper's weighted loss map: pixels where the 3x3 grey dilation of the target
/// exceeds `threshold` (the foreground around each landmark) weigh `w + 1`, the rest 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightMap {
    pub w: f32,
    pub threshold: f32,
}

impl Default for WeightMap {
    /// The paper's W = 10, threshold 0.2.
    fn default() -> Self {
        Self {
            w: 10.0,
            threshold: 0.2,
        }
    }
}

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWParams {
    /// The betas and eps of docs/maths.md#adamw, and `cephalo train`'s defaults: lr 5e-4, weight
    /// decay 1e-4 (the users' scripts'; PyTorch's AdamW would use 0.01).
    fn default() -> Self {
        Self {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

impl AdamWParams {
    /// Bias corrections `(1 - beta1^t, 1 - beta2^t)` for step `t >= 1`, computed in f64 on the host
    /// and handed to the kernel as f32 (this twin uses the same values).
    pub fn bias_corrections(&self, t: u64) -> (f32, f32) {
        assert!(t >= 1, "AdamW steps count from 1");
        let t = t.min(i32::MAX as u64) as i32;
        (
            (1.0 - (self.beta1 as f64).powi(t)) as f32,
            (1.0 - (self.beta2 as f64).powi(t)) as f32,
        )
    }
}

/// What an AdamW step updates in place: the fp32 `master` weights, the first and second moments
/// `m` and `v` (all of one length), and, when given, the fp16 copy the forward pass reads,
/// rewritten from the updated masters. `M` is the f32 slice type, `H` the fp16 one (`&mut [f32]`
/// and `&mut [f16]` on the CPU, device views on the GPU).
#[derive(Debug)]
pub struct AdamWState<M, H> {
    pub master: M,
    pub m: M,
    pub v: M,
    pub half_copy: Option<H>,
}

impl<M, H> AdamWState<M, H> {
    pub fn new(master: M, m: M, v: M, half_copy: Option<H>) -> Self {
        Self {
            master,
            m,
            v,
            half_copy,
        }
    }
}

/// Elements of one [`AdamWChunk`] at most: a GPU block's share of the whole-model step.
pub const ADAMW_CHUNK_LEN: usize = 4096;

/// A trainable tensor as the whole-model AdamW step sees it: where it lies in the master / fp16
/// copy / moment regions (`value_at`) and in the gradient region (`grad_at`), and whether it decays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdamWTensor {
    pub value_at: usize,
    pub grad_at: usize,
    pub len: usize,
    pub decay: bool,
}

/// Up to [`ADAMW_CHUNK_LEN`] elements of one tensor: one entry of the table
/// [`adamw_step_chunks`](super::cpu::optim::adamw_step_chunks) (and `optim_adamw_chunks_f32`, whose `AdamWChunk` this is byte for byte)
/// walks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamWChunk {
    pub value_at: u64,
    pub grad_at: u64,
    pub len: u32,
    /// 1: apply weight decay; 0: not (BN parameters, biases).
    pub decay: u32,
}

impl AdamWChunk {
    /// The table for `tensors`: each cut into pieces of at most [`ADAMW_CHUNK_LEN`] elements, in
    /// order. Empty tensors give no chunk.
    pub fn table(tensors: &[AdamWTensor]) -> Vec<AdamWChunk> {
        tensors
            .iter()
            .flat_map(|t| {
                (0..t.len).step_by(ADAMW_CHUNK_LEN).map(move |start| AdamWChunk {
                    value_at: (t.value_at + start) as u64,
                    grad_at: (t.grad_at + start) as u64,
                    len: (t.len - start).min(ADAMW_CHUNK_LEN) as u32,
                    decay: u32::from(t.decay),
                })
            })
            .collect()
    }

    /// One past the last element the chunks touch in the value regions and in the gradient region:
    /// what the regions handed to the step must cover.
    pub fn extents(chunks: &[AdamWChunk]) -> (usize, usize) {
        chunks.iter().fold((0, 0), |(v, g), c| {
            (
                v.max((c.value_at + c.len as u64) as usize),
                g.max((c.grad_at + c.len as u64) as usize),
            )
        })
    }
}

/// Output shape of upsampling `xs` by `factor`.
pub fn upsample_shape(xs: Shape4, factor: usize) -> Shape4 {
    Shape4 {
        h: xs.h * factor,
        w: xs.w * factor,
        ..xs
    }
}
