//! Fuzz target: arbitrary bytes through the safetensors reader, then every tensor
//! converted to f32. Any panic or abort is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm::ParameterFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = ParameterFile::safetensors_from_bytes(data) {
        for (_, t) in f.iter() {
            let _ = t.to_f32_vec();
        }
    }
});
