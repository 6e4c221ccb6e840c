//! `fork(&module, inputs)`: a lazy task that runs `module.forward(inputs)` on the pool.

use crate::nn::Module;
use crate::task::Task;
use crate::tensor::Tensor;

/// Make a task that will run `module.forward(&inputs)` when waited on (nothing runs
/// now, as in the seed). The module is cloned into the task: modules are handles to
/// shared weights, so this costs a few reference-count increments, and the task may
/// outlive the caller's borrow.
pub fn fork<M: Module + Clone + 'static>(module: &M, inputs: Vec<Tensor>) -> Task<Vec<Tensor>> {
    let m = module.clone();
    let label = if m.name().is_empty() { std::any::type_name::<M>().to_string() } else { m.name().to_string() };
    Task::lazy(label, move || m.forward(&inputs))
}
