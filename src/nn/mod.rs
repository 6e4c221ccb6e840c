//! Neural-network modules: the [`Module`] trait, hierarchical parameter names
//! ([`Registry`]), checked loading from a [`ParameterFile`](crate::ParameterFile), the
//! standard layers, and [`fork`] which turns a module call into a lazy task.

mod fork;
mod layers;
mod module;

pub use fork::fork;
pub use layers::*;
pub use module::{Accepts, Module, ModuleList, Param, Registry};
