//! The f32 CPU reference backend: clear, parallel with rayon, NHWC like the GPU.
//!
//! Each op family is a file of plain functions over slices plus explicit shape/parameter
//! structs (`conv::conv2d_fwd(x, xs, w, &params, bias, y)`), mirrored argument for argument by
//! `backend::cuda::<family>`. [`CpuBackend`] adapts them to the [`Backend`] trait: it resolves
//! [`View`]s (byte offsets from the memory plan) into slices of one arena.
//!
//! The functions are generic over [`Real`] (f32 or f64): f32 is the reference the CUDA kernels
//! are compared with and what CPU inference runs; f64 lets whole-network gradient checks use
//! finite differences without f32 rounding drowning the signal (`CpuBackend::<f64>`).
pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod elementwise;
pub mod heatmap;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod resample;
pub mod scratch;
pub mod simd;

use crate::backend::{
    AddReluJoin, Backend, BnGrads, BnRefs, BnRunning, BnWeights, ConvParams, ConvRefs, Grad, GradOut, OpTime, OpTimes,
    ParamId, ParamSpec, PoolParams, Shape4, UpsampleMode, View,
};
use batchnorm::BnForward;

/// Runs `pass`, a sequence of CPU ops (a training step, a forward pass), on a worker thread of
/// rayon's pool, and returns its result.
///
/// Every op splits its work with rayon. Called from a thread outside the pool, each op would hand
/// its jobs to the pool and put the caller to sleep until they finish: two thread wake-ups per
/// op, tens of microseconds each, which for the hundreds of small ops of a narrow network's step
/// cost more than their arithmetic (hrnet-w8 at 256x224: about a tenth of a training step). On a
/// worker, an op's jobs start on the calling thread at once and the other workers steal what
/// they can. The results are the same either way: no op's order of summation depends on which
/// thread runs what.
pub fn in_pool<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    // `rayon::scope` runs its closure on a worker of the global pool (injecting it from outside).
    rayon::scope(|_| pass())
}

/// The element type of the CPU ops: f32, or f64 for precise gradient checks.
pub trait Real:
    bytemuck::Pod
    + Send
    + Sync
    + PartialOrd
    + Default
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn max(self, other: Self) -> Self;
    fn sqrt(self) -> Self;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// A batch norm's gamma, beta and parameters from the backend's parameter store.
fn weights_of<'a, T>(params: &'a [Vec<T>], bn: &BnRefs) -> BnWeights<&'a [T]> {
    BnWeights::new(&params[bn.gamma.0], &params[bn.beta.0], bn.params)
}

/// A batch norm's running statistics from the backend's parameter store.
fn running_of<'a, T>(params: &'a [Vec<T>], bn: &BnRefs) -> BnRunning<&'a [T]> {
    BnRunning::new(&params[bn.running_mean.0], &params[bn.running_var.0])
}

/// The CPU backend: one activation arena plus parameter and gradient vectors, all of `T`
/// (BN saved statistics included, so plan it with `DtypeSizes { activation: size_of::<T>(),
/// stats: size_of::<T>() }`).
#[derive(Default)]
pub struct CpuBackend<T: Real = f32> {
    arena: Vec<T>,
    params: Vec<Vec<T>>,
    grads: Vec<Vec<T>>,
    /// Wall-clock time of every op while profiling (`cephalo bench --device cpu --profile-ops`).
    profile: Option<OpProfile>,
}

/// The CPU op profile: the node being run (from [`Backend::label`]) and every op timed so far.
#[derive(Default)]
struct OpProfile {
    node: String,
    ops: Vec<OpTime>,
    /// Ops nest (a fused op may run two others): only the outermost is timed.
    depth: usize,
}

impl CpuBackend<f32> {
    /// The f32 backend (the reference and CPU inference).
    pub fn new() -> Self {
        Self::with_element()
    }
}

impl<T: Real> CpuBackend<T> {
    /// A backend of any element type: `CpuBackend::<f64>::with_element()` for gradient checks.
    pub fn with_element() -> Self {
        Self {
            arena: Vec::new(),
            params: Vec::new(),
            grads: Vec::new(),
            profile: None,
        }
    }

    /// Starts timing every op (wall clock: the CPU ops are synchronous).
    pub fn enable_op_profile(&mut self) {
        self.profile = Some(OpProfile::default());
    }

