//! Block-quantised formats (GGML's Q4_0, Q4_1, Q8_0, K-quants): block layouts,
//! dequantisation and dot products that work on the blocks directly.
