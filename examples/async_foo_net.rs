//! The seed's "Complete Example", line by line in Rust: a module with four linear
//! layers, fake weights pushed into a ParameterFile, two lazy forks waited together,
//! the output shapes, and a memory report.
//!
//! Run: `cargo run --release --example async_foo_net`

use mllm::prelude::*;

#[derive(Clone)]
struct FooNet {
    reg: nn::Registry,
    linear_0: nn::Linear,
    linear_1: nn::Linear,
    linear_2: nn::Linear,
    linear_3: nn::Linear,
}

impl FooNet {
    fn new(name: &str) -> FooNet {
        let reg = nn::Registry::new(name);
        FooNet {
            linear_0: nn::Linear::new(&reg.child("linear_0"), 1024, 2048),
            linear_1: nn::Linear::new(&reg.child("linear_1"), 1024, 2048),
            linear_2: nn::Linear::new(&reg.child("linear_2"), 1024, 2048),
            linear_3: nn::Linear::new(&reg.child("linear_3"), 1024, 2048),
            reg,
        }
    }
}

impl nn::Module for FooNet {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }

    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        Ok(vec![
            self.linear_0.apply(&inputs[0])?,
            self.linear_1.apply(&inputs[0])?,
            self.linear_2.apply(&inputs[0])?,
            self.linear_3.apply(&inputs[0])?,
        ])
    }
}

fn main() -> mllm::Result<()> {
    mllm::initialize_context();
    {
        let net = FooNet::new("foo_net");

        // Make some fake weights.
        let mut params = ParameterFile::create();
        for i in 0..4 {
            let name = format!("foo_net.linear_{i}");
            let w = Tensor::empty(&[2048, 1024], DType::F32)
                .mem_type(MemType::ParamsNormal)
                .name(format!("{name}.weight"))
                .alloc()?;
            let b = Tensor::empty(&[2048], DType::F32)
                .mem_type(MemType::ParamsNormal)
                .name(format!("{name}.bias"))
                .alloc()?;
            params.push(format!("{name}.weight"), w)?;
            params.push(format!("{name}.bias"), b)?;
        }
        net.load(&params)?;

        // Async run.
        // The net will not run until mllm::wait_all is called.
        let future_0 = mllm::fork(&net, vec![Tensor::empty(&[1, 12, 1024, 1024], DType::F32).alloc()?]);
        let future_1 = mllm::fork(&net, vec![Tensor::empty(&[1, 12, 1024, 1024], DType::F32).alloc()?]);

        // Run future_0 and future_1 async.
        let [outs_0, outs_1] = mllm::wait_all([future_0, future_1])?;

        mllm::print!(outs_0[0].shape(), outs_0[1].shape(), outs_0[2].shape(), outs_0[3].shape());
        mllm::print!(outs_1[0].shape(), outs_1[1].shape(), outs_1[2].shape(), outs_1[3].shape());
    }
    mllm::memory_report();
    Ok(())
}