    /// The ops timed since the last call, per kind and one by one, slowest first.
    pub fn take_op_times(&mut self) -> OpTimes {
        match self.profile.as_mut() {
            Some(p) => OpTimes::from_ops(std::mem::take(&mut p.ops)),
            None => OpTimes::default(),
        }
    }

    /// Runs one op, timed when profiling.
    fn timed<R>(&mut self, kind: &'static str, f: impl FnOnce(&mut Self) -> R) -> R {
        let Some(p) = self.profile.as_mut() else {
            return f(self);
        };
        p.depth += 1;
        let started = std::time::Instant::now();
        let result = f(self);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let p = self.profile.as_mut().expect("profiling stays on during an op");
        p.depth -= 1;
        if p.depth == 0 {
            p.ops.push(OpTime {
                kind,
                node: p.node.clone(),
                ms,
            });
        }
        result
    }

    /// Writes a tensor without rounding through f32.
    pub fn write_exact(&mut self, t: View, data: &[T]) {
        self.arena[range::<T>(t)].copy_from_slice(data);
    }

    pub fn read_exact(&self, t: View) -> Vec<T> {
        self.arena[range::<T>(t)].to_vec()
    }

    pub fn write_param_exact(&mut self, p: ParamId, data: &[T]) {
        self.params[p.0].copy_from_slice(data);
    }

    pub fn param_exact(&self, p: ParamId) -> &[T] {
        &self.params[p.0]
    }

    pub fn grad_exact(&self, p: ParamId) -> &[T] {
        &self.grads[p.0]
    }
}

/// Element range of a view in the arena.
fn range<T>(v: View) -> std::ops::Range<usize> {
    let size = std::mem::size_of::<T>();
    assert_eq!(v.offset % size, 0, "arena offsets are element-aligned");
    let start = v.offset / size;
    start..start + v.shape.len()
}

/// Borrows `reads` shared and `writes` exclusively from one arena. Panics unless every write
/// range is disjoint from every other range, which is what makes handing them out sound.
fn split<'a, T>(arena: &'a mut [T], reads: &[View], writes: &[View]) -> (Vec<&'a [T]>, Vec<&'a mut [T]>) {
    let rr: Vec<_> = reads.iter().map(|&v| range::<T>(v)).collect();
    let wr: Vec<_> = writes.iter().map(|&v| range::<T>(v)).collect();
    let disjoint = |a: &std::ops::Range<usize>, b: &std::ops::Range<usize>| a.end <= b.start || b.end <= a.start;
    for (i, w) in wr.iter().enumerate() {
        assert!(
            w.end <= arena.len(),
            "view {w:?} outside the arena of {} floats",
            arena.len()
        );
        assert!(
            rr.iter().all(|r| disjoint(w, r)),
            "write view {w:?} overlaps a read view"
        );
        assert!(wr[i + 1..].iter().all(|o| disjoint(w, o)), "write views {w:?} overlap");
    }
    for r in &rr {
        assert!(
            r.end <= arena.len(),
            "view {r:?} outside the arena of {} floats",
            arena.len()
        );
    }
    let base = arena.as_mut_ptr();
    // SAFETY: all ranges are inside the arena (checked), writes are disjoint from each other and
    // from all reads (checked), and the returned borrows live no longer than `arena`'s borrow.
    unsafe {
        let reads = rr
            .into_iter()
            .map(|r| std::slice::from_raw_parts(base.add(r.start) as *const T, r.len()))
            .collect();
        let writes = wr
            .into_iter()
            .map(|r| std::slice::from_raw_parts_mut(base.add(r.start), r.len()))
            .collect();
        (reads, writes)
    }
}

impl<T: Real> CpuBackend<T> {
    /// One read view, one write view.
    fn rw(&mut self, r: View, w: View) -> (&[T], &mut [T]) {
        let (mut rs, mut ws) = split(&mut self.arena, &[r], &[w]);
        (rs.remove(0), ws.remove(0))
    }

