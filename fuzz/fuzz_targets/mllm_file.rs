//! Fuzz target: arbitrary bytes through the `.mllm` (v1/v2) reader, then written back as
//! v2 and read again (the round trip must give identical tensors). Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mllm::params::mllm_file::fuzz_target(data);
});
