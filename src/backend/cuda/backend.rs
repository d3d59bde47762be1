//! [`CudaBackend`]: the [`Backend`] trait on the GPU, op by op the launch wrappers of this folder.
//!
//! # Memory
//! Two device allocations, both made once in [`Backend::prepare`], so a step allocates nothing
//! (except scratch that grows on the first step only):
//! * the activation arena, fp16, laid out by the memory planner (views are `(offset, shape)`);
//!   BN saved statistics inside it are f32;
//! * the parameter store, three contiguous regions: the fp32 master values of every parameter
//!   (what the optimizer updates and checkpoints hold), their fp16 copies (what the convolutions
//!   read), and the fp32 gradients of the trainable ones. Contiguous regions let the optimizer
//!   unscale, check and measure all gradients in one launch each. Every parameter starts on a
//!   16-byte boundary in each region, for the kernels' vector paths.
//!
//! Convolution weight gradients, BN and bias gradients are fp32 and carry the loss scale of the
//! output gradient; unscaling is the optimizer's job.
//!
//! # Errors
//! The [`Backend`] methods return nothing (the CPU backend cannot fail), so a failed launch is
//! kept as the backend's first error, later ops are skipped, and [`Backend::take_error`] hands it
//! to the caller, which checks it after each forward/backward.
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, ensure, Context as _, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use half::f16;

use super::{batchnorm as bn, concat, conv, conv_wgrad, elementwise as ew, pool, resample};
use crate::backend::{
    AddReluJoin, Backend, BnGrads, BnRefs, BnRunning, BnWeights, ConvParams, ConvRefs, Grad, GradOut, ParamId,
    ParamSpec, PoolParams, Shape4, UpsampleMode, View,
};
use crate::backend::{OpTime, OpTimes};
use crate::gpu::memory::human_bytes;
use crate::gpu::memory::Staging;
use crate::gpu::{Arena, DevSlice, DevSliceMut, DeviceBuffer, Gpu};

/// Elements per alignment unit: parameters start on 16-byte boundaries in every region.
const ALIGN_ELEMS: usize = 8;

/// Where one parameter lives in the store (element offsets into each region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ParamSlot {
    len: usize,
    /// Offset into the master (f32) and half (f16) regions: the same element index in both.
    at: usize,
    /// Offset into the gradient region, for trainable parameters.
    grad_at: Option<usize>,
}

/// The layout of the parameter store; pure arithmetic, so it is tested without a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamLayout {
    slots: Vec<ParamSlot>,
    /// Elements of the master and half regions (every parameter, padded).
    values: usize,
    /// Elements of the gradient region (trainable parameters, padded).
    grads: usize,
}

impl ParamLayout {
    pub fn new(specs: &[ParamSpec]) -> Self {
        let (mut values, mut grads) = (0, 0);
        let slots = specs
            .iter()
            .map(|s| {
                let slot = ParamSlot {
                    len: s.len,
                    at: values,
                    grad_at: s.trainable.then_some(grads),
                };
                values += s.len.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
                if s.trainable {
                    grads += s.len.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
                }
                slot
            })
            .collect();
        Self { slots, values, grads }
    }

    /// Bytes of the whole store: f32 masters, f16 copies, f32 gradients.
    pub fn bytes(&self) -> usize {
        self.values * (4 + 2) + self.grads * 4
    }

    /// Elements of the gradient region (the length of [`CudaBackend::all_grads`]).
    pub fn grad_elements(&self) -> usize {
        self.grads
    }

    /// Elements of the master region (the masters of [`CudaBackend::optimizer_regions`]), which an
    /// optimizer's moment buffers mirror element for element.
    pub fn value_elements(&self) -> usize {
        self.values
    }

    /// `(offset, len)` of parameter `p` in the master/half regions, and its gradient offset.
    pub fn slot(&self, p: ParamId) -> (usize, usize, Option<usize>) {
        let s = self.slots[p.0];
        (s.at, s.len, s.grad_at)
    }

    fn master_offset_bytes(&self, at: usize) -> usize {
        at * 4
    }
    fn half_offset_bytes(&self, at: usize) -> usize {
        self.values * 4 + at * 2
    }
    fn grad_offset_bytes(&self, at: usize) -> usize {
        self.values * 6 + at * 4
    }
}

/// The memory [`CudaBackend::sharing`] offers: an activation arena and a parameter store with its
/// layout.
struct SharedMemory {
    act: Arc<Arena>,
    store: Arc<Arena>,
    layout: ParamLayout,
}