    /// Runs a batch norm's backward `f` on the arena, the layer's gamma and beta, and their
    /// gradients, which are taken out of the store for the call (to be borrowed mutably beside
    /// the arena) and put back.
    fn bn_backward(&mut self, bn: &BnRefs, f: impl FnOnce(&mut [T], BnWeights<&[T]>, BnGrads<&mut [T]>)) {
        let mut dgamma = std::mem::take(&mut self.grads[bn.gamma.0]);
        let mut dbeta = std::mem::take(&mut self.grads[bn.beta.0]);
        let grads = BnGrads::new(dgamma.as_mut_slice(), dbeta.as_mut_slice());
        f(&mut self.arena, weights_of(&self.params, bn), grads);
        self.grads[bn.gamma.0] = dgamma;
        self.grads[bn.beta.0] = dbeta;
    }

    /// The batch statistics of `x` into `saved` and the BN's running-statistics update: the
    /// statistics half of every training-mode batch norm (or of the convolution before it).
    fn batch_stats(&mut self, x: View, bn: &BnRefs, saved: View) {
        let (reads, mut writes) = split(&mut self.arena, &[x], &[saved]);
        // The running statistics are taken out and put back to borrow them mutably together.
        let mut rm = std::mem::take(&mut self.params[bn.running_mean.0]);
        let mut rv = std::mem::take(&mut self.params[bn.running_var.0]);
        let running = BnRunning::new(rm.as_mut_slice(), rv.as_mut_slice());
        batchnorm::bn_batch_stats(reads[0], x.shape, bn.params, writes[0], running);
        self.params[bn.running_mean.0] = rm;
        self.params[bn.running_var.0] = rv;
    }
}

impl<T: Real> Backend for CpuBackend<T> {
    fn prepare(&mut self, arena_bytes: usize, params: &[ParamSpec]) {
        self.arena = vec![T::ZERO; arena_bytes.div_ceil(std::mem::size_of::<T>())];
        self.params = params.iter().map(|p| vec![T::ZERO; p.len]).collect();
        self.grads = params
            .iter()
            .map(|p| if p.trainable { vec![T::ZERO; p.len] } else { Vec::new() })
            .collect();
    }

    fn activation_bytes(&self) -> usize {
        std::mem::size_of::<T>()
    }

    fn label(&mut self, node: &str, shape: Shape4) {
        if let Some(p) = self.profile.as_mut() {
            p.node = format!("{node} {}x{}x{}x{}", shape.n, shape.h, shape.w, shape.c);
        }
    }

    fn stats_bytes(&self) -> usize {
        std::mem::size_of::<T>()
    }

    fn write(&mut self, t: View, data: &[f32]) {
        let dst = &mut self.arena[range::<T>(t)];
        assert_eq!(dst.len(), data.len(), "write: length");
        dst.iter_mut().zip(data).for_each(|(d, &v)| *d = T::from_f64(v as f64));
    }

    fn read(&self, t: View) -> Vec<f32> {
        self.arena[range::<T>(t)].iter().map(|v| v.to_f64() as f32).collect()
    }

    fn write_param(&mut self, p: ParamId, data: &[f32]) {
        let dst = &mut self.params[p.0];
        assert_eq!(dst.len(), data.len(), "write_param: length");
        dst.iter_mut().zip(data).for_each(|(d, &v)| *d = T::from_f64(v as f64));
    }

    fn read_param(&self, p: ParamId) -> Vec<f32> {
        self.params[p.0].iter().map(|v| v.to_f64() as f32).collect()
    }

    fn read_grad(&self, p: ParamId) -> Vec<f32> {
        self.grads[p.0].iter().map(|v| v.to_f64() as f32).collect()
    }

    fn conv2d_fwd(&mut self, x: View, w: ParamId, bias: Option<ParamId>, p: &ConvParams, y: View) {
        self.timed("conv2d_fwd", |this| {
            let (xa, ya) = split_rw(&mut this.arena, x, y);
            let b = bias.map(|b| this.params[b.0].as_slice());
            conv::conv2d_fwd(xa, x.shape, &this.params[w.0], p, b, ya);
        })
    }

    fn conv2d_bn_fwd_eval(
        &mut self,
        x: View,
        conv: &ConvRefs,
        bn: &BnRefs,
        relu: bool,
        residual: Option<View>,
        y: View,
    ) {
        let ConvRefs { w, bias, ref p } = *conv;
        self.timed("conv2d_bn_fwd_eval", |this| {
            let reads: Vec<View> = std::iter::once(x).chain(residual).collect();
            let (r, mut writes) = split(&mut this.arena, &reads, &[y]);
            let (xa, ya) = (r[0], &mut *writes[0]);
            let pr = &this.params;
            let (scale, shift) = batchnorm::bn_eval_affine(weights_of(pr, bn), running_of(pr, bn));
            let affine = conv::Affine {
                scale: &scale,
                shift: &shift,
                residual: r.get(1).copied(),
                relu,
            };
            let b = bias.map(|b| pr[b.0].as_slice());
            conv::conv2d_affine_fwd(xa, x.shape, &pr[w.0], p, b, affine, ya);
        })
    }

