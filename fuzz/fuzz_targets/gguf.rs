//! Fuzz target: arbitrary bytes through the GGUF reader, then every tensor dequantised
//! and every metadata value through the typed getters. Any panic or abort is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm::params::gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = gguf::read_bytes(data) {
        for (_, t) in f.iter() {
            let _ = t.to_f32_vec();
        }
        for k in f.metadata().keys() {
            let _ = (f.meta_u64(k), f.meta_f32(k), f.meta_str(k), f.meta_str_array(k));
        }
    }
});
