//! Static memory planning: liveness of every activation, in-place reuse where
//! legal, and offsets into one arena (greedy by size, TFLite-style).
//!
//! Sizes are per batch item (f32); a backend multiplies by the batch. Learned
//! tensors (`param`) live with the weights, not in the arena.
//!
//! Aliasing rules:
//! - `reshape`/`flatten` are views: they share their operand's buffer.
//! - element-wise ops (activations, binary ops, layer scale) and fused
//!   epilogues may write over an operand that dies at that node and has the
//!   output's size and batching (a tensor without a batch axis is read by
//!   every sample) (for a fused convolution, only its residual operand: the
//!   convolution's own input is read through a window);
//! - concat elimination: the operands of a channel concatenation are written
//!   straight into their slices of its buffer, and concats whose operands are a
//!   prefix of it (DenseNet's growing inputs) are views of the same buffer.
//!
//! The report gives the arena, the naive sum of all activations, and the lower
//! bound: the largest total of buffers simultaneously live.

use crate::ir::{Epilogue, Graph, NodeIndex, Op};
use std::collections::HashMap;

/// One buffer of the arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    /// Bytes per batch item.
    pub bytes: u64,
    /// First step (topological position) that writes it.
    pub first: usize,
    /// Last step that reads it.
    pub last: usize,
    /// Offset in the arena.
    pub offset: u64,
}

/// The plan for one graph.
#[derive(Debug, Clone, Default)]
pub struct MemoryPlan {
    /// Buffers, in creation order.
    pub buffers: Vec<Buffer>,
    /// Which buffer holds each node's output (absent for learned tensors).
    pub buffer_of: HashMap<NodeIndex, usize>,
    /// Byte offset of a node's output inside its buffer (non-zero only for tensors
    /// written straight into a slice of a concatenation's buffer).
    pub offset_in_buffer: HashMap<NodeIndex, u64>,
    /// Concatenations whose copies were eliminated (their operands are written in place).
    pub concats_eliminated: usize,
    /// Arena bytes per batch item.
    pub arena: u64,
    /// Sum of every activation's size (no reuse at all).
    pub naive: u64,
    /// Largest total of simultaneously live buffers: no plan can do better.
    pub lower_bound: u64,
}

fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Act(_) | Op::Binary(_) | Op::LayerScale { .. } | Op::Dropout { .. } | Op::Identity
    )
}

