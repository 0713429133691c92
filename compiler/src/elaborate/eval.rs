//! The evaluator: runs a network's body, applying layers to tensors and adding
//! one IR node per op application, with hierarchical names from labels.

use super::builtins;
use super::limits;
use super::program::{Def, Program};
use super::value::{coerce, ArgValue, Closure, Layer, LayerKind, Type, Value};
use crate::ir::{BinaryOp, Graph, GraphInput, GraphOutput, Op, Shape};
use crate::ops;
use netc_grammar::ast::{
    self, BinOp, Expr, ExprKind, Label, Labeled, ListElem, Pattern, Stmt, StrPart, UnOp,
};
use netc_grammar::{did_you_mean, Diagnostic, SourceMap, Span};
use petgraph::stable_graph::NodeIndex;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

pub(crate) type Env = HashMap<Rc<str>, Value>;
pub(super) type R<T> = Result<T, Diagnostic>;

/// A `--set name=value` override, already parsed.
#[derive(Debug, Clone)]
pub struct Override {
    /// Parameter name.
    pub name: String,
    /// The value expression.
    pub value: Expr,
    /// The span of the name.
    pub name_span: Span,
}

/// A tensor operand: its node and the span of the expression that produced it.
pub(super) type Operand = (NodeIndex, Span);

/// Evaluation state for one network.
pub(crate) struct Elab<'p> {
    pub(super) prog: &'p Program,
    pub(super) sources: &'p SourceMap,
    pub graph: Graph,
    pub(super) consts: Env,
    /// The current name path (labels of enclosing applications).
    pub(super) scope: Vec<Rc<str>>,
    pub(super) used_names: HashSet<String>,
    /// Parameter key → the span that defined it, to report duplicates.
    pub(super) param_keys: HashMap<String, Span>,
    /// Blocks being applied, innermost last, with their application sites.
    pub(super) stack: Vec<(Rc<str>, Span)>,
    steps: u64,
    /// Spans of the tensor arguments of a direct call (`matmul(a, b)`), taken by
    /// the op application that follows so each operand is labelled where written.
    pub(super) call_operand_spans: Vec<Span>,
}

