//! Readable `Debug` and `Display` for tensors: header (shape, dtype, memory type,
//! name) and, for `Display`, a few values per dimension with `...` in between.

use std::fmt;

use super::Tensor;

const EDGE: usize = 3;

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}, {:?}", self.shape(), self.dtype(), self.mem_type())?;
        if let Some(n) = self.name() {
            write!(f, ", name={n:?}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{self:?}")?;
        // Values only for types we can turn into f32; a quantised tensor is shown by
        // its header alone when it cannot be dequantised.
        match self.to_f32_vec() {
            Ok(values) => {
                write_nested(f, &values, self.dims(), 0)?;
                writeln!(f)
            }
            Err(_) => writeln!(f, "(values not printable)"),
        }
    }
}

fn write_nested(f: &mut fmt::Formatter<'_>, v: &[f32], dims: &[usize], depth: usize) -> fmt::Result {
    let Some((&n, rest)) = dims.split_first() else {
        return write!(f, "{:.4}", v.first().copied().unwrap_or(0.0));
    };
    let inner: usize = rest.iter().product();
    write!(f, "[")?;
    let mut first = true;
    for i in 0..n {
        if n > 2 * EDGE && i == EDGE {
            write!(f, ", ...")?;
        }
        if n > 2 * EDGE && (EDGE..n - EDGE).contains(&i) {
            continue;
        }
        if !first {
            write!(f, ",")?;
            if rest.is_empty() {
                write!(f, " ")?;
            } else {
                write!(f, "\n{:width$}", "", width = depth + 1)?;
            }
        }
        first = false;
        write_nested(f, &v[i * inner..(i + 1) * inner], rest, depth + 1)?;
    }
    write!(f, "]")
}