/// Plans the arena for `g`.
pub fn plan(g: &Graph) -> MemoryPlan {
    let order = g.topo_order();
    let step: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let end = order.len();
    let mut last_use: HashMap<NodeIndex, usize> = HashMap::new();
    for &n in &order {
        for o in g.operands(n) {
            let s = step[&n];
            let e = last_use.entry(o).or_insert(s);
            *e = (*e).max(s);
        }
    }
    for o in &g.outputs {
        last_use.insert(o.node, end);
    }
    let bytes_of = |n: NodeIndex| g.node(n).shape.numel_per_sample() * 4;
    let mut plan = MemoryPlan::default();
    let groups = concat_groups(g);
    // Members of a concat group: (group index, byte offset in the group's buffer).
    let mut member: HashMap<NodeIndex, (usize, u64)> = HashMap::new();
    for (gi, grp) in groups.iter().enumerate() {
        for &(n, off) in &grp.members {
            member.insert(n, (gi, off));
        }
    }
    let mut group_buffer: HashMap<usize, usize> = HashMap::new();
    for &n in &order {
        let node = g.node(n);
        if matches!(node.op, Op::Parameter { .. }) {
            continue;
        }
        plan.naive += bytes_of(n);
        let s = step[&n];
        if let Some(&(gi, off)) = member.get(&n) {
            // Written straight into its slice of the group's buffer, which lives from
            // the first member's definition to the last use of any member.
            let live_to = groups[gi].last_use(&last_use, s);
            let b = *group_buffer.entry(gi).or_insert_with(|| {
                plan.buffers.push(Buffer {
                    bytes: groups[gi].bytes,
                    first: s,
                    last: live_to,
                    offset: 0,
                });
                plan.buffers.len() - 1
            });
            plan.buffers[b].last = plan.buffers[b].last.max(live_to);
            plan.buffer_of.insert(n, b);
            plan.offset_in_buffer.insert(n, off);
            continue;
        }
        let dies_here = |o: NodeIndex| last_use.get(&o) == Some(&s);
        // Sizes are per sample, so an operand without a batch axis (broadcast to
        // every sample) may only be overwritten by an output without one: sample
        // 0's result would otherwise replace what sample 1 still has to read.
        let same_batching = |o: NodeIndex| g.node(o).shape.has_batch() == node.shape.has_batch();
        let operands = g.operands(n);
        // A view or an in-place write reuses an operand's buffer.
        let reuse = match &node.op {
            Op::Reshape { .. } | Op::Flatten { .. } => operands.first().copied(),
            // Never write in place over a concat member: its buffer is shared.
            op if is_elementwise(op) => operands.iter().copied().find(|&o| {
                dies_here(o)
                    && same_batching(o)
                    && bytes_of(o) == bytes_of(n)
                    && plan.buffer_of.contains_key(&o)
                    && !member.contains_key(&o)
            }),
            Op::Fused { epilogue, .. } => epilogue.iter().find_map(|e| match e {
                Epilogue::Add(i) => {
                    let o = operands[*i];
                    (dies_here(o)
                        && same_batching(o)
                        && plan.buffer_of.contains_key(&o)
                        && operands[0] != o
                        && !member.contains_key(&o))
                    .then_some(o)
                }
                _ => None,
            }),
            _ => None,
        };
        let live_to = last_use.get(&n).copied().unwrap_or(s);
        match reuse.and_then(|o| plan.buffer_of.get(&o).copied()) {
            Some(b) => {
                let buf = &mut plan.buffers[b];
                buf.last = buf.last.max(live_to);
                plan.buffer_of.insert(n, b);
            }
            None => {
                plan.buffers.push(Buffer {
                    bytes: bytes_of(n),
                    first: s,
                    last: live_to,
                    offset: 0,
                });
                plan.buffer_of.insert(n, plan.buffers.len() - 1);
            }
        }
    }
    plan.concats_eliminated = groups.iter().map(|g| g.concats).sum();
    // Lower bound: peak of live bytes over steps.
    let mut delta = vec![0i64; end + 2];
    for b in &plan.buffers {
        delta[b.first] += b.bytes as i64;
        delta[b.last + 1] -= b.bytes as i64;
    }
    let mut live = 0i64;
    for d in &delta {
        live += d;
        plan.lower_bound = plan.lower_bound.max(live as u64);
    }
    // Greedy by size: biggest buffers first, each at the lowest offset that does
    // not overlap a placed buffer whose lifetime intersects.
    let mut idx: Vec<usize> = (0..plan.buffers.len()).collect();
    idx.sort_by_key(|&i| {
        (
            std::cmp::Reverse(plan.buffers[i].bytes),
            plan.buffers[i].first,
        )
    });
    let mut placed: Vec<usize> = Vec::new();
    for i in idx {
        let (first, last, size) = (
            plan.buffers[i].first,
            plan.buffers[i].last,
            plan.buffers[i].bytes,
        );
        let mut conflicts: Vec<(u64, u64)> = placed
            .iter()
            .map(|&j| &plan.buffers[j])
            .filter(|b| b.first <= last && first <= b.last)
            .map(|b| (b.offset, b.offset + b.bytes))
            .collect();
        conflicts.sort_unstable();
        let mut offset = 0u64;
        for (lo, hi) in conflicts {
            if offset + size <= lo {
                break;
            }
            offset = offset.max(hi);
        }
        plan.buffers[i].offset = offset;
        plan.arena = plan.arena.max(offset + size);
        placed.push(i);
    }
    plan
}

