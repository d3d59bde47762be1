//! Reusable buffers for the temporaries of the CPU ops (padded inputs, packed weights, partial
//! sums). A large allocation goes back to the operating system when it is freed, and the next
//! one faults every page in again: for a convolution's padded input that costs about as much as
//! a memory-bound op. So each thread keeps the buffers it used, and the next op of the same size
//! finds them.
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::Real;

/// Buffers kept per thread (the executor's thread takes them; rayon's workers never do).
const KEPT: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
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
    let words_needed = (len * std::mem::size_of::<T>()).div_ceil(8);
    let mut words = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let fit = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= words_needed)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match fit {
            Some(i) => pool.swap_remove(i),
            None => Vec::new(),
        }
    });
    if words.len() < words_needed {
        words = vec![0; words_needed];
    }
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
        let words = std::mem::take(&mut self.words);
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.push(words);
            if pool.len() > KEPT {
                // Keep the largest: they are the ones whose allocation costs most.
                let smallest = (0..pool.len()).min_by_key(|&i| pool[i].len()).expect("not empty");
                pool.swap_remove(smallest);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused() {
        let first = {
            let mut a = take::<f32>(1000);
            a.fill(1.0);
            a.words.as_ptr() as usize
        };
        let b = zeroed::<f32>(900);
        assert_eq!(b.words.as_ptr() as usize, first, "the kept buffer is reused");
        assert!(b.iter().all(|&v| v == 0.0) && b.len() == 900);
        let c = take::<f64>(10);
        assert_eq!(c.len(), 10);
    }
}
