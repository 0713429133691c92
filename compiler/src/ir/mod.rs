//! The IR: a petgraph graph of typed nodes with static shapes.
//!
//! Invariants (checked by [`crate::verify`]):
//! - every node's operands are edges into it, numbered `0..n` by the edge weight;
//! - the graph is acyclic ([`Graph::topo_order`] is a topological order that
//!   follows insertion order wherever dependencies allow, so printing is stable);
//! - a node's `shape` is what [`crate::ops::infer`] computes from its operands;
//! - parameter keys are unique across the graph.

mod op;
mod shape;
mod transform;

pub use op::*;
pub use shape::*;
pub use transform::*;

/// Node handles of the graph.
pub use petgraph::stable_graph::NodeIndex;

use netc_grammar::Span;
use petgraph::stable_graph::StableDiGraph;
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Element type of a tensor. Only f32 is computed today; the field exists so
/// weight loading and later lowering can say what they expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("f32")
    }
}

/// What a parameter slot holds, which decides how it is initialised and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamRole {
    /// A weight (conv kernel, linear matrix, norm scale, learned tensor).
    Weight,
    /// A bias.
    Bias,
    /// BatchNorm running mean (a buffer: in `state_dict`, not a trainable parameter).
    RunningMean,
    /// BatchNorm running variance (a buffer).
    RunningVar,
}

impl ParamRole {
    /// Whether torch counts it in `model.parameters()`.
    pub fn is_trainable(self) -> bool {
        matches!(self, ParamRole::Weight | ParamRole::Bias)
    }
}

/// A named tensor a node reads from the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSlot {
    /// Full key, equal to the torchvision `state_dict` key where the model follows it.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Role.
    pub role: ParamRole,
}

impl ParamSlot {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A node of the graph: one operation producing one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The operation and its attributes.
    pub op: Op,
    /// Hierarchical name (`layer1.0.conv1`); unique in the graph.
    pub name: String,
    /// Output shape.
    pub shape: Shape,
    /// Output element type.
    pub dtype: DType,
    /// Parameters read by this node, in definition order.
    pub params: Vec<ParamSlot>,
    /// The source that produced it.
    pub span: Span,
}

/// A network input.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphInput {
    /// Name as declared by `input`.
    pub name: String,
    /// Its node.
    pub node: NodeIndex,
}

/// A network output.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphOutput {
    /// Name (the returned variable, or `output`).
    pub name: String,
    /// The node producing it.
    pub node: NodeIndex,
}

/// A whole network.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// The network's name.
    pub name: String,
    /// Nodes and operand edges; an edge's weight is the operand position.
    pub g: StableDiGraph<Node, u32>,
    /// Inputs in declaration order.
    pub inputs: Vec<GraphInput>,
    /// Outputs in order.
    pub outputs: Vec<GraphOutput>,
    /// How checkpoint tensors (by their original keys) become this graph's
    /// parameters, in order; appended by passes that change parameters.
    pub weight_transforms: Vec<WeightTransform>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Adds a node reading `operands` (in order) and returns it.
    pub fn add_node(&mut self, node: Node, operands: &[NodeIndex]) -> NodeIndex {
        let id = self.g.add_node(node);
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, id, i as u32);
        }
        id
    }

    /// The node with this index.
    pub fn node(&self, id: NodeIndex) -> &Node {
        &self.g[id]
    }

    /// The operands of a node, in operand order.
    pub fn operands(&self, id: NodeIndex) -> Vec<NodeIndex> {
        let mut edges: Vec<(u32, NodeIndex)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable_by_key(|e| e.0);
        edges.into_iter().map(|e| e.1).collect()
    }

    /// The nodes that read this node's output (each once, in index order).
    pub fn users(&self, id: NodeIndex) -> Vec<NodeIndex> {
        let mut u: Vec<NodeIndex> = self
            .g
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect();
        u.sort_unstable();
        u.dedup();
        u
    }

    /// Nodes in topological order: Kahn's algorithm taking the lowest index
    /// first, so it equals insertion order wherever that is already topological.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        let mut indegree: HashMap<NodeIndex, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indegree.insert(n, d);
            if d == 0 {
                ready.push(Reverse(n));
            }
        }
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indegree
                    .get_mut(&e.target())
                    .expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        order
    }

    /// Makes every reader of `old` (and every output) read `new` instead.
    pub fn replace_uses(&mut self, old: NodeIndex, new: NodeIndex) {
        let uses: Vec<(NodeIndex, u32)> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        for (user, slot) in uses {
            if let Some(e) = self.g.find_edge(old, user) {
                self.g.remove_edge(e);
            }
            self.g.add_edge(new, user, slot);
        }
        for o in &mut self.outputs {
            if o.node == old {
                o.node = new;
            }
        }
    }

    /// Removes a node that nothing reads any more.
    pub fn remove_node(&mut self, id: NodeIndex) -> Option<Node> {
        debug_assert!(
            self.users(id).is_empty(),
            "removing a node that is still read"
        );
        self.g.remove_node(id)
    }

    /// Sets the operands of a node (replacing all its incoming edges).
    pub fn set_operands(&mut self, id: NodeIndex, operands: &[NodeIndex]) {
        let old: Vec<_> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, id, i as u32);
        }
    }

    /// Whether `id` is a graph output.
    pub fn is_output(&self, id: NodeIndex) -> bool {
        self.outputs.iter().any(|o| o.node == id)
    }

    /// The single node reading `id`, if exactly one node reads it once and it is not an output.
    pub fn sole_user(&self, id: NodeIndex) -> Option<NodeIndex> {
        let edges: Vec<NodeIndex> = self
            .g
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect();
        (edges.len() == 1 && !self.is_output(id)).then(|| edges[0])
    }

    /// Every parameter slot with its node, in definition order.
    pub fn params(&self) -> impl Iterator<Item = (NodeIndex, &ParamSlot)> {
        self.g
            .node_indices()
            .flat_map(move |n| self.g[n].params.iter().map(move |p| (n, p)))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }
}