/// CUDA-event timing of every op (the `--profile-ops` tables).
struct OpProfile {
    events: Vec<CudaEvent>,
    used: usize,
    /// Per timed op: its kind, the node it served (index into `labels`) and its first event.
    spans: Vec<(&'static str, usize, usize)>,
    /// "node name NxHxWxC" per labelled node, in the order the executor ran them.
    labels: Vec<String>,
}

pub struct CudaBackend {
    gpu: Arc<Gpu>,
    act: Option<Arc<Arena>>,
    store: Option<Arc<Arena>>,
    layout: ParamLayout,
    scratch_f32: Option<DeviceBuffer<f32>>,
    scratch_f16: Option<DeviceBuffer<f16>>,
    /// Reallocations of the two scratch buffers so far (see [`CudaBackend::scratch_generation`]).
    scratch_generation: u64,
    /// Ops are being recorded into a CUDA graph (see [`CudaBackend::set_recording`]).
    recording: bool,
    /// Folded eval-mode BN (scale then shift, 2 * c floats) per BN, valid until a parameter changes.
    folds: BTreeMap<ParamId, DeviceBuffer<f32>>,
    error: Option<anyhow::Error>,
    profile: Option<OpProfile>,
    /// Another backend's memory, offered to [`Backend::prepare`] (see [`CudaBackend::sharing`]).
    offered: Option<SharedMemory>,
    /// `prepare` adopted the offered parameter store: another backend owns and writes it.
    adopted_params: bool,
    /// Page-locked staging of [`Backend::write`]: the input batch upload does not wait.
    staging: Option<Staging<f16>>,
}

impl CudaBackend {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        Self {
            gpu,
            act: None,
            store: None,
            layout: ParamLayout::default(),
            scratch_f32: None,
            scratch_f16: None,
            scratch_generation: 0,
            recording: false,
            folds: BTreeMap::new(),
            error: None,
            profile: None,
            offered: None,
            adopted_params: false,
            staging: None,
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// A backend that runs in `other`'s memory instead of allocating its own: its activations in
    /// `other`'s activation arena when that is large enough, and its parameters in `other`'s store
    /// when the parameter layouts are equal (the same graph), so they are `other`'s parameters.
    /// For the validation executor of a training run, which only ever runs between training steps
    /// on the same stream: it saves the device memory of a second arena and a second copy of the
    /// weights. The two must never be used in an interleaved way that expects either arena to keep
    /// its contents (training keeps nothing in its arena from one step to the next, but the caller
    /// must forget anything it staged there), and after the parameters change the validation
    /// backend must be told ([`CudaBackend::params_changed`]). `other` must be prepared.
    pub fn sharing(other: &CudaBackend) -> Self {
        let mut backend = Self::new(other.gpu.clone());
        backend.offered = match (&other.act, &other.store) {
            (Some(act), Some(store)) => Some(SharedMemory {
                act: act.clone(),
                store: store.clone(),
                layout: other.layout.clone(),
            }),
            _ => None,
        };
        backend
    }

    /// Whether this backend's activation arena and parameter store are (respectively) `other`'s.
    pub fn shares_memory_with(&self, other: &CudaBackend) -> (bool, bool) {
        let same = |a: &Option<Arc<Arena>>, b: &Option<Arc<Arena>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        (same(&self.act, &other.act), same(&self.store, &other.store))
    }

    /// Forgets everything derived from the parameters (the folded eval-mode batch norms), for a
    /// backend whose store another backend writes (see [`CudaBackend::sharing`]).
    pub fn params_changed(&mut self) {
        self.folds.clear();
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Device bytes [`Backend::prepare`] will allocate for this arena and these parameters, before
    /// the scratch buffers (which [`scratch_estimate`] bounds).
    pub fn prepared_bytes(arena_bytes: usize, params: &[ParamSpec]) -> usize {
        arena_bytes + ParamLayout::new(params).bytes()
    }

    /// Fills the activation arena with fp16 NaN. Tests call it after `prepare` so that an op
    /// reading memory nothing wrote shows up as NaN instead of as stale numbers.
    pub fn poison_activations(&mut self) -> Result<()> {
        let act = self.act.as_ref().expect("CudaBackend used before prepare");
        // SAFETY: `&mut self` excludes every other view of the arena.
        let all = unsafe { act.view_mut::<f16>(0, act.capacity() / 2) };
        ew::fill_f16(&self.gpu, all, f16::from_bits(0x7e01))
    }

    /// Times every op with CUDA events from now on (costs a little: two events per op).
    pub fn enable_op_profile(&mut self) {
        self.profile = Some(OpProfile {
            events: Vec::new(),
            used: 0,
            spans: Vec::new(),
            labels: vec!["-".into()],
        });
    }

    /// Waits for the GPU and returns the times of the ops since the last call, per kind and one by
    /// one, slowest first.
    pub fn take_op_times(&mut self) -> Result<OpTimes> {
        let Some(profile) = self.profile.as_mut() else {
            return Ok(OpTimes::default());
        };
        self.gpu.synchronize()?;
        let mut ops = Vec::with_capacity(profile.spans.len());
        for &(kind, label, first) in &profile.spans {
            let ms = profile.events[first].elapsed_ms(&profile.events[first + 1])? as f64;
            ops.push(OpTime {
                kind,
                node: profile.labels[label].clone(),
                ms,
            });
        }
        profile.spans.clear();
        profile.labels.truncate(1);
        profile.used = 0;
        Ok(OpTimes::from_ops(ops))
    }

    /// Runs one op: skipped after an earlier failure, its error kept, timed when profiling.
    fn op(&mut self, kind: &'static str, f: impl FnOnce(&mut Self) -> Result<()>) {
        if self.error.is_some() {
            return;
        }
        let first = match self.profile_event() {
            Ok(first) => first,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        let result = f(self);
        if let (Ok(()), Some(first)) = (&result, first) {
            if let Err(e) = self.profile_stop(kind, first) {
                self.error = Some(e);
                return;
            }
        }
        if let Err(e) = result {
            self.error = Some(e.context(format!("GPU op {kind}")));
        }
    }

    /// Records the start event of a profiled op; `None` when not profiling.
    fn profile_event(&mut self) -> Result<Option<usize>> {
        let Some(p) = self.profile.as_mut() else {
            return Ok(None);
        };
        while p.events.len() < p.used + 2 {
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            p.events
                .push(self.gpu.context().new_event(flags).context("creating a CUDA event")?);
        }
        let first = p.used;
        p.used += 2;
        p.events[first].record(self.gpu.stream())?;
        Ok(Some(first))
    }

    fn profile_stop(&mut self, kind: &'static str, first: usize) -> Result<()> {
        let p = self.profile.as_mut().expect("profiling");
        p.events[first + 1].record(self.gpu.stream())?;
        p.spans.push((kind, p.labels.len() - 1, first));
        Ok(())
    }

    fn act(&self) -> &Arena {
        self.act.as_ref().expect("CudaBackend used before prepare")
    }

    fn store(&self) -> &Arena {
        self.store.as_ref().expect("CudaBackend used before prepare")
    }

    /// An fp16 activation.
    fn x(&self, v: View) -> DevSlice<'_, f16> {
        self.act().view(v.offset, v.shape.len())
    }

    /// A writable fp16 activation.
    fn y(&self, v: View) -> DevSliceMut<'_, f16> {
        // SAFETY: the memory planner gives tensors live at the same step disjoint offsets, and
        // every op's output is a different tensor from its inputs.
        unsafe { self.act().view_mut(v.offset, v.shape.len()) }
    }

