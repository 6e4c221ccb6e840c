#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + doc tests, the seed
# example, and the kernel tests cross-built for aarch64 and run under qemu
# (scripts/test-aarch64.sh). Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
cargo run --release --example async_foo_net >/dev/null
scripts/test-aarch64.sh
