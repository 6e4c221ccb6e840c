//! Sentence-transformers' modules after the encoder: `Pooling` (CLS, mean, max, mean over
//! sqrt(len), last token; several modes concatenate in sentence-transformers' order) and
//! `Normalize` (L2), read from `modules.json` and the pooling folder's `config.json`.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// One way of pooling token vectors into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The element-wise maximum over the tokens.
    Max,
    /// The mean over the tokens (every real token: the attention mask).
    Mean,
    /// The sum over the tokens divided by sqrt(tokens).
    MeanSqrtLen,
    /// The last real token's vector.
    LastToken,
}

/// The modules after the encoder: pooling modes (concatenated in order) and normalisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pooling {
    pub modes: Vec<PoolingMode>,
    pub normalize: bool,
}

impl Default for Pooling {
    /// Mean pooling without normalisation: what sentence-transformers uses for a plain
    /// transformers folder.
    fn default() -> Self {
        Pooling { modes: vec![PoolingMode::Mean], normalize: false }
    }
}

impl Pooling {
    /// From a sentence-transformers folder: `modules.json` (which modules, in order) and the
    /// pooling module's `config.json`. A folder without `modules.json` gets the default.
    pub fn from_folder(dir: &Path) -> Result<Pooling> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(Pooling::default());
        }
        let modules = read_json(&modules_path)?;
        let list = modules
            .as_array()
            .ok_or_else(|| Error::format(modules_path.display().to_string(), "not a JSON array of modules"))?;
        let mut pooling = Pooling { modes: vec![], normalize: false };
        let mut seen_pooling = false;
        for (i, m) in list.iter().enumerate() {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            let kind = ty.rsplit('.').next().unwrap_or(ty);
            let bad = |msg: String| Error::format(modules_path.display().to_string(), format!("module {i}: {msg}"));
            match kind {
                "Transformer" if i == 0 => {}
                "Pooling" => {
                    let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
                    let cfg_path = dir.join(sub).join("config.json");
                    pooling.modes = modes_from_config(&read_json(&cfg_path)?)
                        .map_err(|e| Error::format(cfg_path.display().to_string(), e))?;
                    seen_pooling = true;
                }
                "Normalize" => pooling.normalize = true,
                _ => return Err(bad(format!("'{ty}' is not supported (supported: Transformer, Pooling, Normalize)"))),
            }
        }
        if !seen_pooling {
            pooling.modes = vec![PoolingMode::Mean];
        }
        Ok(pooling)
    }

    /// The output width for token vectors of `hidden` values.
    pub fn dim(&self, hidden: usize) -> usize {
        hidden * self.modes.len()
    }

    /// Pool `rows` (`[len, hidden]`, every row a real token) into a vector (zeros for no rows).
    pub fn apply(&self, rows: &[f32], hidden: usize) -> Vec<f32> {
        let len = rows.len() / hidden.max(1);
        if len == 0 {
            return vec![0.0; self.dim(hidden)];
        }
        let mut out = Vec::with_capacity(self.dim(hidden));
        for mode in &self.modes {
            match mode {
                PoolingMode::Cls => out.extend_from_slice(&rows[..hidden]),
                PoolingMode::LastToken => out.extend_from_slice(&rows[(len - 1) * hidden..]),
                PoolingMode::Max => {
                    let mut m = vec![f32::NEG_INFINITY; hidden];
                    for r in rows.chunks_exact(hidden) {
                        m.iter_mut().zip(r).for_each(|(m, &v)| *m = m.max(v));
                    }
                    out.extend(m);
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    // Summed in f64: a long text's mean is then independent of summation order.
                    let mut s = vec![0f64; hidden];
                    for r in rows.chunks_exact(hidden) {
                        s.iter_mut().zip(r).for_each(|(s, &v)| *s += v as f64);
                    }
                    let div = if *mode == PoolingMode::Mean { len as f64 } else { (len as f64).sqrt() };
                    out.extend(s.into_iter().map(|v| (v / div) as f32));
                }
            }
        }
        if self.normalize {
            l2_normalize(&mut out);
        }
        out
    }
}

