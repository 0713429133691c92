//! Static checks before evaluation, so several mistakes are reported in one run:
//! unknown names (with suggestions), unknown argument names of ops and blocks,
//! unknown types, and recursive block definitions.

use super::builtins;
use super::program::{Def, Program};
use netc_grammar::ast::{self, Expr, ExprKind, Label, Labeled, ListElem, Pattern, Stmt, StrPart};
use netc_grammar::{did_you_mean, Diagnostic, Span};
use std::collections::{BTreeMap, HashMap, HashSet};

const TYPES: [&str; 8] = [
    "int",
    "float",
    "bool",
    "str",
    "tensor",
    "layer",
    "activation",
    "any",
];

struct Resolver<'a> {
    prog: &'a Program,
    errors: Vec<Diagnostic>,
    /// Block → (referenced block, span of the reference).
    refs: BTreeMap<String, Vec<(String, Span)>>,
    current_block: Option<String>,
}

/// Runs every static check; returns all problems found.
pub fn check(prog: &Program) -> Vec<Diagnostic> {
    let mut r = Resolver {
        prog,
        errors: Vec::new(),
        refs: BTreeMap::new(),
        current_block: None,
    };
    let mut defs: Vec<(&str, &Def)> = prog.defs.iter().map(|(k, v)| (&**k, v)).collect();
    // Deterministic order: by file, then position.
    defs.sort_by_key(|(_, d)| {
        let s = d.name_span();
        (s.file, s.start)
    });
    for (name, def) in defs {
        match def {
            Def::Const(c) => {
                let mut scope = HashSet::new();
                r.expr(&mut scope, &c.value);
            }
            Def::Enum(_) => {}
            Def::Block(b) => {
                r.current_block = Some(name.to_string());
                r.refs.entry(name.to_string()).or_default();
                let mut scope = HashSet::new();
                scope.insert("x".to_string());
                r.params(&mut scope, &b.params);
                r.body(&mut scope, &b.body);
                r.current_block = None;
            }
            Def::Network(n) => match &n.kind {
                ast::NetworkKind::Defined { params, body } => {
                    let mut scope = HashSet::new();
                    r.params(&mut scope, params);
                    r.body(&mut scope, body);
                }
                ast::NetworkKind::Alias { target, args } => {
                    match prog.defs.get(target.node.as_str()) {
                        Some(Def::Network(_)) => {}
                        Some(other) => r.errors.push(
                            Diagnostic::new(
                                "netc::not_a_network",
                                format!("`{}` is a {}, not a network", target.node, other.kind()),
                            )
                            .label(target.span, "expected a network"),
                        ),
                        None => r.unknown(&target.node, target.span, &HashSet::new()),
                    }
                    let mut scope = HashSet::new();
                    for a in args {
                        r.expr(&mut scope, &a.value);
                    }
                }
            },
        }
    }
    r.recursion();
    r.errors
}

