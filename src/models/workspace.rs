//! [`Workspace`]: the named work buffers of one forward pass, kept between passes so that
//! a decode step allocates (almost) nothing. Separate from the KV cache: a cache is a
//! sequence's state, a workspace is scratch any pass may borrow. Contents mean nothing
//! between passes.

/// Work buffers of a forward pass over `t` rows (all sequences of a step).
#[derive(Default)]
pub struct Workspace {
    /// Normalised hidden states `[t, hidden]` (also the head's normalised rows).
    pub h: Vec<f32>,
    /// The q|k|v projections `[t, q + 2 kv]`.
    pub qkv: Vec<f32>,
    /// Queries after RoPE `[t, q]` (also the head's gathered rows).
    pub q: Vec<f32>,
    /// Attention output `[t, q]`.
    pub attn: Vec<f32>,
    /// The gate|up projections `[t, 2 ffn]`.
    pub gate_up: Vec<f32>,
    /// The gated activations `[t, ffn]`.
    pub act: Vec<f32>,
    /// One sequence's new keys and values, `[n, kv]` each.
    pub k_new: Vec<f32>,
    pub v_new: Vec<f32>,
    /// One row's heads before their per-head norm.
    pub head: Vec<f32>,
    /// A branch's output after its post-norm (models with sandwich norms).
    pub post: Vec<f32>,
}

impl Workspace {
    /// Size the per-row buffers for `t` rows.
    pub(crate) fn fit(&mut self, t: usize, hidden: usize, q: usize, qkv: usize, ffn: usize) {
        for (buf, n) in [
            (&mut self.h, hidden.max(q)),
            (&mut self.qkv, qkv),
            (&mut self.q, q.max(hidden)),
            (&mut self.attn, q),
            (&mut self.gate_up, 2 * ffn),
            (&mut self.act, ffn),
        ] {
            buf.resize(t * n, 0.0);
        }
    }
}
