//! netc's runtime: executes compiled networks. Holds the reference backend
//! (candle), weight loading and validation, and the embedding API.
//!
//! ```no_run
//! use netc_runtime::{Model, HostTensor};
//! let model = Model::from_file("models/resnet18.net", &[]).unwrap();
//! let session = model.session_with_random_weights(0).unwrap();
//! let image = HostTensor::zeros(&[1, 3, 224, 224]);
//! let logits = &session.run(&[image]).unwrap()[0];
//! assert_eq!(logits.shape, [1, 1000]);
//! ```

pub mod backend;
pub mod rng;
mod session;
pub mod weights;

pub use session::{Model, Session};
pub use weights::{HostTensor, Weights};