    const SPLITS_CONCAT_CONV: bool = true;

    fn concat_conv_bn_fwd_eval(&mut self, xs: &[View], conv: &ConvRefs, bn: &BnRefs, relu: bool, y: View) {
        self.timed("concat_conv_bn_fwd_eval", |this| {
            let (r, mut writes) = split(&mut this.arena, xs, &[y]);
            let parts: Vec<(&[T], Shape4)> = r.iter().zip(xs).map(|(&a, v)| (a, v.shape)).collect();
            let pr = &this.params;
            let (scale, shift) = batchnorm::bn_eval_affine(weights_of(pr, bn), running_of(pr, bn));
            let affine = conv::Affine {
                scale: &scale,
                shift: &shift,
                residual: None,
                relu,
            };
            let b = conv.bias.map(|b| pr[b.0].as_slice());
            conv::conv1x1_concat_affine_fwd(&parts, (&pr[conv.w.0], &conv.p), b, affine, &mut *writes[0]);
        })
    }

    fn conv2d_fwd_bn_stats(&mut self, x: View, conv: &ConvRefs, y: View, bn: &BnRefs, saved: View) {
        self.timed("conv2d_fwd_bn_stats", |this| {
            this.conv2d_fwd(x, conv.w, conv.bias, &conv.p, y);
            this.batch_stats(y, bn, saved);
        })
    }

    fn conv2d_dgrad(&mut self, dy: View, w: ParamId, p: &ConvParams, dx: Grad) {
        self.timed("conv2d_dgrad", |this| {
            let (dya, dxa) = split_rw(&mut this.arena, dy, dx.view);
            conv::conv2d_dgrad(dya, &this.params[w.0], p, dxa, dx.view.shape, dx.accumulate);
        })
    }

    fn conv2d_wgrad(&mut self, x: View, dy: View, p: &ConvParams, dw: ParamId, db: Option<ParamId>) {
        self.timed("conv2d_wgrad", |this| {
            let (xa, dya) = (&this.arena[range::<T>(x)], &this.arena[range::<T>(dy)]);
            conv::conv2d_wgrad(xa, x.shape, dya, p, &mut this.grads[dw.0]);
            if let Some(db) = db {
                conv::conv2d_bias_grad(dya, dy.shape, &mut this.grads[db.0]);
            }
        })
    }

    fn conv_transpose2d_fwd(&mut self, x: View, w: ParamId, p: &ConvParams, y: View) {
        self.timed("conv_transpose2d_fwd", |this| {
            let (xa, ya) = split_rw(&mut this.arena, x, y);
            conv::conv_transpose2d_fwd(xa, x.shape, &this.params[w.0], p, ya);
        })
    }

    fn conv_transpose2d_dgrad(&mut self, dy: View, w: ParamId, p: &ConvParams, dx: Grad) {
        self.timed("conv_transpose2d_dgrad", |this| {
            let (dya, dxa) = split_rw(&mut this.arena, dy, dx.view);
            conv::conv_transpose2d_dgrad(dya, &this.params[w.0], p, dxa, dx.view.shape, dx.accumulate);
        })
    }

    fn conv_transpose2d_wgrad(&mut self, x: View, dy: View, p: &ConvParams, dw: ParamId) {
        self.timed("conv_transpose2d_wgrad", |this| {
            let (xa, dya) = (&this.arena[range::<T>(x)], &this.arena[range::<T>(dy)]);
            conv::conv_transpose2d_wgrad(xa, x.shape, dya, p, &mut this.grads[dw.0]);
        })
    }

    fn batchnorm_fwd_train(&mut self, x: View, bn: &BnRefs, relu: bool, y: View, saved: View) {
        self.timed("batchnorm_fwd_train", |this| {
            // bn_fwd_train's two halves: the statistics, then the normalisation with them.
            this.batch_stats(x, bn, saved);
            this.batchnorm_apply_saved(x, bn, relu, saved, y);
        })
    }

