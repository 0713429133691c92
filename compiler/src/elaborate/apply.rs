//! Calls and layer application: binding arguments, applying ops, blocks,
//! sequences, dense blocks, forks and `each`, and adding IR nodes with
//! hierarchical names.

use super::builtins::{self, check_arg, Args, Inputs, Lowering, OpSpec};
use super::eval::{Elab, Env, Operand, R};
use super::functions;
use super::limits;
use super::program::Def;
use super::value::{ArgValue, Layer, LayerKind, Value};
use crate::ir::{DType, Node, Op, ParamSlot, Shape};
use crate::ops;
use netc_grammar::ast::{self, Expr, ExprKind};
use netc_grammar::{did_you_mean, Span};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;
use std::rc::Rc;

impl Elab<'_> {
    // ------------------------------------------------------------ naming

    /// The current scope path, extended by `label` if given.
    pub(super) fn path_with(&self, label: Option<&str>) -> String {
        let mut parts: Vec<&str> = self.scope.iter().map(|s| &**s).collect();
        if let Some(l) = label {
            parts.push(l);
        }
        parts.join(".")
    }

    /// A node name not used yet: `base`, else `base_1`, `base_2`, ...
    pub(super) fn fresh_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.used_names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    /// Adds a node after checking the limits and parameter-key uniqueness.
    pub(super) fn push_node(
        &mut self,
        op: Op,
        name: String,
        shape: Shape,
        params: Vec<ParamSlot>,
        operands: &[NodeIndex],
        span: Span,
    ) -> R<NodeIndex> {
        if self.graph.len() >= limits::MAX_NODES {
            return Err(self.error(
                "netc::limit",
                format!("the network has more than {} nodes", limits::MAX_NODES),
                span,
                "one node too many",
            ));
        }
        let numel = shape.numel_per_sample();
        if numel > limits::MAX_TENSOR_ELEMENTS {
            return Err(self
                .error(
                    "netc::tensor_too_large",
                    format!(
                        "`{name}` would produce {shape} = {numel} elements per sample, over the limit of {}",
                        limits::MAX_TENSOR_ELEMENTS
                    ),
                    span,
                    "this layer",
                )
                .help("reduce the resolution or the channel count"));
        }
        for p in &params {
            if p.numel() > limits::MAX_TENSOR_ELEMENTS {
                return Err(self.error(
                    "netc::tensor_too_large",
                    format!(
                        "parameter `{}` of shape {:?} has {} elements, over the limit of {}",
                        p.key,
                        p.shape,
                        p.numel(),
                        limits::MAX_TENSOR_ELEMENTS
                    ),
                    span,
                    "this layer",
                ));
            }
            if let Some(prev) = self.param_keys.get(&p.key) {
                return Err(self
                    .error(
                        "netc::duplicate_parameter",
                        format!("parameter `{}` is defined twice", p.key),
                        span,
                        "second definition",
                    )
                    .label(*prev, "first definition")
                    .help("give one of the layers a different label (weights are never shared implicitly)"));
            }
        }
        for p in &params {
            self.param_keys.insert(p.key.clone(), span);
        }
        let node = Node {
            op,
            name,
            shape,
            dtype: DType::F32,
            params,
            span,
        };
        Ok(self.graph.add_node(node, operands))
    }

    /// Infers the shape of `op` over `operands`, names it and adds it.
    pub(super) fn add_op(
        &mut self,
        op: Op,
        label: Option<&str>,
        operands: &[Operand],
        span: Span,
    ) -> R<NodeIndex> {
        let shapes: Vec<Shape> = operands
            .iter()
            .map(|(n, _)| self.graph.node(*n).shape.clone())
            .collect();
        let refs: Vec<&Shape> = shapes.iter().collect();
        let shape = ops::infer(&op, &refs).map_err(|e| {
            // When the operands are written inside the span (`a + b`), point at the
            // operator between them so miette can draw all three labels.
            let inside = |s: Span| {
                s.file == span.file && s.start >= span.start && s.end <= span.end && s != span
            };
            let primary = match operands {
                [(_, a), (_, b), ..] if inside(*a) && inside(*b) && a.end <= b.start => self
                    .trimmed(Span {
                        file: span.file,
                        start: a.end,
                        end: b.start,
                    }),
                _ => span,
            };
            let mut d = self.error(
                "netc::shape",
                e.message.clone(),
                primary,
                format!("this `{}`", op.mnemonic()),
            );
            if e.message.starts_with("shape mismatch") || e.message.contains("inner dimensions") {
                d.code = "netc::shape_mismatch";
            } else if e.message.contains("divisible by groups") {
                d.code = "netc::groups";
            } else if e.message.starts_with("kernel") {
                d.code = "netc::kernel_too_large";
            }
            for (i, text) in &e.operand_labels {
                if let Some((_, s)) = operands.get(*i) {
                    if *s != span && *s != primary {
                        d = d.label(*s, text.clone());
                    } else {
                        d.labels[0].1 = format!("in this layer: input {text}");
                    }
                }
            }
            if let Some(h) = &e.help {
                d = d.help(h.clone());
            }
            d
        })?;
        let key_base = match label {
            Some(l) => self.path_with(Some(l)),
            None => {
                let n = self.path_with(Some(op.mnemonic()));
                // Reserve the unlabelled name so keys stay unique.
                let fresh = self.fresh_name(&n);
                self.used_names.remove(&fresh);
                fresh
            }
        };
        let params = ops::params(&op, &key_base, &refs);
        let name = self.fresh_name(&key_base);
        let ids: Vec<NodeIndex> = operands.iter().map(|o| o.0).collect();
        self.push_node(op, name, shape, params, &ids, span)
    }

    /// The span without leading and trailing whitespace.
    pub(super) fn trimmed(&self, s: Span) -> Span {
        let text = self.sources.snippet(s);
        let lead = text.len() - text.trim_start().len();
        let trail = text.len() - text.trim_end().len();
        if lead + trail >= text.len() {
            return s;
        }
        Span {
            file: s.file,
            start: s.start + lead as u32,
            end: s.end - trail as u32,
        }
    }

    // ------------------------------------------------------------ calls

    /// Evaluates `callee(args)`: a function call, or binding arguments of an op or
    /// block (applying it at once when tensors are among the arguments).
    pub(super) fn call(
        &mut self,
        env: &Env,
        callee: &Expr,
        args: &[ast::Arg],
        span: Span,
    ) -> R<Value> {
        if let ExprKind::Ident(name) = &callee.kind {
            let shadowed =
                env.contains_key(name.as_str()) || self.consts.contains_key(name.as_str());
            if !shadowed && builtins::FUNCTIONS.iter().any(|f| f.0 == name) {
                let mut vals = Vec::new();
                for a in args {
                    if let Some(n) = &a.name {
                        return Err(self
                            .error(
                                "netc::unknown_argument",
                                format!("function `{name}` takes no named arguments"),
                                n.span,
                                "named argument",
                            )
                            .help("pass the values positionally"));
                    }
                    vals.push(ArgValue {
                        value: self.eval(env, &a.value)?,
                        span: a.span,
                    });
                }
                return functions::call(self, name, &vals, span);
            }
        }
        let base = match self.eval(env, callee)? {
            Value::Layer(l) => l,
            v => {
                let d = self.error(
                    "netc::type",
                    format!("{} `{v}` cannot be called", v.kind()),
                    callee.span,
                    "not an op, block or function",
                );
                // A variable named like a built-in hides it: say so.
                let hidden = match &callee.kind {
                    ExprKind::Ident(n)
                        if builtins::op(n).is_some()
                            || builtins::FUNCTIONS.iter().any(|f| f.0 == n) =>
                    {
                        Some(n.clone())
                    }
                    _ => None,
                };
                return Err(match hidden {
                    Some(n) => d.help(format!(
                        "the variable `{n}` hides the built-in `{n}`; rename the variable (e.g. `{n}_p`)"
                    )),
                    None => d,
                });
            }
        };
        let mut evaluated = Vec::new();
        for a in args {
            evaluated.push((
                a.name.clone(),
                ArgValue {
                    value: self.eval(env, &a.value)?,
                    span: a.span,
                },
            ));
        }
        let (layer, operands) = self.bind_args(&base, evaluated, span)?;
        if operands.is_empty() {
            return Ok(Value::Layer(Rc::new(layer)));
        }
        let (input, input_span) = if operands.len() == 1 {
            (Value::Tensor(operands[0].0), operands[0].1)
        } else {
            let s = operands[0].1.to(operands[operands.len() - 1].1);
            (
                Value::list(operands.iter().map(|o| Value::Tensor(o.0)).collect()),
                s,
            )
        };
        let label = layer.label.clone();
        self.call_operand_spans = operands.iter().map(|o| o.1).collect();
        let r = self.apply(&layer, label, input, input_span, span);
        self.call_operand_spans.clear();
        r
    }

    /// Binds call arguments to a layer's parameters; tensors are returned as operands.
    fn bind_args(
        &self,
        base: &Layer,
        args: Vec<(Option<netc_grammar::Spanned<String>>, ArgValue)>,
        span: Span,
    ) -> R<(Layer, Vec<Operand>)> {
        let mut operands = Vec::new();
        match &base.kind {
            LayerKind::Op { spec, args: bound } => {
                let mut bound = bound.clone();
                let mut pos = 0;
                for (name, a) in args {
                    if let (None, Value::Tensor(t)) = (&name, &a.value) {
                        operands.push((*t, a.span));
                        continue;
                    }
                    if let (None, Value::List(items)) = (&name, &a.value) {
                        if !items.is_empty()
                            && spec.inputs != Inputs::One
                            && items.iter().all(|i| matches!(i, Value::Tensor(_)))
                        {
                            for i in items.iter() {
                                if let Value::Tensor(t) = i {
                                    operands.push((*t, a.span));
                                }
                            }
                            continue;
                        }
                    }
                    let spec_arg = match &name {
                        Some(n) => {
                            spec.args.iter().find(|s| s.name == n.node).ok_or_else(|| {
                                let d = self.error(
                                    "netc::unknown_argument",
                                    format!("`{}` has no argument `{}`", spec.name, n.node),
                                    n.span,
                                    "unknown argument",
                                );
                                let names: Vec<&str> = spec.args.iter().map(|s| s.name).collect();
                                match did_you_mean(&n.node, names.iter().copied()) {
                                    Some(s) => d.help(format!("did you mean `{s}`?")),
                                    None if names.is_empty() => {
                                        d.help(format!("`{}` takes no arguments", spec.name))
                                    }
                                    None => d.help(format!(
                                        "`{}` takes: {}",
                                        spec.name,
                                        names.join(", ")
                                    )),
                                }
                            })?
                        }
                        None => {
                            let s = spec.args.get(pos).ok_or_else(|| {
                                self.error(
                                    "netc::arity",
                                    format!(
                                        "`{}` takes at most {} positional argument(s)",
                                        spec.name,
                                        spec.args.len()
                                    ),
                                    a.span,
                                    "extra argument",
                                )
                                .help(signature(spec))
                            })?;
                            pos += 1;
                            s
                        }
                    };
                    if name.is_some()
                        && bound.contains_key(spec_arg.name)
                        && !base_has(base, spec_arg.name)
                    {
                        return Err(self.error(
                            "netc::arity",
                            format!("argument `{}` given twice", spec_arg.name),
                            a.span,
                            "again here",
                        ));
                    }
                    let v = check_arg(spec_arg.kind, &a.value).map_err(|why| {
                        self.error(
                            "netc::type",
                            format!(
                                "wrong type for `{}` of `{}`: {why}",
                                spec_arg.name, spec.name
                            ),
                            a.span,
                            format!("this is {}", a.value.kind()),
                        )
                        .help(signature(spec))
                    })?;
                    bound.insert(
                        spec_arg.name,
                        ArgValue {
                            value: v,
                            span: a.span,
                        },
                    );
                }
                Ok((
                    Layer {
                        kind: LayerKind::Op { spec, args: bound },
                        label: base.label.clone(),
                        span,
                    },
                    operands,
                ))
            }
            LayerKind::Block { name, args: bound } => {
                let Some(Def::Block(def)) = self.prog.defs.get(name) else {
                    unreachable!("block layer for a non-block")
                };
                let mut bound = bound.clone();
                let positional: Vec<&ast::Param> = def
                    .params
                    .iter()
                    .filter(|p| !is_tensor_type(&p.ty))
                    .collect();
                let mut pos = bound.len();
                let mut named_tensors: Vec<(usize, Operand)> = Vec::new();
                for (n, a) in args {
                    match (&n, &a.value) {
                        (None, Value::Tensor(t)) => {
                            operands.push((*t, a.span));
                            continue;
                        }
                        (Some(n), Value::Tensor(t)) => {
                            if let Some(i) = def
                                .params
                                .iter()
                                .filter(|p| is_tensor_type(&p.ty))
                                .position(|p| p.name.node == n.node)
                            {
                                named_tensors.push((i, (*t, a.span)));
                                continue;
                            }
                        }
                        _ => {}
                    }
                    let pname: Rc<str> = match &n {
                        Some(n) => {
                            if !def.params.iter().any(|p| p.name.node == n.node) {
                                return Err(self.unknown_param(
                                    &n.node,
                                    n.span,
                                    def.params.iter().map(|p| p.name.node.as_str()),
                                    name,
                                ));
                            }
                            n.node.as_str().into()
                        }
                        None => {
                            let p = positional.get(pos).ok_or_else(|| {
                                self.error(
                                    "netc::arity",
                                    format!(
                                        "block `{name}` takes {} argument(s), found more",
                                        positional.len()
                                    ),
                                    a.span,
                                    "extra argument",
                                )
                                .label(def.name.span, "defined here")
                            })?;
                            pos += 1;
                            p.name.node.as_str().into()
                        }
                    };
                    if bound.iter().any(|(k, _)| *k == pname) {
                        return Err(self.error(
                            "netc::arity",
                            format!("argument `{pname}` given twice"),
                            a.span,
                            "again here",
                        ));
                    }
                    // Check the type now so the error points at the call.
                    let p = def.params.iter().find(|p| *p.name.node == *pname).unwrap();
                    let ty = self.resolve_type(&p.ty)?;
                    if let Err(why) = super::value::coerce(&ty, &a.value) {
                        return Err(self
                            .error(
                                "netc::type",
                                format!("wrong type for `{pname}` of `{name}`: {why}"),
                                a.span,
                                format!("this is {}", a.value.kind()),
                            )
                            .label(p.ty.span(), format!("declared `{ty}` here")));
                    }
                    bound.push((pname, a));
                }
                named_tensors.sort_by_key(|t| t.0);
                operands.extend(named_tensors.into_iter().map(|t| t.1));
                Ok((
                    Layer {
                        kind: LayerKind::Block {
                            name: name.clone(),
                            args: bound,
                        },
                        label: base.label.clone(),
                        span,
                    },
                    operands,
                ))
            }
            _ => {
                // Sequences, forks and the like are called with tensors only.
                for (n, a) in args {
                    match (&n, &a.value) {
                        (None, Value::Tensor(t)) => operands.push((*t, a.span)),
                        _ => {
                            return Err(self.error(
                                "netc::arity",
                                format!("a {} takes only tensors", base.describe()),
                                a.span,
                                "not a tensor",
                            ))
                        }
                    }
                }
                Ok((base.clone(), operands))
            }
        }
    }

    // ------------------------------------------------------------ application

    /// Applies a value used as a pipeline stage.
    pub(super) fn apply_value(
        &mut self,
        layer: Value,
        label: Option<Rc<str>>,
        input: Value,
        input_span: Span,
        site: Span,
    ) -> R<Value> {
        match layer {
            Value::Layer(l) => {
                let label = label.or_else(|| l.label.clone());
                self.apply(&l, label, input, input_span, site)
            }
            Value::List(items) => {
                let layers = self.as_layers(&items, site)?;
                let seq = Layer {
                    kind: LayerKind::Seq(layers),
                    label: None,
                    span: site,
                };
                self.apply(&seq, label, input, input_span, site)
            }
            Value::None => Ok(input),
            Value::Tensor(_) => Err(self
                .error(
                    "netc::type",
                    "a tensor cannot be applied as a layer",
                    site,
                    "this is a tensor",
                )
                .help("to combine two tensors use `+`, `*` or `concat(a, b)`")),
            v => Err(self.error(
                "netc::type",
                format!("{} `{v}` cannot be applied as a layer", v.kind()),
                site,
                "not a layer",
            )),
        }
    }

    fn tensor_input(&self, input: &Value, span: Span, what: &str) -> R<NodeIndex> {
        match input {
            Value::Tensor(t) => Ok(*t),
            Value::List(items) => Err(self
                .error(
                    "netc::type",
                    format!("{what} takes one tensor, found a list of {}", items.len()),
                    span,
                    "a list",
                )
                .help("merge the list first: `-> concat` or `-> sum`")),
            v => Err(self.error(
                "netc::type",
                format!("{what} takes a tensor, found {} `{v}`", v.kind()),
                span,
                "not a tensor",
            )),
        }
    }

    fn tensor_list(&self, input: &Value, span: Span, what: &str) -> R<Vec<NodeIndex>> {
        match input {
            Value::Tensor(t) => Ok(vec![*t]),
            Value::List(items) if !items.is_empty() => items
                .iter()
                .map(|i| match i {
                    Value::Tensor(t) => Ok(*t),
                    v => Err(self.error(
                        "netc::type",
                        format!(
                            "{what} takes a list of tensors, found {} `{v}` in it",
                            v.kind()
                        ),
                        span,
                        "this list",
                    )),
                })
                .collect(),
            v => Err(self.error(
                "netc::type",
                format!("{what} takes a list of tensors, found {} `{v}`", v.kind()),
                span,
                "not a list of tensors",
            )),
        }
    }

    /// Applies a layer to an input value (a tensor or a list of tensors).
    pub(super) fn apply(
        &mut self,
        layer: &Layer,
        label: Option<Rc<str>>,
        input: Value,
        input_span: Span,
        site: Span,
    ) -> R<Value> {
        self.step(site)?;
        match &layer.kind {
            LayerKind::Op { spec, args } => {
                self.apply_op(spec, args, label.as_deref(), input, input_span, site)
            }
            LayerKind::Block { name, args } => {
                self.apply_block(name, args, label, input, input_span, site)
            }
            LayerKind::Seq(children) => self.with_scope(label, |me| {
                let mut v = input;
                let mut vspan = input_span;
                for (i, child) in children.iter().enumerate() {
                    let l = child.label.clone().unwrap_or_else(|| i.to_string().into());
                    v = me.apply(child, Some(l), v, vspan, child.span)?;
                    vspan = child.span;
                }
                Ok(v)
            }),
            LayerKind::Dense(children) => self.with_scope(label, |me| {
                let x = me.tensor_input(&input, input_span, "a dense block")?;
                let mut features: Vec<Operand> = vec![(x, input_span)];
                for (i, child) in children.iter().enumerate() {
                    let inp = if features.len() == 1 {
                        features[0].0
                    } else {
                        me.add_op(Op::Concat { axis: 1 }, None, &features, child.span)?
                    };
                    let l = child.label.clone().unwrap_or_else(|| i.to_string().into());
                    let out =
                        me.apply(child, Some(l), Value::Tensor(inp), input_span, child.span)?;
                    let out = me.tensor_input(&out, child.span, "a dense block layer's output")?;
                    features.push((out, child.span));
                }
                if features.len() == 1 {
                    return Ok(Value::Tensor(features[0].0));
                }
                Ok(Value::Tensor(me.add_op(
                    Op::Concat { axis: 1 },
                    None,
                    &features,
                    site,
                )?))
            }),
            LayerKind::Fork(children) => self.with_scope(label, |me| {
                let mut outs = Vec::new();
                for (i, child) in children.iter().enumerate() {
                    let l = child.label.clone().unwrap_or_else(|| i.to_string().into());
                    outs.push(me.apply(child, Some(l), input.clone(), input_span, child.span)?);
                }
                Ok(Value::list(outs))
            }),
            LayerKind::Each(closure) => {
                let items = match &input {
                    Value::List(items) => items.clone(),
                    v => {
                        return Err(self
                            .error(
                                "netc::type",
                                format!("`each` takes a list of tensors, found {} `{v}`", v.kind()),
                                input_span,
                                "not a list",
                            )
                            .help("produce a list with `split(n)` or `fork`"))
                    }
                };
                self.with_scope(label, |me| {
                    let mut outs = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let mut env: Env = (*closure.env).clone();
                        if let Some(var) = &closure.var {
                            env.insert(var.clone(), Value::Int(i as i64));
                        }
                        let l = me.eval_labeled(&env, &closure.body)?;
                        let (l_layer, l_label) = match &l {
                            Value::Layer(x) => (Value::Layer(x.clone()), x.label.clone()),
                            other => (other.clone(), None),
                        };
                        let lab = l_label.unwrap_or_else(|| i.to_string().into());
                        outs.push(me.apply_value(
                            l_layer,
                            Some(lab),
                            item.clone(),
                            input_span,
                            closure.body.expr.span,
                        )?);
                    }
                    Ok(Value::list(outs))
                })
            }
        }
    }

    fn with_scope<T>(&mut self, label: Option<Rc<str>>, f: impl FnOnce(&mut Self) -> R<T>) -> R<T> {
        let pushed = label.is_some();
        if let Some(l) = label {
            self.scope.push(l);
        }
        let r = f(self);
        if pushed {
            self.scope.pop();
        }
        r
    }

    fn apply_op(
        &mut self,
        spec: &'static OpSpec,
        args: &HashMap<&'static str, ArgValue>,
        label: Option<&str>,
        input: Value,
        input_span: Span,
        site: Span,
    ) -> R<Value> {
        // Required arguments must be present.
        for a in spec.args {
            if matches!(a.default, builtins::ArgDefault::Required) && !args.contains_key(a.name) {
                return Err(self
                    .error(
                        "netc::missing_argument",
                        format!("`{}` needs the argument `{}`", spec.name, a.name),
                        site,
                        "missing argument",
                    )
                    .help(signature(spec)));
            }
        }
        let operands: Vec<Operand> = match spec.inputs {
            Inputs::One => vec![(
                self.tensor_input(&input, input_span, &format!("`{}`", spec.name))?,
                input_span,
            )],
            Inputs::Two => {
                let ts = self.tensor_list(&input, input_span, &format!("`{}`", spec.name))?;
                if ts.len() != 2 {
                    return Err(self.error(
                        "netc::arity",
                        format!("`{}` takes two tensors, found {}", spec.name, ts.len()),
                        input_span,
                        "here",
                    ));
                }
                ts.into_iter()
                    .map(|t| (t, self.graph.node(t).span))
                    .collect()
            }
            Inputs::Many => {
                let ts = self.tensor_list(&input, input_span, &format!("`{}`", spec.name))?;
                // Several tensors from one expression: blame each one's producer.
                let each = ts.len() > 1 && matches!(input, Value::List(_));
                ts.into_iter()
                    .map(|t| {
                        (
                            t,
                            if each {
                                self.graph.node(t).span
                            } else {
                                input_span
                            },
                        )
                    })
                    .collect()
            }
        };
        let mut operands = operands;
        let written = std::mem::take(&mut self.call_operand_spans);
        if written.len() == operands.len() && operands.len() > 1 {
            for (o, s) in operands.iter_mut().zip(written) {
                o.1 = s;
            }
        }
        let shapes: Vec<Shape> = operands.iter().map(|o| self.shape(o.0).clone()).collect();
        let refs: Vec<&Shape> = shapes.iter().collect();
        let bound = Args::new(spec, args);
        match spec.lowering {
            Lowering::Node(build) => {
                let op = build(&bound, &refs).map_err(|e| {
                    let span = e.span.unwrap_or(site);
                    let mut d = self.error("netc::bad_argument", e.message.clone(), span, "here");
                    if let Some(h) = e.help {
                        d = d.help(h);
                    }
                    d
                })?;
                Ok(Value::Tensor(self.add_op(op, label, &operands, site)?))
            }
            Lowering::Fold(bop) => {
                if operands.len() < 2 {
                    return Err(self.error(
                        "netc::arity",
                        format!(
                            "`{}` needs at least two tensors, found {}",
                            spec.name,
                            operands.len()
                        ),
                        input_span,
                        "here",
                    ));
                }
                let mut acc = operands[0];
                let last = operands.len() - 1;
                for (i, o) in operands[1..].iter().enumerate() {
                    let l = if i + 1 == last { label } else { None };
                    let n = self.add_op(Op::Binary(bop), l, &[acc, *o], site)?;
                    acc = (n, site);
                }
                Ok(Value::Tensor(acc.0))
            }
            Lowering::Split => {
                let x = operands[0];
                let n = bound.size("n").map_err(|e| {
                    self.error(
                        "netc::bad_argument",
                        e.message,
                        e.span.unwrap_or(site),
                        "here",
                    )
                })?;
                let axis_v = bound.int("axis");
                let xs = self.shape(x.0).clone();
                let axis = xs.axis(axis_v).ok_or_else(|| {
                    self.error(
                        "netc::bad_argument",
                        format!("axis {axis_v} is out of range for {xs}"),
                        site,
                        "here",
                    )
                })?;
                let extent = xs.known(axis).unwrap_or(0);
                if n == 0 || !extent.is_multiple_of(n) {
                    return Err(self
                        .error(
                            "netc::groups",
                            format!("cannot split {extent} into {n} equal parts"),
                            site,
                            "this split",
                        )
                        .label(x.1, format!("shape {xs}"))
                        .help("the split axis must be divisible by the number of parts"));
                }
                let chunk = extent / n;
                let base = label.map(str::to_string);
                let mut outs = Vec::new();
                for i in 0..n {
                    let l = base.as_ref().map(|b| format!("{b}.{i}"));
                    let op = Op::Slice {
                        axis,
                        start: i * chunk,
                        end: (i + 1) * chunk,
                    };
                    outs.push(Value::Tensor(self.add_op(op, l.as_deref(), &[x], site)?));
                }
                Ok(Value::list(outs))
            }
        }
    }

    fn apply_block(
        &mut self,
        name: &Rc<str>,
        args: &[(Rc<str>, ArgValue)],
        label: Option<Rc<str>>,
        input: Value,
        input_span: Span,
        site: Span,
    ) -> R<Value> {
        let Some(Def::Block(def)) = self.prog.defs.get(name).cloned() else {
            unreachable!("block layer for a non-block")
        };
        if self.stack.len() >= limits::MAX_CALL_DEPTH {
            return Err(self
                .error(
                    "netc::recursion",
                    format!("blocks nested more than {} deep", limits::MAX_CALL_DEPTH),
                    site,
                    format!("applying `{name}` here"),
                )
                .help("a block that (indirectly) applies itself never ends; check layer-typed arguments"));
        }
        let mut values: HashMap<Rc<str>, ArgValue> = args.iter().cloned().collect();
        let tensor_params: Vec<&ast::Param> = def
            .params
            .iter()
            .filter(|p| is_tensor_type(&p.ty))
            .collect();
        let mut env = Env::new();
        match tensor_params.len() {
            0 => {
                env.insert("x".into(), input);
            }
            1 => {
                values.insert(
                    tensor_params[0].name.node.as_str().into(),
                    ArgValue {
                        value: input,
                        span: input_span,
                    },
                );
            }
            n => match &input {
                Value::List(items) if items.len() == n => {
                    for (p, v) in tensor_params.iter().zip(items.iter()) {
                        values.insert(
                            p.name.node.as_str().into(),
                            ArgValue {
                                value: v.clone(),
                                span: input_span,
                            },
                        );
                    }
                }
                v => {
                    return Err(self
                        .error(
                            "netc::arity",
                            format!("block `{name}` takes {n} tensors, found {} `{v}`", v.kind()),
                            input_span,
                            "input",
                        )
                        .label(def.name.span, "defined here")
                        .help("pass a list of tensors, e.g. `[a, b] -> Block()`"))
                }
            },
        }
        self.stack.push((name.clone(), site));
        let result = self.with_scope(label, |me| {
            me.bind_params(&mut env, &def.params, &values, Some(site), name)?;
            me.exec_body(&mut env, &def.body, false)
        });
        self.stack.pop();
        match result? {
            Some((v, _, _)) => Ok(v),
            None => Err(self
                .error(
                    "netc::no_return",
                    format!("block `{name}` returns nothing"),
                    def.body.span,
                    "no `return` reached",
                )
                .help("end the block with `return <tensor>`")),
        }
    }
}

fn base_has(base: &Layer, name: &str) -> bool {
    matches!(&base.kind, LayerKind::Op { args, .. } if args.contains_key(name))
}

fn is_tensor_type(t: &ast::TypeExpr) -> bool {
    match t {
        ast::TypeExpr::Named(n) => n.node == "tensor",
        ast::TypeExpr::List(inner, _) => is_tensor_type(inner),
        ast::TypeExpr::Tuple(..) => false,
    }
}

/// `conv(out, k, stride = 1, ...)`: an op's signature for hints.
pub(super) fn signature(spec: &OpSpec) -> String {
    let parts: Vec<String> = spec
        .args
        .iter()
        .map(|a| match a.default {
            builtins::ArgDefault::Required => a.name.to_string(),
            builtins::ArgDefault::Int(v) => format!("{} = {v}", a.name),
            builtins::ArgDefault::Float(v) => format!("{} = {v:?}", a.name),
            builtins::ArgDefault::Bool(v) => format!("{} = {v}", a.name),
            builtins::ArgDefault::Str(v) => format!("{} = \"{v}\"", a.name),
            builtins::ArgDefault::SameAs(o) => format!("{} = {o}", a.name),
        })
        .collect();
    format!("signature: {}({})", spec.name, parts.join(", "))
}
