//! Launch wrappers of `kernels/*.cu`, one file per kernel family, each function named and shaped
//! like its CPU twin in `backend/cpu/`.
pub mod elementwise;