/// A concatenation whose operands are written directly into its buffer, with
/// every concat whose operands are a prefix of it (DenseNet's growing inputs).
struct ConcatGroup {
    /// Members and their byte offsets: the operands, and the concats (at 0).
    members: Vec<(NodeIndex, u64)>,
    /// The buffer size (the largest concat).
    bytes: u64,
    /// How many concat nodes the group absorbs.
    concats: usize,
}

impl ConcatGroup {
    fn last_use(&self, last_use: &HashMap<NodeIndex, usize>, at: usize) -> usize {
        self.members
            .iter()
            .filter_map(|(n, _)| last_use.get(n))
            .copied()
            .fold(at, usize::max)
    }
}

/// Finds concatenations along channels (NCHW, so a channel range of one image is
/// contiguous) whose operands can be produced in place: each operand is a plain
/// computed tensor (not an input, a view, another concat or a graph output) that
/// belongs to one group only.
fn concat_groups(g: &Graph) -> Vec<ConcatGroup> {
    let concats: Vec<NodeIndex> = g
        .topo_order()
        .into_iter()
        .filter(|&n| g.node(n).op == Op::Concat { axis: 1 } && g.node(n).shape.rank() == 4)
        .collect();
    let operands: HashMap<NodeIndex, Vec<NodeIndex>> =
        concats.iter().map(|&c| (c, g.operands(c))).collect();
    let is_prefix = |a: &[NodeIndex], b: &[NodeIndex]| a.len() <= b.len() && b[..a.len()] == *a;
    let mut claimed: HashMap<NodeIndex, usize> = HashMap::new();
    let mut groups = Vec::new();
    // Largest first: each maximal concat with the concats that are its prefixes.
    let mut by_size = concats.clone();
    by_size.sort_by_key(|c| std::cmp::Reverse(operands[c].len()));
    for &top in &by_size {
        if claimed.contains_key(&top) {
            continue;
        }
        let ops = &operands[&top];
        let placeable = |o: &NodeIndex| {
            let op = &g.node(*o).op;
            !matches!(
                op,
                Op::Input { .. }
                    | Op::Parameter { .. }
                    | Op::Reshape { .. }
                    | Op::Flatten { .. }
                    | Op::Concat { .. }
            ) && !g.is_output(*o)
                && !claimed.contains_key(o)
                && g.node(*o).shape.rank() == 4
        };
        let distinct = ops.iter().collect::<std::collections::HashSet<_>>().len() == ops.len();
        if !distinct || !ops.iter().all(placeable) {
            continue;
        }
        let prefixes: Vec<NodeIndex> = concats
            .iter()
            .copied()
            .filter(|c| *c != top && !claimed.contains_key(c) && is_prefix(&operands[c], ops))
            .collect();
        let mut members = Vec::new();
        let mut off = 0u64;
        for &o in ops {
            members.push((o, off));
            off += g.node(o).shape.numel_per_sample() * 4;
        }
        members.push((top, 0));
        for &p in &prefixes {
            members.push((p, 0));
        }
        let gi = groups.len();
        for (n, _) in &members {
            claimed.insert(*n, gi);
        }
        groups.push(ConcatGroup {
            members,
            bytes: off,
            concats: 1 + prefixes.len(),
        });
    }
    groups
}

/// Checks that no two buffers that are live at the same time overlap in the arena.
pub fn check(plan: &MemoryPlan) -> Result<(), String> {
    for (i, a) in plan.buffers.iter().enumerate() {
        for b in &plan.buffers[i + 1..] {
            let time = a.first <= b.last && b.first <= a.last;
            let space = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
            if time && space {
                return Err(format!("buffers {a:?} and {b:?} overlap while both live"));
            }
        }
    }
    Ok(())
}