    fn batchnorm_fwd_eval(&mut self, x: View, bn: &BnRefs, relu: bool, y: View) {
        self.timed("batchnorm_fwd_eval", |this| {
            let (xa, ya) = split_rw(&mut this.arena, x, y);
            let p = &this.params;
            batchnorm::bn_fwd_eval(xa, x.shape, weights_of(p, bn), running_of(p, bn), relu, ya);
        })
    }

    fn batchnorm_apply_saved(&mut self, x: View, bn: &BnRefs, relu: bool, saved: View, y: View) {
        self.timed("batchnorm_apply_saved", |this| {
            let (reads, mut writes) = split(&mut this.arena, &[x, saved], &[y]);
            let p = &this.params;
            batchnorm::bn_apply_saved(reads[0], x.shape, weights_of(p, bn), reads[1], relu, writes[0]);
            let _ = &mut writes;
        })
    }

    fn batchnorm_bwd(&mut self, dy: View, x: View, bn: &BnRefs, relu: bool, saved: View, dx: Grad) {
        self.timed("batchnorm_bwd", |this| {
            this.bn_backward(bn, |arena, weights, grads| {
                let (reads, mut writes) = split(arena, &[dy, x, saved], &[dx.view]);
                let fwd = BnForward::new(reads[1], x.shape, weights, reads[2]);
                let out = GradOut::new(&mut *writes[0], dx.accumulate);
                batchnorm::bn_bwd(reads[0], fwd, relu, out, grads);
            })
        })
    }

    fn batchnorm_add_relu_fwd_train(&mut self, x: View, bn: &BnRefs, residual: View, y: View, saved: View) {
        self.timed("batchnorm_add_relu_fwd_train", |this| {
            this.batch_stats(x, bn, saved);
            this.batchnorm_add_relu_apply_saved(x, bn, residual, saved, y);
        })
    }

    fn batchnorm_add_relu_apply_saved(&mut self, x: View, bn: &BnRefs, residual: View, saved: View, y: View) {
        self.timed("batchnorm_add_relu_apply_saved", |this| {
            // One pass; on the CPU the BN output is f32 either way, so the result is the unfused
            // pair's (batch norm, then add_relu_fwd) to the bit.
            let (r, mut w) = split(&mut this.arena, &[x, saved, residual], &[y]);
            let p = &this.params;
            batchnorm::bn_add_relu_apply_saved(r[0], x.shape, weights_of(p, bn), r[1], r[2], w[0]);
            let _ = &mut w;
        })
    }

    fn batchnorm_add_relu_bwd(
        &mut self,
        dy: View,
        x: View,
        bn: &BnRefs,
        saved: View,
        join: AddReluJoin<View, Grad>,
        dx: Grad,
    ) {
        let AddReluJoin { y, d_residual: dres } = join;
        self.timed("batchnorm_add_relu_bwd", |this| {
            // The join's backward fused into the BN's passes: the join passes the same masked
            // gradient to the BN output and to the residual, computed once per element.
            let writes_to: Vec<View> = std::iter::once(dx.view).chain(dres.map(|d| d.view)).collect();
            this.bn_backward(bn, |arena, weights, grads| {
                let (reads, mut writes) = split(arena, &[dy, x, y, saved], &writes_to);
                let (dx_out, rest) = writes.split_first_mut().expect("dx is written");
                let join = AddReluJoin {
                    y: reads[2],
                    d_residual: rest
                        .first_mut()
                        .map(|d| GradOut::new(&mut **d, dres.is_some_and(|g| g.accumulate))),
                };
                let fwd = BnForward::new(reads[1], x.shape, weights, reads[3]);
                let out = GradOut::new(&mut **dx_out, dx.accumulate);
                batchnorm::bn_add_relu_bwd(reads[0], fwd, join, out, grads);
            })
        })
    }

    fn relu_fwd(&mut self, x: View, y: View) {
        self.timed("relu_fwd", |this| {
            let (xa, ya) = this.rw(x, y);
            elementwise::relu_fwd(xa, ya);
        })
    }

    fn relu_bwd(&mut self, y: View, dy: View, dx: Grad) {
        self.timed("relu_bwd", |this| {
            let (r, mut w) = split(&mut this.arena, &[y, dy], &[dx.view]);
            elementwise::relu_bwd(r[0], r[1], w[0], dx.accumulate);
            let _ = &mut w;
        })
    }

