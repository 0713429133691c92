//! Static tensor shapes with a symbolic batch dimension.

use std::fmt;

/// One dimension: the symbolic batch size, or a known extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The batch dimension `N`, fixed only at run time.
    Batch,
    /// A static extent.
    Known(usize),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("N"),
            Dim::Known(n) => write!(f, "{n}"),
        }
    }
}

/// A tensor shape. Activations start with [`Dim::Batch`]; learned tensors do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// `[N, dims...]`.
    pub fn batched(dims: &[usize]) -> Shape {
        let mut v = vec![Dim::Batch];
        v.extend(dims.iter().map(|&d| Dim::Known(d)));
        Shape(v)
    }

    /// `[dims...]` without a batch dimension.
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    /// Number of dimensions, batch included.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Whether the first dimension is the batch.
    pub fn has_batch(&self) -> bool {
        self.0.first() == Some(&Dim::Batch)
    }

    /// The static extent of dimension `i` (`None` for the batch).
    pub fn known(&self, i: usize) -> Option<usize> {
        match self.0.get(i) {
            Some(Dim::Known(n)) => Some(*n),
            _ => None,
        }
    }

    /// Dimensions after the batch (all of them if there is no batch).
    pub fn per_sample(&self) -> Vec<usize> {
        self.0
            .iter()
            .filter_map(|d| match d {
                Dim::Known(n) => Some(*n),
                Dim::Batch => None,
            })
            .collect()
    }

    /// Elements per batch item (per tensor for unbatched shapes), saturating.
    pub fn numel_per_sample(&self) -> u64 {
        self.per_sample()
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
    }

    /// Normalises a possibly negative axis; `None` if out of range.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        let r = self.rank() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        (0..r).contains(&a).then_some(a as usize)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Numpy-style broadcast of two shapes (aligned on the right); `None` if incompatible.
pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
    let n = a.rank().max(b.rank());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.rank()).checked_sub(n).map(|j| a.0[j]);
        let db = (i + b.rank()).checked_sub(n).map(|j| b.0[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(Dim::Known(1)), Some(y)) => y,
            (Some(x), Some(Dim::Known(1))) => x,
            _ => return None,
        });
    }
    // The batch may only stay in front.
    if out.iter().skip(1).any(|d| *d == Dim::Batch) {
        return None;
    }
    Some(Shape(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy_with_batch_in_front() {
        let act = Shape::batched(&[96, 56, 56]);
        assert_eq!(
            broadcast(&act, &Shape::fixed(&[96, 1, 1])),
            Some(act.clone())
        );
        let tokens = Shape::batched(&[197, 768]);
        assert_eq!(
            broadcast(&tokens, &Shape::fixed(&[1, 197, 768])),
            Some(tokens.clone())
        );
        assert_eq!(broadcast(&act, &Shape::fixed(&[95, 1, 1])), None);
        assert_eq!(act.to_string(), "[N, 96, 56, 56]");
    }
}