    /// f32 BN saved statistics (`[mean; invstd]`, the view's element count).
    fn stats(&self, v: View) -> DevSlice<'_, f32> {
        self.act().view(v.offset, v.shape.len())
    }

    fn stats_mut(&self, v: View) -> DevSliceMut<'_, f32> {
        // SAFETY: as `y`: the planner's statistics blocks are disjoint from every other tensor.
        unsafe { self.act().view_mut(v.offset, v.shape.len()) }
    }

    /// An activation of the arena, for work outside the graph (the loss reads the output).
    pub fn activation(&self, v: View) -> DevSlice<'_, f16> {
        self.x(v)
    }

    /// A writable activation, for work outside the graph (the loss writes the output gradient).
    ///
    /// # Safety
    /// No other live view may overlap `v` while this one is used.
    pub unsafe fn activation_mut(&self, v: View) -> DevSliceMut<'_, f16> {
        self.y(v)
    }

    /// The pending error, if any, without clearing it (for `&self` callers such as saving).
    pub fn check_error(&self) -> Result<()> {
        match &self.error {
            Some(e) => bail!("an earlier GPU op failed: {e:#}"),
            None => Ok(()),
        }
    }

    /// fp32 master value of a parameter.
    pub fn master(&self, p: ParamId) -> DevSlice<'_, f32> {
        let (at, len, _) = self.layout.slot(p);
        self.store().view(self.layout.master_offset_bytes(at), len)
    }

    fn master_mut(&self, p: ParamId) -> DevSliceMut<'_, f32> {
        let (at, len, _) = self.layout.slot(p);
        // SAFETY: parameters occupy disjoint ranges of the store, and one op never receives the
        // same parameter twice (the graph builder gives every op its own parameters).
        unsafe { self.store().view_mut(self.layout.master_offset_bytes(at), len) }
    }

    /// fp16 copy of a parameter (what the convolutions read).
    fn half(&self, p: ParamId) -> DevSlice<'_, f16> {
        let (at, len, _) = self.layout.slot(p);
        self.store().view(self.layout.half_offset_bytes(at), len)
    }

    fn grad_mut(&self, p: ParamId) -> Result<DevSliceMut<'_, f32>> {
        let (_, len, grad_at) = self.layout.slot(p);
        let Some(at) = grad_at else {
            bail!("parameter {} has no gradient (not trainable)", p.0)
        };
        // SAFETY: as `master_mut`, in the gradient region.
        Ok(unsafe { self.store().view_mut(self.layout.grad_offset_bytes(at), len) })
    }

    /// A convolution's input activation, its fp16 weight and geometry.
    fn conv_fwd<'a>(&'a self, x: View, w: ParamId, p: &'a ConvParams) -> conv::ConvFwd<'a> {
        conv::ConvFwd {
            x: self.x(x),
            xs: x.shape,
            w: self.half(w),
            p,
        }
    }

    /// The operands of a convolution's input gradient into `dx`.
    fn conv_dgrad<'a>(&'a self, dy: View, w: ParamId, p: &'a ConvParams, dx: Grad) -> conv::ConvDgrad<'a> {
        conv::ConvDgrad {
            dy: self.x(dy),
            w: self.half(w),
            p,
            xs: dx.view.shape,
        }
    }

    fn conv_wgrad<'a>(&'a self, x: View, dy: View, p: &'a ConvParams) -> conv_wgrad::ConvWgrad<'a> {
        conv_wgrad::ConvWgrad {
            x: self.x(x),
            xs: x.shape,
            dy: self.x(dy),
            p,
        }
    }

    /// A writable activation gradient and whether to add to it.
    fn grad_out(&self, g: Grad) -> GradOut<DevSliceMut<'_, f16>> {
        GradOut {
            data: self.y(g.view),
            accumulate: g.accumulate,
        }
    }

    /// A BN layer's gamma and beta (fp32 masters) and constants.
    fn bn_weights(&self, r: &BnRefs) -> bn::DevBnWeights<'_> {
        BnWeights {
            gamma: self.master(r.gamma),
            beta: self.master(r.beta),
            params: r.params,
        }
    }

    /// A BN's training forward: input `x`, the layer's weights and the `saved` statistics it
    /// wrote (what its backward differentiates, and what recomputing its output reads).
    fn bn_forward(&self, x: View, r: &BnRefs, saved: View) -> bn::BnForward<'_> {
        bn::BnForward {
            x: self.x(x),
            xs: x.shape,
            bn: self.bn_weights(r),
            saved: self.stats(saved),
        }
    }

    fn bn_running(&self, r: &BnRefs) -> BnRunning<DevSlice<'_, f32>> {
        BnRunning {
            mean: self.master(r.running_mean),
            var: self.master(r.running_var),
        }
    }

    /// The statistics targets of a training BN: `saved`, its running statistics and `workspace`.
    fn stats_targets<'a>(&'a self, r: &BnRefs, saved: View, workspace: DevSliceMut<'a, f32>) -> bn::StatsTargets<'a> {
        bn::StatsTargets {
            saved: self.stats_mut(saved),
            running: BnRunning {
                mean: self.master_mut(r.running_mean),
                var: self.master_mut(r.running_var),
            },
            workspace,
        }
    }

    fn bn_grads(&self, r: &BnRefs) -> Result<bn::DevBnGrads<'_>> {
        Ok(BnGrads {
            dgamma: self.grad_mut(r.gamma)?,
            dbeta: self.grad_mut(r.beta)?,
        })
    }

    /// Every gradient, contiguous (padding between parameters is zero): for the unscale and
    /// finite check of a training step in one launch.
    pub fn all_grads(&mut self) -> DevSliceMut<'_, f32> {
        let len = self.layout.grads;
        // SAFETY: `&mut self` excludes every other view of the store.
        unsafe { self.store().view_mut(self.layout.grad_offset_bytes(0), len) }
    }

    /// The whole regions a model-wide optimizer step indexes: every master (f32), every gradient
    /// (f32), every fp16 copy, at the offsets of [`ParamLayout::slot`].
    pub fn optimizer_regions(&mut self) -> (DevSliceMut<'_, f32>, DevSlice<'_, f32>, DevSliceMut<'_, f16>) {
        let (values, grads) = (self.layout.values, self.layout.grads);
        self.folds.clear();
        let store = self.store();
        // SAFETY: the three regions are disjoint and `&mut self` excludes other views.
        unsafe {
            (
                store.view_mut(self.layout.master_offset_bytes(0), values),
                store.view(self.layout.grad_offset_bytes(0), grads),
                store.view_mut(self.layout.half_offset_bytes(0), values),
            )
        }
    }

    /// A f32 scratch view of at least `len` elements (grown, never shrunk: stable after step 1).
    fn scratch_f32(&mut self, len: usize) -> Result<DevSliceMut<'_, f32>> {
        grown(
            &self.gpu,
            &mut self.scratch_f32,
            len,
            &mut self.scratch_generation,
            self.recording,
        )
    }

    fn scratch_f16(&mut self, len: usize) -> Result<DevSliceMut<'_, f16>> {
        grown(
            &self.gpu,
            &mut self.scratch_f16,
            len,
            &mut self.scratch_generation,
            self.recording,
        )
    }

    /// Counts the reallocations of the scratch buffers. Work recorded into a CUDA graph keeps the
    /// scratch addresses it was recorded with: a graph is valid while this number is unchanged.
    pub fn scratch_generation(&self) -> u64 {
        self.scratch_generation
    }

    /// Marks the ops that follow as recorded into a CUDA graph (`true`) or run (`false`): while
    /// recording, a scratch buffer that would have to grow makes its op fail instead, because an
    /// allocation cannot be part of a graph replayed every step.
    pub fn set_recording(&mut self, recording: bool) {
        self.recording = recording;
    }

    /// Whether ops are being timed one by one (`enable_op_profile`): their events cannot be
    /// replayed from a CUDA graph, so the step then runs op by op.
    pub fn is_profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// Raw-pointer scratch view: lets a launch borrow the scratch beside `&self` views.
    fn detach<T>(v: DevSliceMut<'_, T>) -> DevSliceMut<'static, T> {
        // SAFETY: the scratch buffers are only replaced by scratch_* calls, which happen before
        // the views of an op are made; the view is used within the op.
        unsafe { DevSliceMut::from_raw(v.ptr(), v.len()) }
    }

    /// The folded eval BN of a fused conv, computed once and cached until a parameter changes.
    fn fold(&mut self, bn_refs: &BnRefs, bias: Option<ParamId>, c: usize) -> Result<DevSlice<'_, f32>> {
        if !self.folds.contains_key(&bn_refs.gamma) {
            // Like a scratch buffer that grows: an allocation cannot be part of a recorded graph.
            ensure!(
                !self.recording,
                "a folded BN would have to be computed while a CUDA graph is recorded"
            );
            let mut buf = DeviceBuffer::<f32>::zeros(&self.gpu, 2 * c).context("allocating a BN fold")?;
            {
                let mut out = buf.slice_mut();
                let (scale, shift) = (Self::detach(out.sub_mut(0, c)), Self::detach(out.sub_mut(c, c)));
                bn::bn_eval_affine(
                    &self.gpu,
                    self.bn_weights(bn_refs),
                    self.bn_running(bn_refs),
                    bias.map(|b| self.master(b)),
                    scale,
                    shift,
                )?;
            }
            self.folds.insert(bn_refs.gamma, buf);
        }
        Ok(self.folds[&bn_refs.gamma].slice())
    }

    /// Converts to fp16 into page-locked memory and queues the copy (no wait).
    fn upload_f16(&mut self, t: View, data: &[f32]) -> Result<()> {
        let (dst, len) = (self.x(t).ptr(), t.shape.len());
        ensure!(len == data.len(), "write: {} values for a tensor of {len}", data.len());
        if self.staging.is_none() {
            self.staging = Some(Staging::new(&self.gpu)?);
        }
        let staging = self.staging.as_mut().expect("created");
        staging.upload(&self.gpu, dst, len, |halves| {
            half::slice::HalfFloatSliceExt::convert_from_f32_slice(halves, data)
        })
    }
}

