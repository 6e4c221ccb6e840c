# Shared steps of scripts/bench-vs-llamacpp.sh and scripts/bench-serve-vs-llamaserver.sh
# (sourced, not run). The caller defines log() and sets REPO (the checkout) and CACHE.

# ensure_tools [COMMAND:PACKAGE ...]: installs with apt-get whatever of cmake, g++, make,
# pip and the extra commands given is missing; cargo must already be there.
ensure_tools() {
  local missing=() pair
  command -v cmake >/dev/null || missing+=(cmake)
  command -v c++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || [ -x "${pair%%:*}" ] || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get (needed to build or measure llama.cpp)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain" >&2; exit 1; }
}

# build_mllm: builds mllm-cli (release) and sets MLLM; sets MODEL to the default model
# (fetched on first use) unless MODEL is already set.
build_mllm() {
  log "building mllm-cli (release)"
  nice -n 10 cargo build --release -q -p mllm-cli
  MLLM="$REPO/target/release/mllm"
  if [ -z "${MODEL:-}" ]; then
    MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
    [ -f "$MODEL" ] || { log "fetching the model"; "$MLLM" pull; }
  fi
  [ -f "$MODEL" ] || { echo "model not found: $MODEL" >&2; exit 1; }
}

# build_llamacpp VERSION TARGET...: llama.cpp from the llama-cpp-python VERSION sdist (which
# carries it under vendor/llama.cpp), built into $CACHE/llama.cpp-VERSION/build with the
# given targets (each built once, then cached); sets LDIR. Never touches the repo.
build_llamacpp() {
  local version=$1 target todo=()
  shift
  LDIR="$CACHE/llama.cpp-$version"
  for target in "$@"; do
    [ -x "$LDIR/build/bin/$target" ] || todo+=("$target")
  done
  [ ${#todo[@]} -gt 0 ] || return 0
  mkdir -p "$LDIR"
  if [ ! -f "$LDIR/src/CMakeLists.txt" ]; then
    log "downloading the llama-cpp-python $version sdist (carries llama.cpp under vendor/llama.cpp)"
    local tmp
    tmp="$(mktemp -d)"
    # --no-binary for this package only: its build deps (cmake, ninja) may come as wheels.
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$version" -d "$tmp" || {
      rm -rf "$tmp"
      echo "could not download llama-cpp-python==$version; set LLAMA_CPP_PY_VERSION" >&2
      exit 1
    }
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
    rm -rf "$LDIR/src"
    mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$LDIR/src"
    rm -rf "$tmp"
  fi
  # One configuration for every target (the server without its web UI: no npm, no download).
  log "building llama.cpp ($version) ${todo[*]} in $LDIR (a few minutes the first time)"
  nice -n 10 cmake -S "$LDIR/src" -B "$LDIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF >"$LDIR/configure.log" 2>&1 || {
    echo "llama.cpp configure failed, see $LDIR/configure.log" >&2
    exit 1
  }
  nice -n 10 cmake --build "$LDIR/build" --target "${todo[@]}" -j "$(nproc)" >"$LDIR/build.log" 2>&1 || {
    echo "llama.cpp build failed, see $LDIR/build.log" >&2
    exit 1
  }
}
