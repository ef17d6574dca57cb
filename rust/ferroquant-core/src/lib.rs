//! ferroquant-core: the element loops of ferroquant, with no Python in sight.
//!
//! Every public function takes slices and returns a `Result`; nothing here may panic on input that a caller
//! can construct. The NumPy reference in `ferroquant.reference` specifies each function, and the Python tests
//! check that the two agree bit for bit on integer codes.

pub mod adaround;
pub mod affine;
pub mod arq;
pub mod awq;
pub mod channel_stats;
pub mod error;
pub mod gptq;
pub mod groupwise;
pub mod hessian;
pub mod histogram;
pub mod kernels;
pub mod ifmr;
pub mod layout;
pub mod linalg;
pub mod metrics;
pub mod nuq;
pub mod output_clip;
pub mod par;
pub mod qparams;
pub mod scheme;
pub mod smooth;
pub mod stop;
pub mod text;
pub mod ulq;

pub use error::QuantError;
pub use layout::ChannelLayout;
pub use qparams::QParams;
pub use scheme::Scheme;
pub use stop::Stop;