/// The buffer in `slot`, reallocated first if it holds fewer than `len` elements, which bumps
/// `generation`; refused while `recording` a CUDA graph. (The old one is freed in stream order,
/// after the work queued on it.)
fn grown<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    slot: &'a mut Option<DeviceBuffer<T>>,
    len: usize,
    generation: &mut u64,
    recording: bool,
) -> Result<DevSliceMut<'a, T>> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        ensure!(
            !recording,
            "a scratch buffer would have to grow to {len} elements while a CUDA graph is recorded"
        );
        *slot = None;
        *slot = Some(DeviceBuffer::zeros(gpu, len).context("allocating scratch memory")?);
        *generation += 1;
    }
    Ok(slot.as_mut().expect("allocated").slice_mut())
}

/// Copies host values to device memory and waits, so `src` may be dropped at once.
fn copy_to_device<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, dst: u64, src: &[T]) -> Result<()> {
    // SAFETY: the caller's view covers `src.len()` elements at `dst`; the stream is synchronised
    // before `src` can be dropped.
    unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, gpu.stream().cu_stream()) }
        .context("copying to the GPU")?;
    gpu.synchronize()
}

fn copy_to_host<T: cudarc::driver::DeviceRepr + Default + Clone>(gpu: &Gpu, src: u64, len: usize) -> Result<Vec<T>> {
    let mut host = vec![T::default(); len];
    // SAFETY: the caller's view covers `len` elements at `src`; synchronised before reading.
    unsafe { cudarc::driver::result::memcpy_dtoh_async(host.as_mut_slice(), src, gpu.stream().cu_stream()) }
        .context("copying from the GPU")?;
    gpu.synchronize()?;
    Ok(host)
}