/// `x / max(|x|, 1e-12)`, as `torch.nn.functional.normalize`.
pub fn l2_normalize(x: &mut [f32]) {
    let norm = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt().max(1e-12);
    x.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
}

fn modes_from_config(cfg: &Value) -> std::result::Result<Vec<PoolingMode>, String> {
    let on = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    if on("pooling_mode_weightedmean_tokens") {
        return Err("pooling_mode_weightedmean_tokens is not supported".into());
    }
    let modes: Vec<PoolingMode> = [
        ("pooling_mode_cls_token", PoolingMode::Cls),
        ("pooling_mode_max_tokens", PoolingMode::Max),
        ("pooling_mode_mean_tokens", PoolingMode::Mean),
        ("pooling_mode_mean_sqrt_len_tokens", PoolingMode::MeanSqrtLen),
        ("pooling_mode_lasttoken", PoolingMode::LastToken),
    ]
    .into_iter()
    .filter(|(k, _)| on(k))
    .map(|(_, m)| m)
    .collect();
    if modes.is_empty() {
        return Err("no pooling mode is switched on".into());
    }
    Ok(modes)
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path.display().to_string(), format!("not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_pool_real_rows_and_concatenate_in_order() {
        let rows = [1.0f32, 2.0, 3.0, -4.0, 5.0, 0.0];
        let p = |modes: Vec<PoolingMode>, normalize| Pooling { modes, normalize }.apply(&rows, 2);
        assert_eq!(p(vec![PoolingMode::Cls], false), [1.0, 2.0]);
        assert_eq!(p(vec![PoolingMode::LastToken], false), [5.0, 0.0]);
        assert_eq!(p(vec![PoolingMode::Max], false), [5.0, 2.0]);
        assert_eq!(p(vec![PoolingMode::Mean], false), [3.0, -2.0 / 3.0]);
        assert_eq!(p(vec![PoolingMode::Cls, PoolingMode::Mean], false), [1.0, 2.0, 3.0, -2.0 / 3.0]);
        let n = p(vec![PoolingMode::Cls], true);
        assert!((n[0] - 1.0 / 5f32.sqrt()).abs() < 1e-7 && (n[1] - 2.0 / 5f32.sqrt()).abs() < 1e-7);
        let mut zero = [0.0f32; 3];
        l2_normalize(&mut zero);
        assert_eq!(zero, [0.0; 3], "a zero vector stays zero (no NaN)");
        assert_eq!(p(vec![PoolingMode::Cls], false).len(), 2);
        assert_eq!(Pooling { modes: vec![PoolingMode::LastToken], normalize: true }.apply(&[], 2), [0.0, 0.0]);
    }

    #[test]
    fn folder_config_is_read_and_unsupported_modules_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Pooling::from_folder(dir.path()).unwrap(), Pooling::default());
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"word_embedding_dimension": 4, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        let modules = |extra: &str| {
            format!(
                r#"[{{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"}},
                {{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}}{extra}]"#
            )
        };
        std::fs::write(dir.path().join("modules.json"), modules("")).unwrap();
        assert_eq!(
            Pooling::from_folder(dir.path()).unwrap(),
            Pooling { modes: vec![PoolingMode::Cls], normalize: false }
        );
        std::fs::write(
            dir.path().join("modules.json"),
            modules(r#",{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}"#),
        )
        .unwrap();
        assert!(Pooling::from_folder(dir.path()).unwrap().normalize);
        std::fs::write(
            dir.path().join("modules.json"),
            modules(r#",{"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}"#),
        )
        .unwrap();
        let e = Pooling::from_folder(dir.path()).unwrap_err().to_string();
        assert!(e.contains("Dense") && e.contains("not supported"), "{e}");
        std::fs::write(dir.path().join("modules.json"), "{").unwrap();
        assert!(Pooling::from_folder(dir.path()).unwrap_err().to_string().contains("JSON"));
    }
}
