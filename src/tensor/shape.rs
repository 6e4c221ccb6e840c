//! Shapes and strided index arithmetic. Strides count elements, not bytes.

use std::fmt;

use crate::{Error, Result};

/// The dimensions of a tensor. Prints as `[1, 12, 1024, 2048]`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub(crate) Vec<usize>);

impl Shape {
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements, or an error if it overflows `usize`.
    pub fn checked_elem_count(&self) -> Result<usize> {
        self.0
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Overflow(format!("shape {self:?} has too many elements")))
    }

    /// Number of elements (shapes inside a tensor never overflow).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// Resolve a possibly negative dimension index (`-1` is the last).
    pub fn dim_index(&self, dim: isize, op: &'static str) -> Result<usize> {
        let r = self.rank() as isize;
        let d = if dim < 0 { dim + r } else { dim };
        if d < 0 || d >= r {
            return Err(Error::shape(op, format!("dimension {dim} out of range for shape {self:?}")));
        }
        Ok(d as usize)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl PartialEq<[usize]> for Shape {
    fn eq(&self, other: &[usize]) -> bool {
        self.0 == other
    }
}

impl<const N: usize> PartialEq<[usize; N]> for Shape {
    fn eq(&self, other: &[usize; N]) -> bool {
        self.0 == other
    }
}

/// Calls `f(start, len)` for each contiguous run of elements of a strided view, in
/// row-major order: `start` is the element offset in storage, `len` the run length.
pub(crate) fn for_each_run(dims: &[usize], strides: &[usize], offset: usize, mut f: impl FnMut(usize, usize)) {
    if dims.contains(&0) {
        return;
    }
    // Merge trailing dimensions that are contiguous with each other into one run.
    let mut run = 1usize;
    let mut k = dims.len();
    while k > 0 && strides[k - 1] == run {
        run *= dims[k - 1];
        k -= 1;
    }
    if k == 0 {
        f(offset, run);
        return;
    }
    if run == 1 {
        // Innermost dimension is strided: runs of one element.
        k = dims.len();
    }
    let outer = &dims[..k];
    let mut idx = vec![0usize; outer.len()];
    let mut pos = offset;
    loop {
        f(pos, run);
        // Odometer increment over the outer dimensions.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            pos += strides[d];
            if idx[d] < outer[d] {
                break;
            }
            pos -= strides[d] * outer[d];
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_a_transposed_view() {
        // 2x3 matrix transposed to 3x2: strides [1, 3].
        let mut got = vec![];
        for_each_run(&[3, 2], &[1, 3], 0, |s, n| got.push((s, n)));
        assert_eq!(got, vec![(0, 1), (3, 1), (1, 1), (4, 1), (2, 1), (5, 1)]);
        let mut got = vec![];
        for_each_run(&[2, 3], &[3, 1], 0, |s, n| got.push((s, n)));
        assert_eq!(got, vec![(0, 6)]);
        let mut got = vec![];
        // narrow of a [4, 5] to columns 1..3: rows of 2.
        for_each_run(&[4, 2], &[5, 1], 1, |s, n| got.push((s, n)));
        assert_eq!(got, vec![(1, 2), (6, 2), (11, 2), (16, 2)]);
    }

    #[test]
    fn broadcast_stride_zero() {
        let mut got = vec![];
        for_each_run(&[3, 2], &[0, 1], 4, |s, n| got.push((s, n)));
        assert_eq!(got, vec![(4, 2), (4, 2), (4, 2)]);
    }
}
