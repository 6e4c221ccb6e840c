//! The standard layers; each is a cheap-to-clone handle to its parameters.

mod linear;

pub use linear::Linear;
