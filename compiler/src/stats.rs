//! Parameter counts and multiply-accumulates, as torchvision reports them.

use crate::ir::{Graph, Shape};
use crate::ops;

/// Whole-network figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Trainable parameters (`sum(p.numel() for p in model.parameters())`).
    pub params: u64,
    /// Buffers (BatchNorm running statistics).
    pub buffers: u64,
    /// Multiply-accumulates per batch item.
    pub macs: u64,
}

/// One row of the per-layer summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Node name.
    pub name: String,
    /// Op mnemonic with attributes.
    pub op: String,
    /// Output shape.
    pub shape: Shape,
    /// Trainable parameters of this node.
    pub params: u64,
    /// MACs of this node per batch item.
    pub macs: u64,
}

/// Per-node rows in topological order.
pub fn rows(g: &Graph) -> Vec<Row> {
    g.topo_order()
        .into_iter()
        .map(|id| {
            let n = g.node(id);
            let operand_shapes: Vec<Shape> = g
                .operands(id)
                .iter()
                .map(|o| g.node(*o).shape.clone())
                .collect();
            let refs: Vec<&Shape> = operand_shapes.iter().collect();
            Row {
                name: n.name.clone(),
                op: n.op.to_string(),
                shape: n.shape.clone(),
                params: n
                    .params
                    .iter()
                    .filter(|p| p.role.is_trainable())
                    .map(|p| p.numel())
                    .sum(),
                macs: ops::macs(&n.op, &refs, &n.shape),
            }
        })
        .collect()
}

/// Totals over the graph.
pub fn totals(g: &Graph) -> Totals {
    let mut t = Totals::default();
    for r in rows(g) {
        t.params += r.params;
        t.macs += r.macs;
    }
    t.buffers = g
        .params()
        .filter(|(_, p)| !p.role.is_trainable())
        .map(|(_, p)| p.numel())
        .sum();
    t
}

/// `25,028,904`: an integer with thousands separators.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The per-layer table `netc summary` prints.
pub fn table(rows: &[Row], totals: &Totals) -> String {
    use std::fmt::Write;
    let shapes: Vec<String> = rows.iter().map(|r| r.shape.to_string()).collect();
    let ops: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut s = r.op.clone();
            if s.len() > 40 {
                s.truncate(37);
                s.push_str("...");
            }
            s
        })
        .collect();
    let wn = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    let wo = ops.iter().map(String::len).max().unwrap_or(0).max(2);
    let ws = shapes.iter().map(String::len).max().unwrap_or(0).max(12);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<wn$}  {:<wo$}  {:<ws$}  {:>12}  {:>16}",
        "layer", "op", "output shape", "params", "MACs"
    );
    let _ = writeln!(out, "{}", "-".repeat(wn + wo + ws + 12 + 16 + 8));
    for ((r, op), shape) in rows.iter().zip(&ops).zip(&shapes) {
        let p = if r.params > 0 {
            grouped(r.params)
        } else {
            "-".into()
        };
        let m = if r.macs > 0 {
            grouped(r.macs)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<wn$}  {:<wo$}  {:<ws$}  {:>12}  {:>16}",
            r.name, op, shape, p, m
        );
    }
    let _ = writeln!(out, "{}", "-".repeat(wn + wo + ws + 12 + 16 + 8));
    let _ = writeln!(out, "total params     {}", grouped(totals.params));
    let _ = writeln!(out, "total buffers    {}", grouped(totals.buffers));
    let _ = writeln!(out, "total MACs       {}", grouped(totals.macs));
    out
}
