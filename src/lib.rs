//! convert-weight: convert LLM checkpoints between PyTorch/HuggingFace and MindSpore.
//!
//! Layers: [`formats`] (bytes and files, no models) → [`tensor`] (headers, byte references) → [`models`]
//! (names and ops, no bytes) → [`ops`]/[`exec`] (the op tree and its evaluation) → [`convert`] (one job) →
//! [`runner`] (many jobs; knows neither formats nor models).

pub mod convert;
pub mod device;
pub mod exec;
#[cfg(feature = "cuda")]
pub mod exec_cuda;
pub mod fingerprint;
pub mod formats;
pub mod fp8;
pub mod fsio;
pub mod golden;
pub mod inspect;
pub mod manifest;
pub mod models;
pub mod ops;
pub mod options;
pub mod plan;
pub mod report;
pub mod runner;
pub mod tensor;
