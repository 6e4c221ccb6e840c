//! mllm: a CPU inference engine for small language models, built around one idea:
//! any [`nn::Module`] can be *forked* as a lazy task and *waited* on, so independent
//! branches of a network, or independent requests, run concurrently on one pool.
//!
//! ```
//! use mllm::prelude::*;
//!
//! # fn main() -> mllm::Result<()> {
//! mllm::initialize_context();
//! let net = nn::Linear::new(&nn::Registry::new("proj"), 8, 4);
//! let mut params = ParameterFile::create();
//! params.push("proj.weight", Tensor::zeros(&[4, 8], DType::F32)?)?;
//! params.push("proj.bias", Tensor::zeros(&[4], DType::F32)?)?;
//! net.load(&params)?;
//!
//! let x = Tensor::empty(&[2, 8], DType::F32).alloc()?;
//! let a = mllm::fork(&net, vec![x.clone()]);
//! let b = mllm::fork(&net, vec![x]);
//! let [ya, yb] = mllm::wait_all([a, b])?;
//! assert_eq!(ya[0].dims(), &[2, 4]);
//! assert_eq!(yb[0].dims(), &[2, 4]);
//! # Ok(())
//! # }
//! ```
//!
//! Layers, top to bottom (a lower layer never imports a higher one):
//! `models` → `nn` → `task` / `params` → `tensor` → `kernels`; `context` is used by all.

pub mod context;
mod error;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod params;
pub mod task;
pub mod tensor;

pub use context::memory::{memory_report, MemoryReport};
pub use context::{context, initialize_context, Context, ContextBuilder};
pub use error::{Error, Result};
pub use nn::fork;
pub use params::ParameterFile;
pub use task::{wait, wait_all, wait_many, Task};
pub use tensor::{DType, MemType, Shape, Tensor};

/// Everything a typical program needs: `use mllm::prelude::*;`.
pub mod prelude {
    pub use crate::nn::{self, Module};
    pub use crate::{fork, wait, wait_all, DType, MemType, ParameterFile, Result, Shape, Tensor};
}

/// Prints its arguments separated by spaces, each with its `Debug` form, like the
/// seed's `mllm::print(a.shape(), b.shape())`.
///
/// ```
/// let t = mllm::Tensor::zeros(&[2, 3], mllm::DType::F32).unwrap();
/// mllm::print!(t.shape(), t.dtype());   // prints: [2, 3] F32
/// ```
#[macro_export]
macro_rules! print {
    ($($arg:expr),* $(,)?) => {{
        let parts: ::std::vec::Vec<::std::string::String> =
            ::std::vec![$(::std::format!("{:?}", $arg)),*];
        ::std::println!("{}", parts.join(" "));
    }};
}
