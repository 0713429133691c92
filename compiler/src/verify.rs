//! The IR verifier: checks the invariants documented on [`crate::ir`]. Passes run
//! it after every rewrite (in debug builds and tests) and it names what broke.

use crate::ir::{Graph, Shape};
use crate::ops;
use std::collections::HashSet;

/// Checks every invariant; returns one message per violation.
pub fn verify(g: &Graph) -> Vec<String> {
    let mut errs = Vec::new();
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let order = g.topo_order();
    if order.len() != g.len() {
        errs.push(format!(
            "the graph has a cycle ({} of {} nodes ordered)",
            order.len(),
            g.len()
        ));
    }
    let position: std::collections::HashMap<_, _> =
        order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    for &id in &order {
        let n = g.node(id);
        if !names.insert(n.name.as_str()) {
            errs.push(format!("node name `{}` is not unique", n.name));
        }
        let operands = g.operands(id);
        let mut slots: Vec<u32> =
            g.g.edges_directed(id, petgraph::Direction::Incoming)
                .map(|e| *e.weight())
                .collect();
        slots.sort_unstable();
        if slots != (0..slots.len() as u32).collect::<Vec<_>>() {
            errs.push(format!(
                "`{}`: operand slots {slots:?} are not 0..n",
                n.name
            ));
        }
        for o in &operands {
            if position.get(o).is_none_or(|p| *p >= position[&id]) {
                errs.push(format!(
                    "`{}`: operand `{}` does not come before it",
                    n.name,
                    g.node(*o).name
                ));
            }
        }
        let shapes: Vec<Shape> = operands.iter().map(|o| g.node(*o).shape.clone()).collect();
        let refs: Vec<&Shape> = shapes.iter().collect();
        match ops::infer(&n.op, &refs) {
            Ok(s) if s == n.shape => {}
            Ok(s) => errs.push(format!(
                "`{}`: shape is {} but its op gives {s}",
                n.name, n.shape
            )),
            Err(e) => errs.push(format!("`{}`: {}", n.name, e.message)),
        }
        for p in &n.params {
            if !keys.insert(p.key.as_str()) {
                errs.push(format!("parameter key `{}` is not unique", p.key));
            }
        }
    }
    for o in &g.outputs {
        if !g.g.contains_node(o.node) {
            errs.push(format!("output `{}` refers to a removed node", o.name));
        }
    }
    for i in &g.inputs {
        if !g.g.contains_node(i.node) {
            errs.push(format!("input `{}` refers to a removed node", i.name));
        }
    }
    errs
}