/// Upper bound of the scratch the ops need for `shapes` (activations of the graph) and `convs`:
/// added to [`CudaBackend::prepared_bytes`] for the out-of-memory check before training.
pub fn scratch_estimate(shapes: &[Shape4], convs: &[(Shape4, ConvParams)]) -> usize {
    let bn = shapes
        .iter()
        .map(|&s| bn::bn_workspace_len(s).max(conv::conv2d_bn_stats_workspace_len(s)))
        .max()
        .unwrap_or(0)
        * 4;
    let wgrad = convs
        .iter()
        .map(|(xs, p)| {
            conv_wgrad::conv2d_wgrad_workspace_len(*xs, p).max(conv_wgrad::conv_transpose2d_wgrad_workspace_len(*xs, p))
        })
        .max()
        .unwrap_or(0)
        * 4;
    let dgrad = convs
        .iter()
        .map(|(_, p)| conv::conv2d_dgrad_workspace_len(p))
        .max()
        .unwrap_or(0)
        * 2;
    bn.max(wgrad) + dgrad
}

impl Backend for CudaBackend {
    fn prepare(&mut self, arena_bytes: usize, params: &[ParamSpec]) {
        self.layout = ParamLayout::new(params);
        self.folds.clear();
        let offered = self.offered.take();
        self.adopted_params = false;
        let result = (|| -> Result<()> {
            self.act = None;
            self.store = None;
            self.act =
                Some(match &offered {
                    Some(o) if o.act.capacity() >= arena_bytes => o.act.clone(),
                    _ => Arc::new(Arena::new(&self.gpu, arena_bytes.max(16)).with_context(|| {
                        format!("allocating the {} activation arena", human_bytes(arena_bytes as u64))
                    })?),
                });
            if let Some(o) = offered.as_ref().filter(|o| o.layout == self.layout) {
                // The other backend's parameters, zeroed and written by it.
                self.store = Some(o.store.clone());
                self.adopted_params = true;
                return Ok(());
            }
            let store = Arena::new(&self.gpu, self.layout.bytes().max(16))
                .with_context(|| format!("allocating {} of parameters", human_bytes(self.layout.bytes() as u64)))?;
            // Zero the store once: gradient padding must read as zero for whole-region reductions.
            // SAFETY: the new arena is not viewed anywhere else yet.
            let mut all = unsafe { store.view_mut::<f32>(0, store.capacity() / 4) };
            super::zero_async(&self.gpu, &mut all)?;
            self.store = Some(Arc::new(store));
            Ok(())
        })();
        if let Err(e) = result {
            self.error.get_or_insert(e);
        }
    }

