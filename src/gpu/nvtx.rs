//! NVTX ranges, so an `nsys` timeline reads like the program: forward, backward, each stage.
//!
//! NVIDIA's NVTX3 is header-only: without a profiler attached a range costs a predictable branch;
//! when nsys injects itself the same calls are recorded. Nothing is loaded at run time.

/// An NVTX push/pop range that ends when dropped:
/// `let _r = nvtx::range("forward");`
#[must_use = "the range ends when this guard is dropped"]
pub struct RangeGuard(#[allow(dead_code)] ::nvtx::LocalRange);

pub fn range(name: &str) -> RangeGuard {
    RangeGuard(::nvtx::LocalRange::new(::nvtx::Str::from_str_lossy(name)))
}

/// A single instant marker (e.g. "skipped step: loss scale halved").
pub fn mark(name: &str) {
    ::nvtx::mark(::nvtx::Str::from_str_lossy(name));
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_nest_and_are_free_without_a_profiler() {
        let outer = super::range("outer");
        {
            let _inner = super::range("inner ünïcode");
            super::mark("marker");
        }
        drop(outer);
    }
}
