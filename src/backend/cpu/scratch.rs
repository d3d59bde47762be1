//! Reusable buffers for the temporaries of the CPU ops (padded inputs, packed weights, partial
//! sums). A large allocation goes back to the operating system when it is freed, and the next
//! one faults every page in again: for a convolution's padded input that costs about as much as
//! a memory-bound op. So the buffers are kept when dropped, and the next op of the same size
//! finds them.
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use super::Real;

/// Buffers kept. Only the thread that runs the ops takes them (never a parallel job), so the pool
/// is shared by the process rather than per thread: that thread may be any of rayon's workers
/// (see [`super::in_pool`]), and per-thread pools would keep a copy of every buffer on each.
const KEPT: usize = 8;

static POOL: Pool = Pool(Mutex::new(Vec::new()));

/// The kept buffers, as words (8-byte aligned for any element type).
struct Pool(Mutex<Vec<Vec<u64>>>);

impl Pool {
    /// A panic while the lock was held cannot leave the list inconsistent (each use is one push
    /// or remove), so a poisoned lock is taken over.
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u64>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The smallest kept buffer of at least `words` words, or a new one.
    fn take(&self, words: usize) -> Vec<u64> {
        let kept = {
            let mut list = self.list();
            let fit = list
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= words)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            fit.map(|i| list.swap_remove(i))
        };
        kept.unwrap_or_else(|| vec![0; words])
    }

    /// Keeps `buffer`, dropping the smallest one when more than [`KEPT`] are kept: the large
    /// ones are those whose allocation costs most.
    fn give(&self, buffer: Vec<u64>) {
        let mut list = self.list();
        list.push(buffer);
        if list.len() > KEPT {
            let smallest = (0..list.len()).min_by_key(|&i| list[i].len()).expect("not empty");
            list.swap_remove(smallest);
        }
    }
}

/// A buffer of `len` values of `T` from the pool, given back when dropped. Its contents are
/// whatever the last user left: callers write every element they read.
pub struct Scratch<T: Real> {
    words: Vec<u64>,
    len: usize,
    _values: PhantomData<T>,
}

/// Takes a buffer of at least `len` values (the smallest kept one that is large enough).
pub fn take<T: Real>(len: usize) -> Scratch<T> {
    let words = POOL.take((len * std::mem::size_of::<T>()).div_ceil(8));
    Scratch {
        words,
        len,
        _values: PhantomData,
    }
}

/// A pooled buffer of `len` zeros.
pub fn zeroed<T: Real>(len: usize) -> Scratch<T> {
    let mut s = take::<T>(len);
    s.fill(T::ZERO);
    s
}

impl<T: Real> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice::<u64, T>(&self.words)[..self.len]
    }
}

impl<T: Real> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut::<u64, T>(&mut self.words)[..self.len]
    }
}

impl<T: Real> Drop for Scratch<T> {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.words));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused() {
        // A pool of its own: the process-wide one is shared with the tests running beside this.
        let pool = Pool(Mutex::new(Vec::new()));
        let first = pool.take(1000);
        let at = first.as_ptr() as usize;
        pool.give(first);
        let again = pool.take(900);
        assert_eq!(again.as_ptr() as usize, at, "the kept buffer is reused");
        assert!(again.len() >= 900);
        assert_eq!(pool.take(2000).len(), 2000, "a larger request gets a new buffer");
        for size in 1..=KEPT + 3 {
            pool.give(vec![0; size * 10]);
        }
        let kept: Vec<usize> = pool.list().iter().map(Vec::len).collect();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(*kept.iter().min().unwrap(), 40, "the smallest buffers were dropped");
    }

    #[test]
    fn scratch_has_the_length_asked_for() {
        let b = zeroed::<f32>(900);
        assert!(b.iter().all(|&v| v == 0.0) && b.len() == 900);
        let c = take::<f64>(10);
        assert_eq!(c.len(), 10);
    }
}
