//! Moves an average pooling in front of the 1×1 convolution it reads, so that
//! the convolution runs on the pooled map: DenseNet's transitions
//! (`conv 1×1 → avg_pool 2, stride 2`) then do a quarter of their MACs.
//!
//! Why it is exact: a 1×1 stride-1 convolution mixes channels pixel by pixel
//! with the same weights everywhere, and an unpadded, floor-mode average
//! pooling mixes pixels channel by channel with the same weights (1/k² each,
//! summing to one) in every channel; both are linear, so they commute, and a
//! bias passes through because every window's weights sum to one. Padding or
//! ceil mode would give border windows other divisors (or weights that do not
//! sum to one), so those are left alone. Only the order of the floating-point
//! sums changes.
//!
//! The two nodes keep their names and the convolution its parameter slots, so
//! checkpoints load unchanged; the pool now reads the convolution's input and
//! the convolution the pool's output, and the pool's readers read the
//! convolution.

use crate::ir::{Graph, Op, PoolKind};

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for pool in g.topo_order() {
        let pool_op = g.node(pool).op.clone();
        let Op::Pool {
            kind: PoolKind::Avg,
            window,
            ceil_mode: false,
            ..
        } = pool_op
        else {
            continue;
        };
        if window.pad != [0; 4] {
            continue;
        }
        let conv = g.operands(pool)[0];
        let Op::Conv2d { window: cw, .. } = &g.node(conv).op else {
            continue;
        };
        if cw.kernel != [1, 1] || cw.stride != [1, 1] || cw.pad != [0; 4] {
            continue;
        }
        if g.sole_user(conv) != Some(pool) {
            continue;
        }
        let conv_ops = g.operands(conv);
        let input = conv_ops[0];
        let Ok(pooled) = crate::ops::infer(&pool_op, &[&g.node(input).shape]) else {
            continue;
        };
        // Only where the pooling shrinks the map: the convolution's saved
        // MACs are then far more than the pooling's extra channels cost.
        if pooled.numel_per_sample() >= g.node(input).shape.numel_per_sample() {
            continue;
        }
        let mut shapes: Vec<crate::ir::Shape> =
            conv_ops.iter().map(|o| g.node(*o).shape.clone()).collect();
        shapes[0] = pooled.clone();
        let refs: Vec<&crate::ir::Shape> = shapes.iter().collect();
        let conv_op = g.node(conv).op.clone();
        if crate::ops::infer(&conv_op, &refs).ok().as_ref() != Some(&g.node(pool).shape) {
            continue;
        }
        g.replace_uses(pool, conv);
        g.set_operands(pool, &[input]);
        let mut ops = conv_ops;
        ops[0] = pool;
        g.set_operands(conv, &ops);
        g.g[conv].shape = g.node(pool).shape.clone();
        g.g[pool].shape = pooled;
        changed = true;
    }
    changed
}
