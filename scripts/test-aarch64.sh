#!/usr/bin/env bash
# The kernels on aarch64: cross-builds the kernel tests (NEON, NEON with sdot, and the
# scalar references they are compared with) and runs them under qemu-user, once on a CPU
# with the dot-product extension and once on one without. Installs the cross toolchain
# and qemu when missing (apt-get; sudo when not root) and fails when it cannot: it never
# skips silently. Only kernel tests, no models: a few minutes on 2 cores once built.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

die() {
  echo "test-aarch64: $*" >&2
  echo "test-aarch64: the NEON kernels cannot be tested on this machine; install the above" \
    "(Debian/Ubuntu: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) or set" \
    "MLLM_SKIP_AARCH64=1 to skip this step knowingly." >&2
  exit 1
}

if [[ "${MLLM_SKIP_AARCH64:-}" == 1 ]]; then
  echo "test-aarch64: SKIPPED (MLLM_SKIP_AARCH64=1): the NEON kernels were not tested" >&2
  exit 0
fi

qemu_bin() { command -v qemu-aarch64 || command -v qemu-aarch64-static || true; }

if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

if ! command -v aarch64-linux-gnu-gcc >/dev/null || [[ ! -e $sysroot/lib/libc.so.6 ]] || [[ -z "$(qemu_bin)" ]]; then
  command -v apt-get >/dev/null || die "aarch64-linux-gnu-gcc, its libc or qemu-aarch64 is missing and there is no apt-get"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "installing the cross tools needs root or sudo"
    sudo=(sudo)
  fi
  echo "test-aarch64: installing the aarch64 cross compiler and qemu-user" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q || die "apt-get update failed"
  pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" qemu-user \
    || "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" qemu-user-static \
    || die "apt-get install failed"
fi
qemu=$(qemu_bin)
[[ -n $qemu ]] || die "qemu-aarch64 is still missing"
[[ -e $sysroot/lib/libc.so.6 ]] || die "no aarch64 libc in $sysroot"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$qemu -L $sysroot"
cross=(--release --target "$target")

# Native clippy never sees the `cfg(target_arch = "aarch64")` code.
cargo clippy "${cross[@]}" --lib --tests -- -D warnings

# `MLLM_EXPECT_ISAS` makes a test fail unless detection finds exactly these SIMD variants,
# so the comparisons below cannot pass on the scalar reference alone. QEMU_CPU picks the
# emulated CPU: `max` has sdot (both NEON variants run), Cortex-A53 has not (plain NEON is
# then the best and is the one dispatched).
cargo test "${cross[@]}" --lib --test quant_fixtures --no-run # both built at once
QEMU_CPU=max MLLM_EXPECT_ISAS=neon,neondot cargo test "${cross[@]}" --lib -- kernels tensor::packed
QEMU_CPU=max cargo test "${cross[@]}" --test quant_fixtures
QEMU_CPU=cortex-a53 MLLM_EXPECT_ISAS=neon cargo test "${cross[@]}" --lib -- kernels::quant tensor::packed