impl Resolver<'_> {
    fn params(&mut self, scope: &mut HashSet<String>, params: &[ast::Param]) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in params {
            if let Some(prev) = seen.insert(&p.name.node, p.name.span) {
                self.errors.push(
                    Diagnostic::new(
                        "netc::duplicate_definition",
                        format!("parameter `{}` is declared twice", p.name.node),
                    )
                    .label(p.name.span, "again here")
                    .label(prev, "first here"),
                );
            }
            self.ty(&p.ty);
            if let Some(d) = &p.default {
                self.expr(scope, d);
            }
            scope.insert(p.name.node.clone());
        }
    }

    fn ty(&mut self, t: &ast::TypeExpr) {
        match t {
            ast::TypeExpr::Named(n) => {
                let ok = TYPES.contains(&n.node.as_str())
                    || matches!(self.prog.defs.get(n.node.as_str()), Some(Def::Enum(_)));
                if !ok {
                    let mut names: Vec<&str> = TYPES.to_vec();
                    names.extend(
                        self.prog
                            .defs
                            .iter()
                            .filter(|(_, d)| matches!(d, Def::Enum(_)))
                            .map(|(k, _)| &**k),
                    );
                    let d =
                        Diagnostic::new("netc::unknown_type", format!("unknown type `{}`", n.node))
                            .label(n.span, "not a type");
                    self.errors.push(match did_you_mean(&n.node, names.iter().copied()) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help("types are int, float, bool, str, tensor, layer, activation, any, [T], (T, U) and enums"),
                    });
                }
            }
            ast::TypeExpr::List(t, _) => self.ty(t),
            ast::TypeExpr::Tuple(ts, _) => ts.iter().for_each(|t| self.ty(t)),
        }
    }

    fn body(&mut self, scope: &mut HashSet<String>, body: &ast::Body) {
        for s in &body.stmts {
            match s {
                Stmt::Input { name, shape, .. } | Stmt::Param { name, shape, .. } => {
                    self.expr(scope, shape);
                    scope.insert(name.node.clone());
                }
                Stmt::Let { pattern, value, .. } => {
                    self.expr(scope, value);
                    bind(scope, pattern);
                }
                Stmt::For {
                    pattern,
                    iter,
                    body,
                    ..
                } => {
                    self.expr(scope, iter);
                    bind(scope, pattern);
                    self.body(scope, body);
                }
                Stmt::If {
                    cond, then, els, ..
                } => {
                    self.expr(scope, cond);
                    self.body(scope, then);
                    if let Some(e) = els {
                        self.body(scope, e);
                    }
                }
                Stmt::Return { value, .. } => self.expr(scope, value),
            }
        }
    }

    fn labeled(&mut self, scope: &mut HashSet<String>, l: &Labeled) {
        if let Some(Label::Str(s)) = &l.label {
            self.string(scope, s);
        }
        self.expr(scope, &l.expr);
    }

    fn string(&mut self, scope: &mut HashSet<String>, s: &ast::StringLit) {
        for p in &s.parts {
            if let StrPart::Interp(e) = p {
                self.expr(scope, e);
            }
        }
    }

    fn with_var(
        &mut self,
        scope: &mut HashSet<String>,
        var: Option<&str>,
        f: impl FnOnce(&mut Self, &mut HashSet<String>),
    ) {
        let mut inner = scope.clone();
        if let Some(v) = var {
            inner.insert(v.to_string());
        }
        f(self, &mut inner);
    }

    fn expr(&mut self, scope: &mut HashSet<String>, e: &Expr) {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) => {}
            ExprKind::Str(s) => self.string(scope, s),
            ExprKind::Ident(n) => self.ident(n, e.span, scope),
            ExprKind::List(elems) | ExprKind::ForkList(elems) => {
                for el in elems {
                    match el {
                        ListElem::Item(l) => self.labeled(scope, l),
                        ListElem::Spread(x) => self.expr(scope, x),
                    }
                }
            }
            ExprKind::ListComp {
                elem,
                pattern,
                iter,
                cond,
            } => {
                self.expr(scope, iter);
                let mut inner = scope.clone();
                bind(&mut inner, pattern);
                if let Some(c) = cond {
                    self.expr(&mut inner, c);
                }
                self.labeled(&mut inner, elem);
            }
            ExprKind::Tuple(items) => items.iter().for_each(|x| self.expr(scope, x)),
            ExprKind::Binary(_, a, b) => {
                self.expr(scope, a);
                self.expr(scope, b);
            }
            ExprKind::Unary(_, x) => self.expr(scope, x),
            ExprKind::Call(callee, args) => {
                self.expr(scope, callee);
                for a in args {
                    self.expr(scope, &a.value);
                }
                if let ExprKind::Ident(n) = &callee.kind {
                    if !scope.contains(n) {
                        self.check_named_args(n, args);
                    }
                }
            }
            ExprKind::Index(a, b) => {
                self.expr(scope, a);
                self.expr(scope, b);
            }
            ExprKind::If(c, t, f) => {
                self.expr(scope, c);
                self.labeled(scope, t);
                if let Some(f) = f {
                    self.labeled(scope, f);
                }
            }
            ExprKind::Pipeline(head, stages) => {
                self.expr(scope, head);
                for s in stages {
                    self.labeled(scope, s);
                }
            }
            ExprKind::Repeat(r) | ExprKind::Dense(r) | ExprKind::ForkN(r) => {
                self.expr(scope, &r.count);
                self.with_var(
                    scope,
                    r.var.as_ref().map(|v| v.node.as_str()),
                    |me, inner| me.labeled(inner, &r.body),
                );
            }
            ExprKind::Each { var, body } => {
                self.with_var(scope, var.as_ref().map(|v| v.node.as_str()), |me, inner| {
                    me.labeled(inner, body)
                });
            }
        }
    }

    fn ident(&mut self, n: &str, span: Span, scope: &HashSet<String>) {
        if scope.contains(n) {
            return;
        }
        if let Some(def) = self.prog.defs.get(n) {
            if let (Def::Block(_), Some(cur)) = (def, &self.current_block) {
                self.refs
                    .entry(cur.clone())
                    .or_default()
                    .push((n.to_string(), span));
            }
            return;
        }
        if builtins::op(n).is_some()
            || builtins::FUNCTIONS.iter().any(|f| f.0 == n)
            || self.prog.variants.contains_key(n)
        {
            return;
        }
        self.unknown(n, span, scope);
    }

    fn unknown(&mut self, n: &str, span: Span, scope: &HashSet<String>) {
        let mut cands: Vec<&str> = scope.iter().map(String::as_str).collect();
        cands.extend(self.prog.defs.keys().map(|k| &**k));
        cands.extend(builtins::OPS.iter().map(|o| o.name));
        cands.extend(builtins::FUNCTIONS.iter().map(|f| f.0));
        cands.extend(self.prog.variants.keys().map(|k| &**k));
        let d = Diagnostic::new("netc::unknown_name", format!("unknown name `{n}`"))
            .label(span, "not defined");
        self.errors.push(match did_you_mean(n, cands) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(
                "define it with `let`, as a parameter, a block, or import the file that defines it",
            ),
        });
    }

    fn check_named_args(&mut self, callee: &str, args: &[ast::Arg]) {
        let names: Vec<&str> = if let Some(Def::Block(b)) = self.prog.defs.get(callee) {
            b.params.iter().map(|p| p.name.node.as_str()).collect()
        } else if let Some(spec) = builtins::op(callee) {
            spec.args.iter().map(|a| a.name).collect()
        } else {
            return;
        };
        for a in args {
            if let Some(n) = &a.name {
                if !names.contains(&n.node.as_str()) {
                    let d = Diagnostic::new(
                        "netc::unknown_argument",
                        format!("`{callee}` has no parameter `{}`", n.node),
                    )
                    .label(n.span, "unknown parameter");
                    self.errors
                        .push(match did_you_mean(&n.node, names.iter().copied()) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None if names.is_empty() => {
                                d.help(format!("`{callee}` takes no parameters"))
                            }
                            None => d.help(format!("`{callee}` takes: {}", names.join(", "))),
                        });
                }
            }
        }
    }

    /// Reports each cycle in the block reference graph once.
    fn recursion(&mut self) {
        let mut state: HashMap<String, u8> = HashMap::new(); // 1 = on stack, 2 = done
        let names: Vec<String> = self.refs.keys().cloned().collect();
        for n in names {
            let mut path = Vec::new();
            self.dfs(&n, &mut state, &mut path);
        }
    }

    fn dfs(&mut self, n: &str, state: &mut HashMap<String, u8>, path: &mut Vec<(String, Span)>) {
        match state.get(n) {
            Some(2) => return,
            Some(1) => {
                let start = path.iter().position(|(b, _)| b == n).unwrap_or(0);
                let cycle: Vec<&str> = path[start..].iter().map(|(b, _)| b.as_str()).collect();
                let (_, span) = path.last().cloned().unwrap();
                let mut d = Diagnostic::new(
                    "netc::recursive_block",
                    format!("recursive block definition: {} -> {n}", cycle.join(" -> ")),
                )
                .label(
                    span,
                    format!("`{n}` is applied here, inside its own definition"),
                )
                .help("blocks cannot apply themselves; use `repeat` for repetition");
                if let Some(Def::Block(b)) = self.prog.defs.get(n) {
                    d = d.label(b.name.span, "defined here");
                }
                self.errors.push(d);
                return;
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        let edges = self.refs.get(n).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        for (callee, span) in edges {
            if !seen.insert(callee.clone()) {
                continue;
            }
            path.push((n.to_string(), span));
            self.dfs(&callee, state, path);
            path.pop();
        }
        state.insert(n.to_string(), 2);
    }
}

fn bind(scope: &mut HashSet<String>, p: &Pattern) {
    match p {
        Pattern::Ident(n) => {
            scope.insert(n.node.clone());
        }
        Pattern::Tuple(ps, _) => ps.iter().for_each(|p| bind(scope, p)),
    }
}
