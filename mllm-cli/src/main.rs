//! The `mllm` command line. Subcommands arrive with the model issue.

fn main() {
    let ctx = mllm::initialize_context();
    println!("mllm {} ({} threads)", env!("CARGO_PKG_VERSION"), ctx.threads());
}
