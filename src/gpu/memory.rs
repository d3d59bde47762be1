//! Device memory: owned typed buffers, raw views handed to kernels, and the arena.
//!
//! Kernels receive raw device pointers ([`DevSlice`], [`DevSliceMut`]). A view borrows what it
//! points into, so an owned [`DeviceBuffer`] cannot be freed while a view of it lives. Views into
//! the [`Arena`] are the exception the executor needs: many disjoint mutable regions of one
//! allocation at once, which the borrow checker cannot express, so that constructor is `unsafe`
//! and the memory planner is what guarantees the regions do not overlap.
use std::marker::PhantomData;

use anyhow::{bail, Context as _, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::Gpu;

/// Read-only device view: pointer and element count.
#[derive(Debug, Clone, Copy)]
pub struct DevSlice<'a, T> {
    ptr: u64,
    len: usize,
    _borrow: PhantomData<&'a T>,
}

/// Writable device view.
#[derive(Debug)]
pub struct DevSliceMut<'a, T> {
    ptr: u64,
    len: usize,
    _borrow: PhantomData<&'a mut T>,
}

/// The constructor from a raw address and the accessors both view types have; `$doc` and
/// `$safety` are `from_raw`'s summary and safety requirement.
macro_rules! view_common {
    ($doc:literal, $safety:literal) => {
        #[doc = $doc]
        ///
        /// # Safety
        #[doc = $safety]
        pub unsafe fn from_raw(ptr: u64, len: usize) -> Self {
            Self {
                ptr,
                len,
                _borrow: PhantomData,
            }
        }
        /// The raw device address, to pass to a kernel.
        pub fn ptr(&self) -> u64 {
            self.ptr
        }
        pub fn len(&self) -> usize {
            self.len
        }
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
    };
}

impl<'a, T> DevSlice<'a, T> {
    view_common!(
        "A view of `len` elements at device address `ptr`, with no borrow to tie it to.",
        "The memory must stay allocated, and not be written through another view, for as long as the caller uses \
         this one."
    );
    /// Elements `start..start + len` of this view.
    pub fn sub(&self, start: usize, len: usize) -> DevSlice<'a, T> {
        assert!(
            start + len <= self.len,
            "sub-view {start}+{len} out of {} elements",
            self.len
        );
        DevSlice {
            ptr: self.ptr + (start * size_of::<T>()) as u64,
            len,
            _borrow: PhantomData,
        }
    }
}

impl<'a, T> DevSliceMut<'a, T> {
    view_common!(
        "A writable view of `len` elements at device address `ptr`, with no borrow to tie it to.",
        "The memory must stay allocated, and no other view may overlap it, for as long as the caller uses this one."
    );
    /// A read-only view of the same memory, for as long as this one is borrowed.
    pub fn as_ref(&self) -> DevSlice<'_, T> {
        DevSlice {
            ptr: self.ptr,
            len: self.len,
            _borrow: PhantomData,
        }
    }
    /// Reborrows elements `start..start + len`.
    pub fn sub_mut(&mut self, start: usize, len: usize) -> DevSliceMut<'_, T> {
        // The read-only view's bounds check and address arithmetic.
        let ptr = self.as_ref().sub(start, len).ptr;
        DevSliceMut {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }
}

/// True when every pointer is 16-byte aligned: the kernels' vector paths need it.
pub fn all_aligned_16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

/// An owned, typed device allocation.
pub struct DeviceBuffer<T> {
    inner: CudaSlice<T>,
}

impl<T: DeviceRepr + ValidAsZeroBits> DeviceBuffer<T> {
    /// A zeroed buffer of `len` elements.
    pub fn zeros(gpu: &Gpu, len: usize) -> Result<Self> {
        let inner = gpu
            .stream()
            .alloc_zeros::<T>(len)
            .with_context(|| format!("allocating {} on the GPU", human_bytes((len * size_of::<T>()) as u64)))?;
        Ok(DeviceBuffer { inner })
    }
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// Copies `host` to a new device buffer.
    pub fn from_host(gpu: &Gpu, host: &[T]) -> Result<Self> {
        let inner = gpu.stream().clone_htod(host).with_context(|| {
            format!(
                "uploading {} to the GPU",
                human_bytes(std::mem::size_of_val(host) as u64)
            )
        })?;
        Ok(DeviceBuffer { inner })
    }

    /// Copies the buffer back to the host (waits for the stream).
    pub fn to_host(&self, gpu: &Gpu) -> Result<Vec<T>> {
        gpu.stream().clone_dtoh(&self.inner).context("downloading from the GPU")
    }

    /// Overwrites the buffer with `host` (same length).
    pub fn upload(&mut self, gpu: &Gpu, host: &[T]) -> Result<()> {
        if host.len() != self.len() {
            bail!("upload of {} elements into a buffer of {}", host.len(), self.len());
        }
        gpu.stream()
            .memcpy_htod(host, &mut self.inner)
            .context("uploading to the GPU")
    }

