//! Typed access to a parameter file's metadata (`meta_u64("llama.block_count")` ...),
//! with errors that name the key and the types involved. Reads only; no file formats.

use super::{MetaValue, ParameterFile};
use crate::{Error, Result};

impl MetaValue {
    /// The kind of value, as error messages name it.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::Bool(_) => "bool",
            MetaValue::Int(_) => "signed integer",
            MetaValue::UInt(_) => "unsigned integer",
            MetaValue::Float(_) => "float",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// An integer that fits in u64 (unsigned, or signed and not negative).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::UInt(v) => Some(v),
            MetaValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An integer that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::Int(v) => Some(v),
            MetaValue::UInt(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float, or an integer read as one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Float(v) => Some(v),
            MetaValue::Int(v) => Some(v as f64),
            MetaValue::UInt(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

fn wrong_type(key: &str, v: &MetaValue, expected: &str) -> Error {
    Error::invalid(format!("metadata key '{key}' has type {}, expected {expected}", v.type_name()))
}

impl ParameterFile {
    /// The value of `key`, or a "missing metadata key" error.
    pub fn meta(&self, key: &str) -> Result<&MetaValue> {
        self.metadata.get(key).ok_or_else(|| Error::invalid(format!("missing metadata key '{key}'")))
    }

    fn meta_as<'a, T>(&'a self, key: &str, expected: &str, f: impl Fn(&'a MetaValue) -> Option<T>) -> Result<T> {
        let v = self.meta(key)?;
        f(v).ok_or_else(|| wrong_type(key, v, expected))
    }

    /// A non-negative integer (any width, signed or unsigned in the file).
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta_as(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// A non-negative integer that fits in u32.
    pub fn meta_u32(&self, key: &str) -> Result<u32> {
        self.meta_as(key, "an integer in u32 range", |v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
    }

    /// A non-negative integer that fits in usize (sizes, counts).
    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta_as(key, "an integer in usize range", |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
    }

    pub fn meta_i64(&self, key: &str) -> Result<i64> {
        self.meta_as(key, "an integer", MetaValue::as_i64)
    }

    /// A float (f32 or f64 in the file) or an integer, as f32.
    pub fn meta_f32(&self, key: &str) -> Result<f32> {
        self.meta_as(key, "a float", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.meta_as(key, "a float", MetaValue::as_f64)
    }

    pub fn meta_bool(&self, key: &str) -> Result<bool> {
        self.meta_as(key, "bool", MetaValue::as_bool)
    }

    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta_as(key, "string", MetaValue::as_str)
    }

    pub fn meta_array(&self, key: &str) -> Result<&[MetaValue]> {
        self.meta_as(key, "array", MetaValue::as_array)
    }

    /// An array of strings (a tokenizer's vocabulary or merges).
    pub fn meta_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.meta_array_of(key, "string", MetaValue::as_str)
    }

    /// An array of integers (token types).
    pub fn meta_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.meta_array_of(key, "integer", MetaValue::as_i64)
    }

    /// An array of floats (token scores).
    pub fn meta_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.meta_array_of(key, "float", |v| v.as_f64().map(|x| x as f32))
    }

    fn meta_array_of<'a, T>(&'a self, key: &str, elem: &str, f: impl Fn(&'a MetaValue) -> Option<T>) -> Result<Vec<T>> {
        let items = self.meta_array(key)?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| {
                    Error::invalid(format!(
                        "metadata key '{key}' has type array with element {i} of type {}, expected array of {elem}",
                        v.type_name()
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_getters_convert_and_explain() {
        let mut f = ParameterFile::create();
        f.set_metadata("n", MetaValue::UInt(30));
        f.set_metadata("neg", MetaValue::Int(-1));
        f.set_metadata("eps", MetaValue::Float(1e-5));
        f.set_metadata("arch", MetaValue::Str("llama".into()));
        f.set_metadata("toks", MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("b".into())]));
        f.set_metadata("mixed", MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::UInt(1)]));
        f.set_metadata("big", MetaValue::UInt(1 << 40));
        assert_eq!(f.meta_u64("n").unwrap(), 30);
        assert_eq!(f.meta_usize("n").unwrap(), 30);
        assert_eq!(f.meta_f32("eps").unwrap(), 1e-5);
        assert_eq!(f.meta_i64("neg").unwrap(), -1);
        assert_eq!(f.meta_str("arch").unwrap(), "llama");
        assert_eq!(f.meta_str_array("toks").unwrap(), ["a", "b"]);
        let e = |r: Result<_>| r.map(|_: ()| ()).unwrap_err().to_string();
        assert_eq!(e(f.meta_u64("nope").map(|_| ())), "missing metadata key 'nope'");
        assert_eq!(
            e(f.meta_u64("arch").map(|_| ())),
            "metadata key 'arch' has type string, expected a non-negative integer"
        );
        assert!(e(f.meta_u64("neg").map(|_| ())).contains("type signed integer"));
        assert!(e(f.meta_u32("big").map(|_| ())).contains("u32 range"));
        assert!(e(f.meta_str_array("mixed").map(|_| ())).contains("element 1 of type unsigned integer"));
        assert!(e(f.meta_str("toks").map(|_| ())).contains("has type array, expected string"));
    }
}
