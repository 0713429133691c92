//! netc's runtime: executes compiled networks. Holds the backends (candle, the
//! reference; the native CPU backend), weight loading and validation, and the
//! embedding API.
//!
//! ```
//! use netc_runtime::{HostTensor, Model};
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/resnet18.net");
//! // Compile once (here at 64x64), then run as often as needed.
//! let model = Model::from_file(path, &["resolution=64"]).unwrap();
//! let session = model.session_with_random_weights(0).unwrap();
//! let image = HostTensor::zeros(&[1, 3, 64, 64]);
//! let logits = &session.run(&[image]).unwrap()[0];
//! assert_eq!(logits.shape, [1, 1000]);
//! ```

pub mod backend;
pub mod rng;
mod session;
pub mod weights;

pub use backend::cpu::CpuOptions;

/// The candle CPU device (for [`Backend::Candle`] without depending on candle).
pub fn candle_cpu() -> candle_core::Device {
    candle_core::Device::Cpu
}
pub use session::{Backend, Model, Program, Session};
pub use weights::{HostTensor, Weights};