    /// Copies `host` into elements `offset..offset + host.len()`, leaving the rest as it is.
    pub fn upload_at(&mut self, gpu: &Gpu, offset: usize, host: &[T]) -> Result<()> {
        if offset + host.len() > self.len() {
            bail!(
                "upload of {} elements at {offset} into a buffer of {}",
                host.len(),
                self.len()
            );
        }
        let mut range = self.inner.slice_mut(offset..offset + host.len());
        gpu.stream()
            .memcpy_htod(host, &mut range)
            .context("uploading to the GPU")
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }
    fn raw_ptr(&self) -> u64 {
        // Event tracking is off (see Gpu::open), so the guard records nothing.
        let (ptr, _guard) = self.inner.device_ptr(self.inner.stream());
        ptr
    }
    pub fn slice(&self) -> DevSlice<'_, T> {
        DevSlice {
            ptr: self.raw_ptr(),
            len: self.len(),
            _borrow: PhantomData,
        }
    }
    pub fn slice_mut(&mut self) -> DevSliceMut<'_, T> {
        DevSliceMut {
            ptr: self.raw_ptr(),
            len: self.len(),
            _borrow: PhantomData,
        }
    }
    /// The cudarc slice, for copies cudarc does itself (e.g. device-to-device).
    pub fn cuda_slice(&self) -> &CudaSlice<T> {
        &self.inner
    }
    pub fn cuda_slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.inner
    }
}

/// Offsets and sizes in an [`Arena`] are multiples of this: enough for 16-byte vector access and
/// for the 128-byte lines the memory system moves. The memory planner places tensors by it
/// (`graph::plan::ALIGN` is this constant).
pub const ALIGN: usize = 256;

/// One device allocation that the memory planner's offsets carve up: the executor's activations
/// live here, so a training step allocates nothing. Where each tensor goes is the planner's
/// decision (`graph::plan`), made once before the first step; the arena only checks that a view
/// stays inside it.
pub struct Arena {
    memory: CudaSlice<u8>,
    base: u64,
}

impl Arena {
    pub fn new(gpu: &Gpu, capacity: usize) -> Result<Self> {
        let capacity = capacity.div_ceil(ALIGN) * ALIGN;
        // SAFETY: u8 has no invalid bit patterns; every block is written before it is read.
        let memory = unsafe { gpu.stream().alloc::<u8>(capacity) }.with_context(|| {
            format!(
                "allocating a {} arena on {}",
                human_bytes(capacity as u64),
                gpu.info().name
            )
        })?;
        let base = {
            let (base, _guard) = memory.device_ptr(memory.stream());
            base
        };
        Ok(Arena { memory, base })
    }

    pub fn capacity(&self) -> usize {
        self.memory.len()
    }

    /// A read-only typed view of `len` elements at byte `offset`.
    pub fn view<T>(&self, offset: usize, len: usize) -> DevSlice<'_, T> {
        self.check(offset, len * size_of::<T>());
        DevSlice {
            ptr: self.base + offset as u64,
            len,
            _borrow: PhantomData,
        }
    }

    /// A writable typed view of `len` elements at byte `offset`.
    ///
    /// # Safety
    /// No other live view may overlap these bytes while this one is used: the memory planner's
    /// offsets guarantee it for the executor.
    pub unsafe fn view_mut<T>(&self, offset: usize, len: usize) -> DevSliceMut<'_, T> {
        self.check(offset, len * size_of::<T>());
        DevSliceMut {
            ptr: self.base + offset as u64,
            len,
            _borrow: PhantomData,
        }
    }

    fn check(&self, offset: usize, bytes: usize) {
        assert!(
            offset + bytes <= self.memory.len(),
            "arena view {offset}+{bytes} bytes past its {} bytes",
            self.memory.len()
        );
    }
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Page-locked host memory for uploads that do not wait: the host fills it, the copy to the
/// device is queued on the GPU's stream, and the call returns. The next fill first waits for the
/// previous copy out of it (an event), so a training step's input upload overlaps the GPU's work
/// on whatever was queued before it. (A copy from pageable memory makes the host wait for the
/// stream first: one idle gap per upload.)
pub struct Staging<T> {
    host: Option<cudarc::driver::PinnedHostSlice<T>>,
    copied: cudarc::driver::CudaEvent,
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> Staging<T> {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
        Ok(Self {
            host: None,
            copied: gpu.context().new_event(flags).context("creating a CUDA event")?,
        })
    }

    /// Fills `len` staged elements with `fill` and queues their copy to device address `dst`,
    /// which must hold `len` elements of `T` and stay allocated until the stream reaches the copy.
    pub fn upload(&mut self, gpu: &Gpu, dst: u64, len: usize, fill: impl FnOnce(&mut [T])) -> Result<()> {
        self.copied.synchronize().context("waiting for the previous upload")?;
        if self.host.as_ref().is_none_or(|h| h.len() < len) {
            self.host = None;
            // SAFETY: the memory is written by `fill` before it is copied anywhere.
            let pinned = unsafe { gpu.context().alloc_pinned::<T>(len.max(1)) }.with_context(|| {
                format!(
                    "allocating {} of page-locked host memory",
                    human_bytes((len * size_of::<T>()) as u64)
                )
            })?;
            self.host = Some(pinned);
        }
        let host = self.host.as_mut().expect("allocated").as_mut_slice()?;
        let staged = &mut host[..len];
        fill(staged);
        // SAFETY: `dst` holds `len` elements (the caller's contract); `staged` is page-locked and
        // is not touched again before `copied` (recorded right after the copy) has completed.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, &*staged, gpu.stream().cu_stream()) }
            .context("queueing an upload to the GPU")?;
        self.copied.record(gpu.stream()).context("recording an upload")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(6 * 1024 * 1024 * 1024), "6.0 GiB");
    }
}