    fn add_fwd(&mut self, a: View, b: View, y: View) {
        self.timed("add_fwd", |this| {
            let (r, mut w) = split(&mut this.arena, &[a, b], &[y]);
            elementwise::add_fwd(r[0], r[1], w[0]);
            let _ = &mut w;
        })
    }

    fn add_bwd(&mut self, dy: View, da: Option<Grad>, db: Option<Grad>) {
        self.timed("add_bwd", |this| {
            for g in [da, db].into_iter().flatten() {
                let (dya, dxa) = this.rw(dy, g.view);
                elementwise::add_bwd(dya, dxa, g.accumulate);
            }
        })
    }

    fn add_relu_fwd(&mut self, a: View, b: View, y: View) {
        self.timed("add_relu_fwd", |this| {
            let (r, mut w) = split(&mut this.arena, &[a, b], &[y]);
            elementwise::add_relu_fwd(r[0], r[1], w[0]);
            let _ = &mut w;
        })
    }

    fn add_relu_bwd(&mut self, y: View, dy: View, da: Option<Grad>, db: Option<Grad>) {
        self.timed("add_relu_bwd", |this| {
            for g in [da, db].into_iter().flatten() {
                let (r, mut w) = split(&mut this.arena, &[y, dy], &[g.view]);
                elementwise::add_relu_bwd(r[0], r[1], w[0], g.accumulate);
                let _ = &mut w;
            }
        })
    }

    fn upsample_fwd(&mut self, x: View, mode: UpsampleMode, y: View) {
        self.timed("upsample_fwd", |this| {
            let (xa, ya) = this.rw(x, y);
            resample::upsample_fwd(xa, x.shape, mode, ya, y.shape);
        })
    }

    fn upsample_bwd(&mut self, dy: View, mode: UpsampleMode, dx: Grad) {
        self.timed("upsample_bwd", |this| {
            let (dya, dxa) = this.rw(dy, dx.view);
            resample::upsample_bwd(dya, dy.shape, mode, dxa, dx.view.shape, dx.accumulate);
        })
    }

    fn concat_fwd(&mut self, xs: &[View], y: View) {
        self.timed("concat_fwd", |this| {
            let widths: Vec<usize> = xs.iter().map(|v| v.shape.c).collect();
            let (r, mut w) = split(&mut this.arena, xs, &[y]);
            concat::concat_fwd(&r, &widths, w[0]);
            let _ = &mut w;
        })
    }

    fn concat_bwd(&mut self, dy: View, widths: &[usize], dxs: &[Option<Grad>]) {
        self.timed("concat_bwd", |this| {
            let writes: Vec<View> = dxs.iter().flatten().map(|g| g.view).collect();
            let (r, w) = split(&mut this.arena, &[dy], &writes);
            let mut slices = w.into_iter();
            let mut targets: Vec<Option<(&mut [T], bool)>> = dxs
                .iter()
                .map(|g| g.map(|g| (slices.next().expect("one slice per gradient"), g.accumulate)))
                .collect();
            concat::concat_bwd(r[0], widths, &mut targets);
        })
    }

    fn maxpool_fwd(&mut self, x: View, p: &PoolParams, y: View) {
        self.timed("maxpool_fwd", |this| {
            let (xa, ya) = this.rw(x, y);
            pool::maxpool_fwd(xa, x.shape, p, ya);
        })
    }

    fn maxpool_bwd(&mut self, x: View, dy: View, p: &PoolParams, dx: Grad) {
        self.timed("maxpool_bwd", |this| {
            let (r, mut w) = split(&mut this.arena, &[x, dy], &[dx.view]);
            pool::maxpool_bwd(r[0], x.shape, r[1], p, w[0], dx.accumulate);
            let _ = &mut w;
        })
    }
}

/// One read view and one write view of the arena.
fn split_rw<T>(arena: &mut [T], r: View, w: View) -> (&[T], &mut [T]) {
    let (mut rs, mut ws) = split(arena, &[r], &[w]);
    (rs.remove(0), ws.remove(0))
}

/// Shape helper for callers that build views by hand (tests, tools).
pub fn view(offset_floats: usize, shape: Shape4) -> View {
    View {
        offset: offset_floats * 4,
        shape,
    }
}
