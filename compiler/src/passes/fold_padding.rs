//! Folds an explicit zero `pad` into the window padding of the convolution (or
//! average pooling that counts padding) reading it, when it is the pad's only reader.

use crate::ir::{Epilogue, FusedBase, Graph, Op, PoolKind};

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for n in g.topo_order() {
        if !g.g.contains_node(n) {
            continue;
        }
        let Op::Pad { pad, value } = g.node(n).op.clone() else {
            continue;
        };
        let Some(user) = g.sole_user(n) else { continue };
        if g.operands(user)[0] != n {
            continue;
        }
        let mut op = g.node(user).op.clone();
        let window = match &mut op {
            Op::Conv2d { window, .. } if value == 0.0 => window,
            Op::Fused {
                base: FusedBase::Conv2d { window, .. },
                epilogue,
            } if value == 0.0 && !epilogue.iter().any(|e| matches!(e, Epilogue::Add(_))) => window,
            // Average pooling that counts padding averages the same zeros either way.
            Op::Pool {
                kind: PoolKind::Avg,
                window,
                count_include_pad: true,
                ceil_mode: false,
            } if value == 0.0 => window,
            Op::Pool {
                kind: PoolKind::Max,
                window,
                ceil_mode: false,
                ..
            } if value == f64::NEG_INFINITY => window,
            _ => continue,
        };
        for (w, p) in window.pad.iter_mut().zip(pad) {
            *w += p;
        }
        let src = g.operands(n)[0];
        // Pooling limits padding to half the kernel: keep the pad if the folded window is invalid.
        let mut shapes: Vec<crate::ir::Shape> = g
            .operands(user)
            .iter()
            .map(|o| g.node(*o).shape.clone())
            .collect();
        shapes[0] = g.node(src).shape.clone();
        let refs: Vec<&crate::ir::Shape> = shapes.iter().collect();
        if crate::ops::infer(&op, &refs).ok().as_ref() != Some(&g.node(user).shape) {
            continue;
        }
        g.g[user].op = op;
        let mut ops = g.operands(user);
        ops[0] = src;
        g.set_operands(user, &ops);
        g.remove_node(n);
        changed = true;
    }
    changed
}