    fn params_adopted(&self) -> bool {
        self.adopted_params
    }

    fn take_error(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn activation_bytes(&self) -> usize {
        2
    }

    fn stats_bytes(&self) -> usize {
        4
    }

    fn label(&mut self, node: &str, shape: Shape4) {
        if let Some(p) = self.profile.as_mut() {
            p.labels
                .push(format!("{node} {}x{}x{}x{}", shape.n, shape.h, shape.w, shape.c));
        }
    }

    fn write(&mut self, t: View, data: &[f32]) {
        if let Some(p) = self.profile.as_mut() {
            p.labels.push("-".into());
        }
        self.op("upload", |b| b.upload_f16(t, data));
    }

    fn read(&self, t: View) -> Vec<f32> {
        let halves: Vec<f16> = match copy_to_host(&self.gpu, self.x(t).ptr(), t.shape.len()) {
            Ok(h) => h,
            // `read` cannot return an error: a failed copy gives NaNs, which every caller treats
            // as a diverged result, and the cause stays in the device's error state.
            Err(_) => return vec![f32::NAN; t.shape.len()],
        };
        halves.iter().map(|h| h.to_f32()).collect()
    }

    fn write_param(&mut self, p: ParamId, data: &[f32]) {
        self.folds.clear();
        self.op("write_param", |b| {
            let master = b.master_mut(p);
            ensure!(
                master.len() == data.len(),
                "parameter {}: {} values for {}",
                p.0,
                data.len(),
                master.len()
            );
            copy_to_device(&b.gpu, master.ptr(), data)?;
            let (at, len, _) = b.layout.slot(p);
            // SAFETY: the half region of p, disjoint from its master region read here.
            let half = unsafe { b.store().view_mut(b.layout.half_offset_bytes(at), len) };
            ew::convert_f32_to_f16(&b.gpu, b.master(p), half)
        });
    }

    fn read_param(&self, p: ParamId) -> Vec<f32> {
        let m = self.master(p);
        copy_to_host(&self.gpu, m.ptr(), m.len()).unwrap_or_else(|_| vec![f32::NAN; m.len()])
    }

    fn read_grad(&self, p: ParamId) -> Vec<f32> {
        let (_, len, grad_at) = self.layout.slot(p);
        let Some(at) = grad_at else {
            return Vec::new();
        };
        let ptr = self.store().view::<f32>(self.layout.grad_offset_bytes(at), len).ptr();
        copy_to_host(&self.gpu, ptr, len).unwrap_or_else(|_| vec![f32::NAN; len])
    }

    fn conv2d_fwd(&mut self, x: View, w: ParamId, bias: Option<ParamId>, p: &ConvParams, y: View) {
        self.op("conv2d_fwd", |b| {
            let epilogue = conv::ConvEpilogue {
                shift: bias.map(|id| b.master(id)),
                ..conv::ConvEpilogue::NONE
            };
            conv::conv2d_fwd(&b.gpu, b.conv_fwd(x, w, p), &epilogue, b.y(y))
        });
    }

    fn conv2d_bn_fwd_eval(
        &mut self,
        x: View,
        conv: &ConvRefs,
        bn_refs: &BnRefs,
        relu: bool,
        residual: Option<View>,
        y: View,
    ) {
        let ConvRefs { w, bias, ref p } = *conv;
        let kind = if residual.is_some() {
            "conv2d_bn_add_relu_fwd_eval"
        } else {
            "conv2d_bn_fwd_eval"
        };
        self.op(kind, |b| {
            let c = p.c_out;
            let fold = b.fold(bn_refs, bias, c)?;
            // SAFETY: the fold buffer lives in `b.folds` until a parameter changes, which cannot
            // happen during this op.
            let fold = unsafe { DevSlice::from_raw(fold.ptr(), fold.len()) };
            let epilogue = conv::ConvEpilogue {
                scale: Some(fold.sub(0, c)),
                shift: Some(fold.sub(c, c)),
                residual: residual.map(|r| b.x(r)),
                relu,
            };
            conv::conv2d_fwd(&b.gpu, b.conv_fwd(x, w, p), &epilogue, b.y(y))
        });
    }

    fn conv2d_fwd_bn_stats(&mut self, x: View, conv: &ConvRefs, y: View, bn_refs: &BnRefs, saved: View) {
        let ConvRefs { w, bias, ref p } = *conv;
        self.op("conv2d_fwd_bn_stats", |b| {
            let ws = Self::detach(b.scratch_f32(conv::conv2d_bn_stats_workspace_len(y.shape))?);
            let targets = b.stats_targets(bn_refs, saved, ws);
            let bias = bias.map(|id| b.master(id));
            conv::conv2d_fwd_bn_stats(&b.gpu, b.conv_fwd(x, w, p), bias, b.y(y), bn_refs.params, targets)
        });
    }

    fn conv2d_dgrad(&mut self, dy: View, w: ParamId, p: &ConvParams, dx: Grad) {
        self.op("conv2d_dgrad", |b| {
            let ws = Self::detach(b.scratch_f16(conv::conv2d_dgrad_workspace_len(p))?);
            conv::conv2d_dgrad(&b.gpu, b.conv_dgrad(dy, w, p, dx), b.grad_out(dx), ws)
        });
    }

    fn conv2d_wgrad(&mut self, x: View, dy: View, p: &ConvParams, dw: ParamId, db: Option<ParamId>) {
        self.op("conv2d_wgrad", |b| {
            let ws = Self::detach(b.scratch_f32(conv_wgrad::conv2d_wgrad_workspace_len(x.shape, p))?);
            let db = match db {
                Some(id) => Some(b.grad_mut(id)?),
                None => None,
            };
            conv_wgrad::conv2d_wgrad(&b.gpu, b.conv_wgrad(x, dy, p), b.grad_mut(dw)?, db, ws)
        });
    }

    fn conv_transpose2d_fwd(&mut self, x: View, w: ParamId, p: &ConvParams, y: View) {
        self.op("conv_transpose2d_fwd", |b| {
            let ws = Self::detach(b.scratch_f16(conv::conv2d_dgrad_workspace_len(&p.adjoint()))?);
            conv::conv_transpose2d_fwd(&b.gpu, b.conv_fwd(x, w, p), b.y(y), ws)
        });
    }

    fn conv_transpose2d_dgrad(&mut self, dy: View, w: ParamId, p: &ConvParams, dx: Grad) {
        self.op("conv_transpose2d_dgrad", |b| {
            conv::conv_transpose2d_dgrad(&b.gpu, b.conv_dgrad(dy, w, p, dx), b.grad_out(dx))
        });
    }

    fn conv_transpose2d_wgrad(&mut self, x: View, dy: View, p: &ConvParams, dw: ParamId) {
        self.op("conv_transpose2d_wgrad", |b| {
            let len = conv_wgrad::conv_transpose2d_wgrad_workspace_len(x.shape, p);
            let ws = Self::detach(b.scratch_f32(len)?);
            conv_wgrad::conv_transpose2d_wgrad(&b.gpu, b.conv_wgrad(x, dy, p), b.grad_mut(dw)?, ws)
        });
    }

    fn batchnorm_fwd_train(&mut self, x: View, bn_refs: &BnRefs, relu: bool, y: View, saved: View) {
        self.op("batchnorm_fwd_train", |b| {
            let ws = Self::detach(b.scratch_f32(bn::bn_workspace_len(x.shape))?);
            let targets = b.stats_targets(bn_refs, saved, ws);
            bn::bn_fwd_train(&b.gpu, b.x(x), x.shape, b.bn_weights(bn_refs), relu, b.y(y), targets)
        });
    }

    fn batchnorm_fwd_eval(&mut self, x: View, bn_refs: &BnRefs, relu: bool, y: View) {
        self.op("batchnorm_fwd_eval", |b| {
            bn::bn_fwd_eval(
                &b.gpu,
                b.x(x),
                x.shape,
                b.bn_weights(bn_refs),
                b.bn_running(bn_refs),
                relu,
                b.y(y),
            )
        });
    }

    fn batchnorm_apply_saved(&mut self, x: View, bn_refs: &BnRefs, relu: bool, saved: View, y: View) {
        self.op("batchnorm_apply_saved", |b| {
            let fwd = b.bn_forward(x, bn_refs, saved);
            bn::bn_apply_saved(&b.gpu, fwd.x, fwd.xs, fwd.bn, fwd.saved, relu, b.y(y))
        });
    }

    fn batchnorm_bwd(&mut self, dy: View, x: View, bn_refs: &BnRefs, relu: bool, saved: View, dx: Grad) {
        self.op("batchnorm_bwd", |b| {
            let ws = Self::detach(b.scratch_f32(bn::bn_workspace_len(x.shape))?);
            let fwd = b.bn_forward(x, bn_refs, saved);
            bn::bn_bwd(&b.gpu, b.x(dy), fwd, relu, b.grad_out(dx), b.bn_grads(bn_refs)?, ws)
        });
    }

    fn batchnorm_add_relu_fwd_train(&mut self, x: View, bn_refs: &BnRefs, residual: View, y: View, saved: View) {
        self.op("batchnorm_add_relu_fwd_train", |b| {
            let ws = Self::detach(b.scratch_f32(bn::bn_workspace_len(x.shape))?);
            let targets = b.stats_targets(bn_refs, saved, ws);
            bn::bn_add_relu_fwd_train(
                &b.gpu,
                b.x(x),
                x.shape,
                b.bn_weights(bn_refs),
                b.x(residual),
                b.y(y),
                targets,
            )
        });
    }

    fn batchnorm_add_relu_apply_saved(&mut self, x: View, bn_refs: &BnRefs, residual: View, saved: View, y: View) {
        self.op("batchnorm_add_relu_apply_saved", |b| {
            let fwd = b.bn_forward(x, bn_refs, saved);
            bn::bn_add_relu_apply_saved(&b.gpu, fwd.x, fwd.xs, fwd.bn, fwd.saved, b.x(residual), b.y(y))
        });
    }

    fn batchnorm_add_relu_bwd(
        &mut self,
        dy: View,
        x: View,
        bn_refs: &BnRefs,
        saved: View,
        join: AddReluJoin<View, Grad>,
        dx: Grad,
    ) {
        self.op("batchnorm_add_relu_bwd", |b| {
            let ws = Self::detach(b.scratch_f32(bn::bn_workspace_len(x.shape))?);
            let fwd = b.bn_forward(x, bn_refs, saved);
            let join = AddReluJoin {
                y: b.x(join.y),
                d_residual: join.d_residual.map(|g| b.grad_out(g)),
            };
            bn::bn_add_relu_bwd(&b.gpu, b.x(dy), fwd, join, b.grad_out(dx), b.bn_grads(bn_refs)?, ws)
        });
    }

    fn relu_fwd(&mut self, x: View, y: View) {
        self.op("relu_fwd", |b| ew::relu_fwd(&b.gpu, b.x(x), b.y(y)));
    }

    fn relu_bwd(&mut self, y: View, dy: View, dx: Grad) {
        self.op("relu_bwd", |b| {
            ew::relu_bwd(&b.gpu, b.x(y), b.x(dy), b.y(dx.view), dx.accumulate)
        });
    }

    fn add_fwd(&mut self, a: View, c: View, y: View) {
        self.op("add_fwd", |b| ew::add_fwd(&b.gpu, b.x(a), b.x(c), b.y(y)));
    }

    fn add_bwd(&mut self, dy: View, da: Option<Grad>, db: Option<Grad>) {
        self.op("add_bwd", |b| {
            for g in [da, db].into_iter().flatten() {
                ew::add_bwd(&b.gpu, b.x(dy), b.y(g.view), g.accumulate)?;
            }
            Ok(())
        });
    }

    fn add_relu_fwd(&mut self, a: View, c: View, y: View) {
        self.op("add_relu_fwd", |b| ew::add_relu_fwd(&b.gpu, b.x(a), b.x(c), b.y(y)));
    }

    fn add_relu_bwd(&mut self, y: View, dy: View, da: Option<Grad>, db: Option<Grad>) {
        self.op("add_relu_bwd", |b| {
            for g in [da, db].into_iter().flatten() {
                ew::add_relu_bwd(&b.gpu, b.x(y), b.x(dy), b.y(g.view), g.accumulate)?;
            }
            Ok(())
        });
    }

    fn upsample_fwd(&mut self, x: View, mode: UpsampleMode, y: View) {
        self.op("upsample_fwd", |b| {
            resample::upsample_fwd(&b.gpu, b.x(x), x.shape, mode, b.y(y), y.shape)
        });
    }

    fn upsample_bwd(&mut self, dy: View, mode: UpsampleMode, dx: Grad) {
        self.op("upsample_bwd", |b| {
            resample::upsample_bwd(
                &b.gpu,
                b.x(dy),
                dy.shape,
                mode,
                b.y(dx.view),
                dx.view.shape,
                dx.accumulate,
            )
        });
    }

    fn concat_fwd(&mut self, xs: &[View], y: View) {
        self.op("concat_fwd", |b| {
            let widths: Vec<usize> = xs.iter().map(|v| v.shape.c).collect();
            let inputs: Vec<DevSlice<f16>> = xs.iter().map(|&v| b.x(v)).collect();
            concat::concat_fwd(&b.gpu, &inputs, &widths, b.y(y))
        });
    }

    fn concat_bwd(&mut self, dy: View, widths: &[usize], dxs: &[Option<Grad>]) {
        self.op("concat_bwd", |b| {
            let mut targets: Vec<Option<(DevSliceMut<f16>, bool)>> =
                dxs.iter().map(|g| g.map(|g| (b.y(g.view), g.accumulate))).collect();
            concat::concat_bwd(&b.gpu, b.x(dy), widths, &mut targets)
        });
    }

    fn maxpool_fwd(&mut self, x: View, p: &PoolParams, y: View) {
        self.op("maxpool_fwd", |b| pool::maxpool_fwd(&b.gpu, b.x(x), x.shape, p, b.y(y)));
    }

    fn maxpool_bwd(&mut self, x: View, dy: View, p: &PoolParams, dx: Grad) {
        self.op("maxpool_bwd", |b| {
            pool::maxpool_bwd(&b.gpu, b.x(x), x.shape, b.x(dy), p, b.y(dx.view), dx.accumulate)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_start_on_16_byte_boundaries_in_disjoint_regions() {
        let specs = [
            ParamSpec {
                len: 9,
                trainable: true,
            },
            ParamSpec {
                len: 3,
                trainable: false,
            },
            ParamSpec {
                len: 16,
                trainable: true,
            },
        ];
        let l = ParamLayout::new(&specs);
        assert_eq!(l.slot(ParamId(0)), (0, 9, Some(0)));
        assert_eq!(l.slot(ParamId(1)), (16, 3, None));
        assert_eq!(l.slot(ParamId(2)), (24, 16, Some(16)));
        assert_eq!((l.value_elements(), l.grad_elements()), (40, 32));
        for at in [0, 16, 24] {
            assert_eq!(l.master_offset_bytes(at) % 16, 0);
            assert_eq!(l.half_offset_bytes(at) % 16, 0);
        }
        assert_eq!(l.grad_offset_bytes(16) % 16, 0);
        // masters [0, 160), halves [160, 240), grads [240, 368)
        assert_eq!(l.half_offset_bytes(0), 160);
        assert_eq!(l.grad_offset_bytes(0), 240);
        assert_eq!(l.bytes(), 368);
    }
}