fn value_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl<'p> Elab<'p> {
    pub fn new(prog: &'p Program, sources: &'p SourceMap, name: &str) -> Self {
        Elab {
            prog,
            sources,
            graph: Graph::new(name),
            consts: Env::new(),
            scope: Vec::new(),
            used_names: HashSet::new(),
            param_keys: HashMap::new(),
            stack: Vec::new(),
            steps: 0,
            call_operand_spans: Vec::new(),
        }
    }

    // ------------------------------------------------------------ diagnostics

    pub(super) fn error(
        &self,
        code: &'static str,
        msg: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Diagnostic {
        self.annotate(Diagnostic::new(code, msg).label(span, label))
    }

    /// Adds the block application stack to a diagnostic, innermost first.
    pub(super) fn annotate(&self, mut d: Diagnostic) -> Diagnostic {
        for (name, span) in self.stack.iter().rev().take(8) {
            d = d.note(format!(
                "in block `{name}` applied at {}",
                self.sources.location(*span)
            ));
        }
        if self.stack.len() > 8 {
            d = d.note(format!("... and {} more", self.stack.len() - 8));
        }
        d
    }

    pub(super) fn step(&mut self, span: Span) -> R<()> {
        self.steps += 1;
        if self.steps > limits::MAX_STEPS {
            return Err(self
                .error(
                    "netc::limit",
                    format!(
                        "elaboration exceeded {} evaluation steps",
                        limits::MAX_STEPS
                    ),
                    span,
                    "still evaluating here",
                )
                .help("the network is too large to elaborate; reduce repetition counts"));
        }
        Ok(())
    }

    pub(super) fn shape(&self, n: NodeIndex) -> &Shape {
        &self.graph.node(n).shape
    }

    // ------------------------------------------------------------ constants

    /// Evaluates the file-level constants in load order.
    ///
    /// Constants may refer to each other across files in any order: one that
    /// reads a constant not evaluated yet is retried after the others, so only a
    /// cycle is an error.
    pub fn eval_consts(&mut self) -> R<()> {
        let mut pending = self.prog.consts.clone();
        loop {
            let mut deferred = Vec::new();
            let mut waiting = None;
            let before = pending.len();
            for c in pending {
                match self.eval(&Env::new(), &c.value) {
                    Ok(v) => {
                        self.consts.insert(c.name.node.as_str().into(), v);
                    }
                    Err(d) if d.code == "netc::const_order" => {
                        waiting = Some(d);
                        deferred.push(c);
                    }
                    Err(d) => return Err(d),
                }
            }
            match waiting {
                None => return Ok(()),
                Some(d) if deferred.len() == before => return Err(d),
                Some(_) => pending = deferred,
            }
        }
    }

    // ------------------------------------------------------------ networks

    /// Elaborates a network with overrides from the command line.
    pub fn network(
        &mut self,
        name: &str,
        name_span: Option<Span>,
        overrides: &[Override],
    ) -> R<()> {
        // Follow `network a = b(args)` aliases down to a defined network.
        let mut bound: Vec<(Option<Rc<str>>, ArgValue)> = Vec::new();
        let mut current: Rc<str> = name.into();
        let mut hops = 0;
        let (params, body, def_span) = loop {
            let def = match self.prog.defs.get(&current) {
                Some(Def::Network(n)) => n.clone(),
                Some(other) => {
                    return Err(Diagnostic::new(
                        "netc::not_a_network",
                        format!("`{current}` is a {}, not a network", other.kind()),
                    )
                    .label(other.name_span(), "defined here"))
                }
                None => {
                    let names: Vec<&str> = self
                        .prog
                        .defs
                        .iter()
                        .filter(|(_, d)| matches!(d, Def::Network(_)))
                        .map(|(k, _)| &**k)
                        .collect();
                    let mut d = Diagnostic::new(
                        "netc::unknown_network",
                        format!("no network named `{current}`"),
                    );
                    if let Some(s) = name_span {
                        d = d.label(s, "not found");
                    }
                    d = match did_you_mean(&current, names.iter().copied()) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help(format!("networks defined: {}", names.join(", "))),
                    };
                    return Err(d);
                }
            };
            match &def.kind {
                ast::NetworkKind::Defined { params, body } => {
                    break (params.clone(), body.clone(), def.span)
                }
                ast::NetworkKind::Alias { target, args } => {
                    let env = Env::new();
                    // Earlier (outer) bindings win over the alias's own: prepend the alias's.
                    let mut mine = Vec::new();
                    for a in args {
                        let v = self.eval(&env, &a.value)?;
                        mine.push((
                            a.name.as_ref().map(|n| Rc::from(n.node.as_str())),
                            ArgValue {
                                value: v,
                                span: a.span,
                            },
                        ));
                    }
                    mine.append(&mut bound);
                    bound = mine;
                    current = target.node.as_str().into();
                    hops += 1;
                    if hops > 16 {
                        return Err(Diagnostic::new(
                            "netc::recursive_network",
                            "network aliases form a cycle",
                        )
                        .label(target.span, "refers back here"));
                    }
                }
            }
        };
        let _ = def_span;
        // Bind: positional alias args in order, named ones by name, overrides last.
        let mut values: HashMap<Rc<str>, ArgValue> = HashMap::new();
        let mut pos = 0;
        for (n, a) in bound {
            let pname: Rc<str> = match n {
                Some(n) => n,
                None => {
                    let Some(p) = params.get(pos) else {
                        return Err(Diagnostic::new(
                            "netc::arity",
                            "too many arguments for the network",
                        )
                        .label(a.span, "extra argument"));
                    };
                    pos += 1;
                    p.name.node.as_str().into()
                }
            };
            if !params.iter().any(|p| *p.name.node == *pname) {
                return Err(self.unknown_param(
                    &pname,
                    a.span,
                    params.iter().map(|p| p.name.node.as_str()),
                    &current,
                ));
            }
            values.insert(pname, a);
        }
        for o in overrides {
            if !params.iter().any(|p| p.name.node == o.name) {
                return Err(self
                    .unknown_param(
                        &o.name,
                        o.name_span,
                        params.iter().map(|p| p.name.node.as_str()),
                        &current,
                    )
                    .help(format!(
                        "`--set` names a parameter of network `{current}`: {}",
                        params
                            .iter()
                            .map(|p| p.name.node.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
            }
            let v = self.eval(&Env::new(), &o.value)?;
            values.insert(
                o.name.as_str().into(),
                ArgValue {
                    value: v,
                    span: o.value.span,
                },
            );
        }
        let mut env = Env::new();
        self.bind_params(&mut env, &params, &values, None, &current)?;
        match self.exec_body(&mut env, &body, true)? {
            Some((v, span, ident)) => self.set_outputs(v, span, ident),
            None => Err(Diagnostic::new(
                "netc::no_return",
                format!("network `{current}` returns nothing"),
            )
            .label(body.span, "this body has no `return`")
            .help("end the network with `return <tensor>`")),
        }
    }

    fn set_outputs(&mut self, v: Value, span: Span, ident: Option<String>) -> R<()> {
        match v {
            Value::Tensor(n) => {
                let name = ident.unwrap_or_else(|| "output".into());
                self.graph.outputs.push(GraphOutput { name, node: n });
            }
            Value::List(items)
                if !items.is_empty() && items.iter().all(|i| matches!(i, Value::Tensor(_))) =>
            {
                for (i, it) in items.iter().enumerate() {
                    if let Value::Tensor(n) = it {
                        self.graph.outputs.push(GraphOutput {
                            name: format!("output{i}"),
                            node: *n,
                        });
                    }
                }
            }
            other => {
                return Err(self.error(
                    "netc::type",
                    format!(
                        "a network must return tensors, found {} `{other}`",
                        other.kind()
                    ),
                    span,
                    "returned here",
                ))
            }
        }
        if self.graph.inputs.is_empty() {
            return Err(
                Diagnostic::new("netc::no_input", "the network declares no input")
                    .label(span, "returned here")
                    .help("declare one with `input x: [3, 224, 224]`"),
            );
        }
        Ok(())
    }

    pub(super) fn unknown_param<'a>(
        &self,
        name: &str,
        span: Span,
        candidates: impl Iterator<Item = &'a str>,
        owner: &str,
    ) -> Diagnostic {
        let cands: Vec<&str> = candidates.collect();
        let d = self.error(
            "netc::unknown_argument",
            format!("`{owner}` has no parameter `{name}`"),
            span,
            "unknown parameter",
        );
        match did_you_mean(name, cands.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None if cands.is_empty() => d.help(format!("`{owner}` takes no parameters")),
            None => d.help(format!("parameters: {}", cands.join(", "))),
        }
    }

    /// Binds declared parameters into `env`: given values (checked against their
    /// types), then defaults evaluated in order (they may use earlier parameters).
    pub(super) fn bind_params(
        &mut self,
        env: &mut Env,
        params: &[ast::Param],
        values: &HashMap<Rc<str>, ArgValue>,
        site: Option<Span>,
        owner: &str,
    ) -> R<()> {
        for p in params {
            let ty = self.resolve_type(&p.ty)?;
            let name: Rc<str> = p.name.node.as_str().into();
            let (v, span) = match values.get(&name) {
                Some(a) => (a.value.clone(), a.span),
                None => match &p.default {
                    Some(d) => (self.eval(env, d)?, d.span),
                    None => {
                        let span = site.unwrap_or(p.span);
                        return Err(self
                            .error(
                                "netc::missing_argument",
                                format!("missing argument `{}` for `{owner}`", p.name.node),
                                span,
                                format!("`{}: {ty}` is not given", p.name.node),
                            )
                            .help(format!(
                                "pass it, e.g. `{owner}({} = ...)`, or give it a default",
                                p.name.node
                            )));
                    }
                },
            };
            let v = coerce(&ty, &v).map_err(|why| {
                self.error(
                    "netc::type",
                    format!("wrong type for `{}`: {why}", p.name.node),
                    span,
                    format!("this is {}", v.kind()),
                )
                .label(p.ty.span(), format!("declared `{ty}` here"))
            })?;
            env.insert(name, v);
        }
        Ok(())
    }

    pub(super) fn resolve_type(&self, t: &ast::TypeExpr) -> R<Type> {
        Ok(match t {
            ast::TypeExpr::Named(n) => match n.node.as_str() {
                "int" => Type::Int,
                "float" => Type::Float,
                "bool" => Type::Bool,
                "str" => Type::Str,
                "tensor" => Type::Tensor,
                "layer" => Type::Layer,
                "activation" => Type::Activation,
                "any" => Type::Any,
                other => match self.prog.defs.get(other) {
                    Some(Def::Enum(e)) => Type::Enum(e.name.node.as_str().into()),
                    // The resolver reports unknown types (with suggestions) before
                    // evaluation starts; this is only reached if that check is skipped.
                    _ => {
                        return Err(Diagnostic::new(
                            "netc::unknown_type",
                            format!("unknown type `{other}`"),
                        )
                        .label(n.span, "not a type"))
                    }
                },
            },
            ast::TypeExpr::List(t, _) => Type::List(Box::new(self.resolve_type(t)?)),
            ast::TypeExpr::Tuple(ts, _) => {
                Type::Tuple(ts.iter().map(|t| self.resolve_type(t)).collect::<R<_>>()?)
            }
        })
    }

    // ------------------------------------------------------------ statements

    /// Runs statements; returns the value of `return` (with its span and, when it
    /// returns a plain variable, the variable's name).
    pub(super) fn exec_body(
        &mut self,
        env: &mut Env,
        body: &ast::Body,
        is_network: bool,
    ) -> R<Option<(Value, Span, Option<String>)>> {
        for stmt in &body.stmts {
            if let Some(ret) = self.exec(env, stmt, is_network)? {
                return Ok(Some(ret));
            }
        }
        Ok(None)
    }

    fn exec(
        &mut self,
        env: &mut Env,
        stmt: &Stmt,
        is_network: bool,
    ) -> R<Option<(Value, Span, Option<String>)>> {
        match stmt {
            Stmt::Input { name, shape, span } => {
                if !is_network || !self.stack.is_empty() {
                    return Err(self
                        .error(
                            "netc::input_in_block",
                            "`input` is only allowed in a network body",
                            *span,
                            "inside a block",
                        )
                        .help(
                            "blocks receive tensors as arguments; declare inputs in the network",
                        ));
                }
                let dims = self.eval_dims(env, shape, "input")?;
                let node_name = self.fresh_name(&name.node);
                let op = Op::Input { dims: dims.clone() };
                let id =
                    self.push_node(op, node_name, Shape::batched(&dims), Vec::new(), &[], *span)?;
                self.graph.inputs.push(GraphInput {
                    name: name.node.clone(),
                    node: id,
                });
                env.insert(name.node.as_str().into(), Value::Tensor(id));
            }
            Stmt::Param { name, shape, span } => {
                let dims = self.eval_dims(env, shape, "param")?;
                let key = self.path_with(Some(&name.node));
                let op = Op::Parameter {
                    shape: dims.clone(),
                };
                let params = ops::params(&op, &key, &[]);
                let node_name = self.fresh_name(&key);
                let id = self.push_node(op, node_name, Shape::fixed(&dims), params, &[], *span)?;
                env.insert(name.node.as_str().into(), Value::Tensor(id));
            }
            Stmt::Let { pattern, value, .. } => {
                let v = self.eval(env, value)?;
                self.bind_pattern(env, pattern, v, value.span)?;
            }
            Stmt::For {
                pattern,
                iter,
                body,
                ..
            } => {
                let items = self.eval_list(env, iter, "a `for` loop")?;
                for item in items.iter() {
                    self.step(iter.span)?;
                    self.bind_pattern(env, pattern, item.clone(), iter.span)?;
                    if let Some(ret) = self.exec_body(env, body, is_network)? {
                        return Ok(Some(ret));
                    }
                }
            }
            Stmt::If {
                cond, then, els, ..
            } => {
                let branch = if self.eval_bool(env, cond)? {
                    Some(then)
                } else {
                    els.as_ref()
                };
                if let Some(b) = branch {
                    if let Some(ret) = self.exec_body(env, b, is_network)? {
                        return Ok(Some(ret));
                    }
                }
            }
            Stmt::Return { value, span } => {
                let v = self.eval(env, value)?;
                let ident = match &value.kind {
                    ExprKind::Ident(n) => Some(n.clone()),
                    _ => None,
                };
                return Ok(Some((v, *span, ident)));
            }
        }
        Ok(None)
    }

    pub(super) fn eval_dims(&mut self, env: &Env, e: &Expr, what: &str) -> R<Vec<usize>> {
        let v = self.eval(env, e)?;
        let items = match &v {
            Value::List(items) => items.clone(),
            Value::Int(_) => Rc::new(vec![v.clone()]),
            _ => {
                return Err(self
                    .error(
                        "netc::type",
                        format!(
                            "{what} shape must be a list of ints, found {} `{v}`",
                            v.kind()
                        ),
                        e.span,
                        "not a shape",
                    )
                    .help("write the dims without the batch, e.g. [3, 224, 224]"))
            }
        };
        let mut dims = Vec::new();
        let mut total: u64 = 1;
        for it in items.iter() {
            match coerce(&Type::Int, it) {
                Ok(Value::Int(d)) if d >= 1 && d as usize <= limits::MAX_DIM => {
                    dims.push(d as usize);
                    total = total.saturating_mul(d as u64);
                }
                _ => {
                    return Err(self.error(
                        "netc::bad_shape",
                        format!(
                            "{what} dims must be ints between 1 and {}, found `{it}`",
                            limits::MAX_DIM
                        ),
                        e.span,
                        format!("shape {v}"),
                    ))
                }
            }
        }
        if total > limits::MAX_TENSOR_ELEMENTS {
            return Err(self.error(
                "netc::tensor_too_large",
                format!(
                    "{what} of shape {v} has {total} elements, over the limit of {}",
                    limits::MAX_TENSOR_ELEMENTS
                ),
                e.span,
                "too large",
            ));
        }
        Ok(dims)
    }

    pub(super) fn bind_pattern(
        &mut self,
        env: &mut Env,
        p: &Pattern,
        v: Value,
        span: Span,
    ) -> R<()> {
        match p {
            Pattern::Ident(n) => {
                env.insert(n.node.as_str().into(), v);
                Ok(())
            }
            Pattern::Tuple(ps, pspan) => match &v {
                Value::List(items) if items.len() == ps.len() => {
                    for (p, item) in ps.iter().zip(items.iter()) {
                        self.bind_pattern(env, p, item.clone(), span)?;
                    }
                    Ok(())
                }
                _ => Err(self
                    .error(
                        "netc::pattern",
                        format!(
                            "cannot destructure {} `{v}` into {} names",
                            v.kind(),
                            ps.len()
                        ),
                        span,
                        "this value",
                    )
                    .label(*pspan, "this pattern")),
            },
        }
    }

    // ------------------------------------------------------------ expressions

    pub(super) fn lookup(&self, env: &Env, name: &str, span: Span) -> R<Value> {
        if let Some(v) = env.get(name).or_else(|| self.consts.get(name)) {
            return Ok(v.clone());
        }
        match self.prog.defs.get(name) {
            Some(Def::Block(b)) => {
                return Ok(Value::Layer(Rc::new(Layer {
                    kind: LayerKind::Block {
                        name: b.name.node.as_str().into(),
                        args: Vec::new(),
                    },
                    label: None,
                    span,
                })))
            }
            Some(Def::Const(_)) => {
                return Err(self
                    .error(
                        "netc::const_order",
                        format!("constant `{name}` depends on itself"),
                        span,
                        "used here",
                    )
                    .help("file-level constants may refer to each other, but not in a cycle"))
            }
            Some(d) => {
                return Err(self.error(
                    "netc::type",
                    format!("`{name}` is a {}, not a value", d.kind()),
                    span,
                    "used as a value",
                ))
            }
            None => {}
        }
        if let Some(spec) = builtins::op(name) {
            return Ok(Value::Layer(Rc::new(Layer {
                kind: LayerKind::Op {
                    spec,
                    args: HashMap::new(),
                },
                label: None,
                span,
            })));
        }
        if let Some(e) = self.prog.variants.get(name) {
            return Ok(Value::Symbol(e.clone(), name.into()));
        }
        if builtins::FUNCTIONS.iter().any(|f| f.0 == name) {
            return Err(self
                .error(
                    "netc::type",
                    format!("`{name}` is a function; call it with arguments"),
                    span,
                    "not called",
                )
                .help(format!("write `{name}(...)`")));
        }
        Err(self.unknown_name(env, name, span))
    }

    fn unknown_name(&self, env: &Env, name: &str, span: Span) -> Diagnostic {
        let mut cands: Vec<&str> = env.keys().map(|k| &**k).collect();
        cands.extend(self.consts.keys().map(|k| &**k));
        cands.extend(self.prog.defs.keys().map(|k| &**k));
        cands.extend(builtins::OPS.iter().map(|o| o.name));
        cands.extend(builtins::FUNCTIONS.iter().map(|f| f.0));
        cands.extend(self.prog.variants.keys().map(|k| &**k));
        let d = self.error(
            "netc::unknown_name",
            format!("unknown name `{name}`"),
            span,
            "not defined",
        );
        match did_you_mean(name, cands) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help("define it with `let`, as a parameter, or as a block"),
        }
    }

    pub(super) fn eval_list(&mut self, env: &Env, e: &Expr, what: &str) -> R<Rc<Vec<Value>>> {
        match self.eval(env, e)? {
            Value::List(items) => Ok(items),
            v => Err(self.error(
                "netc::type",
                format!("{what} needs a list, found {} `{v}`", v.kind()),
                e.span,
                "not a list",
            )),
        }
    }

    /// The elements `..x` splices: a list's items, or the layers of an
    /// unlabelled sequence (`..repeat n { ... }`), which keeps indices flat.
    fn spread(&mut self, env: &Env, e: &Expr) -> R<Rc<Vec<Value>>> {
        match self.eval(env, e)? {
            Value::List(items) => Ok(items),
            Value::Layer(l) if l.label.is_none() && matches!(l.kind, LayerKind::Seq(_)) => {
                let LayerKind::Seq(children) = &l.kind else { unreachable!() };
                Ok(Rc::new(children.iter().map(|c| Value::Layer(c.clone())).collect()))
            }
            v => Err(self
                .error("netc::type", format!("`..` needs a list, found {} `{v}`", v.kind()), e.span, "not a list")
                .help("spread a list or an unlabelled `repeat`; a labelled sequence stays one element")),
        }
    }

    pub(super) fn eval_int(&mut self, env: &Env, e: &Expr, what: &str) -> R<i64> {
        let v = self.eval(env, e)?;
        match coerce(&Type::Int, &v) {
            Ok(Value::Int(i)) => Ok(i),
            _ => Err(self.error(
                "netc::type",
                format!("{what} must be an int, found {} `{v}`", v.kind()),
                e.span,
                "not an int",
            )),
        }
    }

    pub(super) fn eval_count(&mut self, env: &Env, e: &Expr, what: &str) -> R<usize> {
        let n = self.eval_int(env, e, what)?;
        if !(0..=limits::MAX_REPEAT).contains(&n) {
            return Err(self
                .error(
                    "netc::limit",
                    format!("{what} {n} is outside 0..={}", limits::MAX_REPEAT),
                    e.span,
                    "count out of range",
                )
                .help(format!(
                    "repetition counts are limited to {}",
                    limits::MAX_REPEAT
                )));
        }
        Ok(n as usize)
    }

    pub(super) fn eval_label(&mut self, env: &Env, l: &Label) -> R<Rc<str>> {
        let s: String = match l {
            Label::Ident(n) => n.node.clone(),
            Label::Int(n) => n.node.to_string(),
            Label::Str(s) => self.eval_string(env, s)?,
        };
        if s.is_empty()
            || s.chars().any(char::is_whitespace)
            || s.starts_with('.')
            || s.ends_with('.')
            || s.contains("..")
        {
            return Err(self
                .error(
                    "netc::bad_label",
                    format!("`{s}` is not a usable layer name"),
                    l.span(),
                    "bad label",
                )
                .help("labels are non-empty, without spaces, and do not start or end with `.`"));
        }
        Ok(s.into())
    }

    fn eval_string(&mut self, env: &Env, s: &ast::StringLit) -> R<String> {
        let mut out = String::new();
        for p in &s.parts {
            match p {
                StrPart::Text(t) => out.push_str(t),
                StrPart::Interp(e) => {
                    let v = self.eval(env, e)?;
                    if matches!(v, Value::Tensor(_) | Value::Layer(_)) {
                        return Err(self.error(
                            "netc::type",
                            format!("cannot put a {} in a string", v.kind()),
                            e.span,
                            "here",
                        ));
                    }
                    out.push_str(&value_str(&v));
                }
            }
            if out.len() > limits::MAX_STRING_LEN {
                return Err(self.error(
                    "netc::limit",
                    format!("string longer than {} bytes", limits::MAX_STRING_LEN),
                    s.span,
                    "too long",
                ));
            }
        }
        Ok(out)
    }

    /// Evaluates a labelled expression; a label turns the value into a named layer.
    pub(super) fn eval_labeled(&mut self, env: &Env, l: &Labeled) -> R<Value> {
        let v = self.eval(env, &l.expr)?;
        match &l.label {
            None => Ok(v),
            Some(label) => {
                let name = self.eval_label(env, label)?;
                self.label_value(v, name, label.span(), l.expr.span)
            }
        }
    }

    pub(super) fn label_value(
        &self,
        v: Value,
        name: Rc<str>,
        label_span: Span,
        span: Span,
    ) -> R<Value> {
        match v {
            Value::Layer(l) => Ok(Value::Layer(Rc::new(l.with_label(Some(name))))),
            Value::List(items) => {
                let layers = self.as_layers(&items, span)?;
                Ok(Value::Layer(Rc::new(Layer {
                    kind: LayerKind::Seq(layers),
                    label: Some(name),
                    span,
                })))
            }
            Value::None => Ok(Value::None),
            other => Err(self
                .error(
                    "netc::bad_label",
                    format!(
                        "only layers can be labelled, this is {} `{other}`",
                        other.kind()
                    ),
                    span,
                    "not a layer",
                )
                .label(label_span, "label")),
        }
    }

    pub(super) fn as_layers(&self, items: &[Value], span: Span) -> R<Vec<Rc<Layer>>> {
        items
            .iter()
            .map(|v| match v {
                Value::Layer(l) => Ok(l.clone()),
                Value::List(inner) => Ok(Rc::new(Layer {
                    kind: LayerKind::Seq(self.as_layers(inner, span)?),
                    label: None,
                    span,
                })),
                other => Err(self.error(
                    "netc::type",
                    format!(
                        "expected a list of layers, found {} `{other}` in it",
                        other.kind()
                    ),
                    span,
                    "in this list",
                )),
            })
            .collect()
    }

    pub(super) fn check_list_len(&self, n: usize, span: Span) -> R<()> {
        if n > limits::MAX_LIST_LEN {
            return Err(self.error(
                "netc::limit",
                format!("list longer than {} elements", limits::MAX_LIST_LEN),
                span,
                "too long",
            ));
        }
        Ok(())
    }

    pub fn eval(&mut self, env: &Env, e: &Expr) -> R<Value> {
        self.step(e.span)?;
        Ok(match &e.kind {
            ExprKind::Int(v) => Value::Int(*v),
            ExprKind::Float(v) => Value::Float(*v),
            ExprKind::Bool(v) => Value::Bool(*v),
            ExprKind::Str(s) => Value::Str(self.eval_string(env, s)?.into()),
            ExprKind::Ident(n) => self.lookup(env, n, e.span)?,
            ExprKind::List(elems) => {
                let mut out = Vec::new();
                for el in elems {
                    match el {
                        ListElem::Item(l) => match self.eval_labeled(env, l)? {
                            Value::None => {}
                            v => out.push(v),
                        },
                        ListElem::Spread(x) => {
                            let items = self.spread(env, x)?;
                            out.extend(items.iter().cloned());
                        }
                    }
                    self.check_list_len(out.len(), e.span)?;
                }
                Value::list(out)
            }
            ExprKind::ListComp {
                elem,
                pattern,
                iter,
                cond,
            } => {
                let items = self.eval_list(env, iter, "a list comprehension")?;
                let mut inner = env.clone();
                let mut out = Vec::new();
                for it in items.iter() {
                    self.bind_pattern(&mut inner, pattern, it.clone(), iter.span)?;
                    if let Some(c) = cond {
                        if !self.eval_bool(&inner, c)? {
                            continue;
                        }
                    }
                    match self.eval_labeled(&inner, elem)? {
                        Value::None => {}
                        v => out.push(v),
                    }
                }
                Value::list(out)
            }
            ExprKind::Tuple(items) => {
                Value::list(items.iter().map(|x| self.eval(env, x)).collect::<R<_>>()?)
            }
            ExprKind::Unary(op, x) => {
                let v = self.eval(env, x)?;
                match (op, &v) {
                    (UnOp::Neg, Value::Int(i)) => {
                        Value::Int(i.checked_neg().ok_or_else(|| self.overflow(e.span))?)
                    }
                    (UnOp::Neg, Value::Float(f)) => Value::Float(-f),
                    (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                    _ => {
                        let what = if *op == UnOp::Neg { "-" } else { "not" };
                        return Err(self.error(
                            "netc::type",
                            format!("cannot apply `{what}` to {} `{v}`", v.kind()),
                            x.span,
                            "operand",
                        ));
                    }
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(env, *op, a, b, e.span)?,
            ExprKind::Call(callee, args) => self.call(env, callee, args, e.span)?,
            ExprKind::Index(base, idx) => {
                let b = self.eval(env, base)?;
                let i = self.eval_int(env, idx, "an index")?;
                match &b {
                    Value::List(items) => {
                        let n = items.len() as i64;
                        let j = if i < 0 { i + n } else { i };
                        if !(0..n).contains(&j) {
                            return Err(self
                                .error(
                                    "netc::index",
                                    format!("index {i} is out of range for a list of {n}"),
                                    idx.span,
                                    "out of range",
                                )
                                .label(base.span, format!("this list has {n} elements")));
                        }
                        items[j as usize].clone()
                    }
                    Value::Tensor(_) => {
                        return Err(self
                            .error(
                                "netc::type",
                                "tensors are not indexed with `[]`",
                                e.span,
                                "indexing a tensor",
                            )
                            .help("use `select(axis = 1, index = 0)` or `split(n)`"))
                    }
                    v => {
                        return Err(self.error(
                            "netc::type",
                            format!("cannot index {} `{v}`", v.kind()),
                            base.span,
                            "not a list",
                        ))
                    }
                }
            }
            ExprKind::If(c, then, els) => {
                if self.eval_bool(env, c)? {
                    self.eval_labeled(env, then)?
                } else {
                    match els {
                        Some(x) => self.eval_labeled(env, x)?,
                        None => Value::None,
                    }
                }
            }
            ExprKind::Pipeline(head, stages) => {
                let mut v = self.eval(env, head)?;
                let mut vspan = head.span;
                for st in stages {
                    let layer = self.eval(env, &st.expr)?;
                    let label = match &st.label {
                        Some(l) => Some(self.eval_label(env, l)?),
                        None => None,
                    };
                    v = self.apply_value(layer, label, v, vspan, st.expr.span)?;
                    vspan = vspan.to(st.expr.span);
                }
                v
            }
            ExprKind::Repeat(r) | ExprKind::Dense(r) | ExprKind::ForkN(r) => {
                let what = match &e.kind {
                    ExprKind::Repeat(_) => "repeat count",
                    ExprKind::Dense(_) => "dense count",
                    _ => "fork count",
                };
                let n = self.eval_count(env, &r.count, what)?;
                let mut inner = env.clone();
                let mut layers = Vec::with_capacity(n);
                for i in 0..n {
                    if let Some(var) = &r.var {
                        inner.insert(var.node.as_str().into(), Value::Int(i as i64));
                    }
                    let v = self.eval_labeled(&inner, &r.body)?;
                    let mut ls = self.as_layers(std::slice::from_ref(&v), r.body.expr.span)?;
                    layers.push(ls.pop().unwrap());
                }
                let kind = match &e.kind {
                    ExprKind::Repeat(_) => LayerKind::Seq(layers),
                    ExprKind::Dense(_) => LayerKind::Dense(layers),
                    _ => LayerKind::Fork(layers),
                };
                Value::Layer(Rc::new(Layer {
                    kind,
                    label: None,
                    span: e.span,
                }))
            }
            ExprKind::ForkList(elems) => {
                let mut layers = Vec::new();
                for el in elems {
                    match el {
                        ListElem::Item(l) => match self.eval_labeled(env, l)? {
                            Value::None => {}
                            v => layers
                                .extend(self.as_layers(std::slice::from_ref(&v), l.expr.span)?),
                        },
                        ListElem::Spread(x) => {
                            let items = self.spread(env, x)?;
                            layers.extend(self.as_layers(&items, x.span)?);
                        }
                    }
                }
                Value::Layer(Rc::new(Layer {
                    kind: LayerKind::Fork(layers),
                    label: None,
                    span: e.span,
                }))
            }
            ExprKind::Each { var, body } => Value::Layer(Rc::new(Layer {
                kind: LayerKind::Each(Closure {
                    env: Rc::new(env.clone()),
                    var: var.as_ref().map(|v| v.node.as_str().into()),
                    body: Rc::new((**body).clone()),
                }),
                label: None,
                span: e.span,
            })),
        })
    }

    pub(super) fn eval_bool(&mut self, env: &Env, e: &Expr) -> R<bool> {
        match self.eval(env, e)? {
            Value::Bool(b) => Ok(b),
            v => Err(self
                .error(
                    "netc::type",
                    format!("a condition must be a bool, found {} `{v}`", v.kind()),
                    e.span,
                    "not a bool",
                )
                .help("compare explicitly, e.g. `n != 0`")),
        }
    }

    pub(super) fn overflow(&self, span: Span) -> Diagnostic {
        self.error(
            "netc::overflow",
            "integer overflow",
            span,
            "result does not fit in 64 bits",
        )
    }

    fn binary(&mut self, env: &Env, op: BinOp, a: &Expr, b: &Expr, span: Span) -> R<Value> {
        if matches!(op, BinOp::And | BinOp::Or) {
            let l = self.eval_bool(env, a)?;
            if (op == BinOp::And && !l) || (op == BinOp::Or && l) {
                return Ok(Value::Bool(l));
            }
            return Ok(Value::Bool(self.eval_bool(env, b)?));
        }
        let l = self.eval(env, a)?;
        let r = self.eval(env, b)?;
        use Value as V;
        let num = |v: &Value| match v {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            _ => None,
        };
        // Point at the operator so miette can draw both operand labels beside it.
        let op_span = if a.span.end <= b.span.start {
            self.trimmed(Span {
                file: span.file,
                start: a.span.end,
                end: b.span.start,
            })
        } else {
            span
        };
        let type_err = |me: &Self| {
            me.error(
                "netc::type",
                format!(
                    "cannot apply `{}` to {} and {}",
                    op.symbol(),
                    l.kind(),
                    r.kind()
                ),
                op_span,
                "this operator",
            )
            .label(a.span, format!("{} `{l}`", l.kind()))
            .label(b.span, format!("{} `{r}`", r.kind()))
        };
        Ok(match (&l, &r) {
            (V::Tensor(x), V::Tensor(y)) => {
                let bop = match op {
                    BinOp::Add => BinaryOp::Add,
                    BinOp::Sub => BinaryOp::Sub,
                    BinOp::Mul => BinaryOp::Mul,
                    BinOp::Div => BinaryOp::Div,
                    _ => return Err(type_err(self).help("tensors support + - * / element-wise")),
                };
                V::Tensor(self.add_op(Op::Binary(bop), None, &[(*x, a.span), (*y, b.span)], span)?)
            }
            (V::Int(x), V::Int(y)) => {
                let (x, y) = (*x, *y);
                let ov = || self.overflow(span);
                match op {
                    BinOp::Add => V::Int(x.checked_add(y).ok_or_else(ov)?),
                    BinOp::Sub => V::Int(x.checked_sub(y).ok_or_else(ov)?),
                    BinOp::Mul => V::Int(x.checked_mul(y).ok_or_else(ov)?),
                    BinOp::Div | BinOp::Rem if y == 0 => {
                        return Err(self.error("netc::division_by_zero", "division by zero", b.span, "this is 0"))
                    }
                    BinOp::Div => V::Float(x as f64 / y as f64),
                    BinOp::Rem => V::Int(floor_rem(x, y).ok_or_else(ov)?),
                    BinOp::Pow => {
                        if !(0..=63).contains(&y) {
                            V::Float((x as f64).powf(y as f64))
                        } else {
                            V::Int(x.checked_pow(y as u32).ok_or_else(ov)?)
                        }
                    }
                    _ => V::Bool(compare(op, x.cmp(&y))),
                }
            }
            (V::Int(_) | V::Float(_), V::Int(_) | V::Float(_)) => {
                let (x, y) = (num(&l).unwrap(), num(&r).unwrap());
                match op {
                    BinOp::Add => V::Float(x + y),
                    BinOp::Sub => V::Float(x - y),
                    BinOp::Mul => V::Float(x * y),
                    BinOp::Div | BinOp::Rem if y == 0.0 => {
                        return Err(self.error("netc::division_by_zero", "division by zero", b.span, "this is 0"))
                    }
                    BinOp::Div => V::Float(x / y),
                    BinOp::Rem => V::Float(x - y * (x / y).floor()),
                    BinOp::Pow => V::Float(x.powf(y)),
                    _ => V::Bool(compare(op, x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal))),
                }
            }
            (V::Str(x), V::Str(y)) => match op {
                BinOp::Add => V::Str(format!("{x}{y}").into()),
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => V::Bool(compare(op, x.cmp(y))),
                _ => return Err(type_err(self)),
            },
            (V::List(x), V::List(y)) if op == BinOp::Add => {
                self.check_list_len(x.len() + y.len(), span)?;
                V::list(x.iter().chain(y.iter()).cloned().collect())
            }
            (V::List(x), V::Int(n)) | (V::Int(n), V::List(x)) if op == BinOp::Mul => {
                let n = (*n).max(0) as usize;
                self.check_list_len(x.len().saturating_mul(n), span)?;
                V::list(x.iter().cloned().cycle().take(x.len() * n).collect())
            }
            _ if matches!(op, BinOp::Eq | BinOp::Ne) => {
                let eq = values_equal(&l, &r).ok_or_else(|| type_err(self))?;
                V::Bool(eq == (op == BinOp::Eq))
            }
            (V::Tensor(_), _) | (_, V::Tensor(_)) => {
                return Err(type_err(self).help("element-wise ops combine two tensors; arithmetic between a tensor and a number is not supported"))
            }
            _ => return Err(type_err(self)),
        })
    }
}

/// Python's modulo (the result has the divisor's sign).
fn floor_rem(x: i64, y: i64) -> Option<i64> {
    let r = x.checked_rem(y)?;
    Some(if r != 0 && ((r < 0) != (y < 0)) {
        r + y
    } else {
        r
    })
}

fn compare(op: BinOp, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Eq => o == Equal,
        BinOp::Ne => o != Equal,
        BinOp::Lt => o == Less,
        BinOp::Le => o != Greater,
        BinOp::Gt => o == Greater,
        BinOp::Ge => o != Less,
        _ => false,
    }
}

/// Structural equality for `==`; `None` when the kinds cannot be compared.
fn values_equal(a: &Value, b: &Value) -> Option<bool> {
    Some(match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let f = |v: &Value| match v {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                _ => 0.0,
            };
            f(a) == f(b)
        }
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Symbol(e1, v1), Value::Symbol(e2, v2)) => e1 == e2 && v1 == v2,
        (Value::None, Value::None) => true,
        // Different scalar kinds are simply unequal (as in Python), so mixed
        // lists such as VGG's [64, "M", ...] can be tested element by element.
        (
            Value::Int(_)
            | Value::Float(_)
            | Value::Bool(_)
            | Value::Str(_)
            | Value::Symbol(..)
            | Value::None,
            Value::Int(_)
            | Value::Float(_)
            | Value::Bool(_)
            | Value::Str(_)
            | Value::Symbol(..)
            | Value::None,
        ) => false,
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| values_equal(p, q) == Some(true))
        }
        (Value::Layer(x), Value::Layer(y)) => match (&x.kind, &y.kind) {
            (LayerKind::Op { spec: s1, args: a1 }, LayerKind::Op { spec: s2, args: a2 }) => {
                std::ptr::eq(*s1, *s2) && a1.is_empty() && a2.is_empty()
            }
            (LayerKind::Block { name: n1, args: a1 }, LayerKind::Block { name: n2, args: a2 }) => {
                n1 == n2 && a1.is_empty() && a2.is_empty()
            }
            _ => false,
        },
        _ => return None,
    })
}
