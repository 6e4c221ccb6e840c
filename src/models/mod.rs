//! Model architectures built from `nn` modules (LLaMA family), the generation loop,
//! samplers and KV caches. Nothing below this layer knows about models.
