//! pest pairs → AST, and pest errors → diagnostics.

use crate::ast::*;
use crate::diagnostic::Diagnostic;
use crate::span::{FileId, Span, Spanned};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "net.pest"]
struct NetParser;

/// Deepest expression nesting accepted. pest recurses per nesting level (several
/// frames per level of parentheses), so unbounded nesting would overflow the stack.
pub const MAX_NESTING: usize = 64;

/// Parses one source file.
pub fn parse(file: FileId, text: &str) -> Result<File, Diagnostic> {
    check_nesting(file, text)?;
    let mut pairs = NetParser::parse(Rule::file, text).map_err(|e| syntax_error(file, text, e))?;
    let cx = Cx { file };
    let file_pair = pairs.next().expect("grammar: file");
    let mut items = Vec::new();
    for p in file_pair.into_inner() {
        match p.as_rule() {
            Rule::EOI => {}
            _ => items.push(cx.item(p)?),
        }
    }
    let file = File { items };
    check_depth(&file)?;
    Ok(file)
}

/// Parses a lone expression (a `--set` value).
pub fn parse_expr(file: FileId, text: &str) -> Result<Expr, Diagnostic> {
    check_nesting(file, text)?;
    let mut pairs =
        NetParser::parse(Rule::expr_only, text).map_err(|e| syntax_error(file, text, e))?;
    let cx = Cx { file };
    let p = pairs.next().expect("grammar: expr_only");
    let e = cx.expr(p.into_inner().next().expect("grammar: expr"))?;
    let probe = File {
        items: vec![Item::Const(ConstDef {
            name: crate::span::Spanned::new(String::new(), e.span),
            value: e,
        })],
    };
    check_depth(&probe)?;
    let Some(Item::Const(c)) = probe.items.into_iter().next() else {
        unreachable!()
    };
    Ok(c.value)
}

/// Most `**` operators or `if` keywords in one file: both nest in the grammar
/// without brackets, so they are bounded separately.
pub const MAX_RIGHT_NESTING_TOKENS: usize = 1000;

/// Deepest expression tree accepted (after parsing): evaluation recurses per level.
pub const MAX_EXPR_DEPTH: usize = 256;

/// Rejects bracket nesting deeper than [`MAX_NESTING`] before pest sees the text.
fn check_nesting(file: FileId, text: &str) -> Result<(), Diagnostic> {
    let mut pows = 0usize;
    let mut ifs = 0usize;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut in_comment = false;
    // Where the open block comment started (its `*/` must come after the `/*`).
    let mut block_comment_from: Option<usize> = None;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if in_comment {
            in_comment = b != b'\n';
            continue;
        }
        if let Some(from) = block_comment_from {
            if b == b'/' && i >= from + 3 && bytes[i - 1] == b'*' {
                block_comment_from = None;
            }
            continue;
        }
        if !in_string && b == b'/' && bytes.get(i + 1) == Some(&b'*') {
            block_comment_from = Some(i);
            continue;
        }
        match b {
            b'"' => in_string = !in_string,
            b'#' if !in_string => in_comment = true,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => in_comment = true,
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::new(
                        "netc::nesting_too_deep",
                        format!("brackets nested more than {MAX_NESTING} deep"),
                    )
                    .label(Span::new(file, i, i + 1), "too deep here")
                    .help("split the expression into `let` bindings or blocks"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'*' if !in_string && bytes.get(i + 1) == Some(&b'*') => pows += 1,
            b'i' if !in_string
                && bytes.get(i + 1) == Some(&b'f')
                && !bytes
                    .get(i + 2)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                ifs += 1
            }
            _ => {}
        }
        if pows > MAX_RIGHT_NESTING_TOKENS || ifs > MAX_RIGHT_NESTING_TOKENS {
            let what = if pows > MAX_RIGHT_NESTING_TOKENS {
                "`**` operators"
            } else {
                "`if` expressions"
            };
            return Err(Diagnostic::new(
                "netc::nesting_too_deep",
                format!("more than {MAX_RIGHT_NESTING_TOKENS} {what} in one file"),
            )
            .label(Span::new(file, i, i + 1), "one too many")
            .help("this limit keeps the parser's recursion bounded; split the file"));
        }
    }
    Ok(())
}

/// The depth of the deepest expression in the file, computed without recursion.
fn body_exprs<'a>(b: &'a Body, out: &mut Vec<&'a Expr>) {
    let mut bodies = vec![b];
    while let Some(b) = bodies.pop() {
        for s in &b.stmts {
            match s {
                Stmt::Input { shape, .. } | Stmt::Param { shape, .. } => out.push(shape),
                Stmt::Let { value, .. } | Stmt::Return { value, .. } => out.push(value),
                Stmt::For { iter, body, .. } => {
                    out.push(iter);
                    bodies.push(body);
                }
                Stmt::If {
                    cond, then, els, ..
                } => {
                    out.push(cond);
                    bodies.push(then);
                    if let Some(e) = els {
                        bodies.push(e);
                    }
                }
            }
        }
    }
}

fn check_depth(f: &File) -> Result<(), Diagnostic> {
    let mut stack: Vec<(&Expr, usize)> = Vec::new();
    let mut roots: Vec<&Expr> = Vec::new();
    for item in &f.items {
        match item {
            Item::Const(c) => roots.push(&c.value),
            Item::Block(b) => {
                b.params
                    .iter()
                    .filter_map(|p| p.default.as_ref())
                    .for_each(|e| roots.push(e));
                body_exprs(&b.body, &mut roots);
            }
            Item::Network(n) => match &n.kind {
                NetworkKind::Defined { params, body } => {
                    params
                        .iter()
                        .filter_map(|p| p.default.as_ref())
                        .for_each(|e| roots.push(e));
                    body_exprs(body, &mut roots);
                }
                NetworkKind::Alias { args, .. } => args.iter().for_each(|a| roots.push(&a.value)),
            },
            Item::Import(_) | Item::Enum(_) => {}
        }
    }
    stack.extend(roots.into_iter().map(|e| (e, 1)));
    while let Some((e, d)) = stack.pop() {
        if d > MAX_EXPR_DEPTH {
            return Err(Diagnostic::new(
                "netc::nesting_too_deep",
                format!("expression nested more than {MAX_EXPR_DEPTH} levels deep"),
            )
            .label(e.span, "too deep here")
            .help("split the expression into `let` bindings"));
        }
        let mut children = Vec::new();
        for_each_child(e, &mut |x| children.push((x, d + 1)));
        stack.extend(children);
    }
    Ok(())
}

/// Calls `f` on every direct sub-expression of `e` (string interpolations and labels included).
pub fn for_each_child<'a>(e: &'a Expr, f: &mut impl FnMut(&'a Expr)) {
    let labeled = |l: &'a Labeled, f: &mut dyn FnMut(&'a Expr)| {
        if let Some(Label::Str(s)) = &l.label {
            for p in &s.parts {
                if let StrPart::Interp(x) = p {
                    f(x);
                }
            }
        }
        f(&l.expr);
    };
    match &e.kind {
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Ident(_) => {}
        ExprKind::Str(s) => {
            for p in &s.parts {
                if let StrPart::Interp(x) = p {
                    f(x);
                }
            }
        }
        ExprKind::List(elems) | ExprKind::ForkList(elems) => {
            for el in elems {
                match el {
                    ListElem::Item(l) => labeled(l, f),
                    ListElem::Spread(x) => f(x),
                }
            }
        }
        ExprKind::ListComp {
            elem, iter, cond, ..
        } => {
            labeled(elem, f);
            f(iter);
            if let Some(c) = cond {
                f(c);
            }
        }
        ExprKind::Tuple(items) => items.iter().for_each(&mut *f),
        ExprKind::Binary(_, a, b) | ExprKind::Index(a, b) => {
            f(a);
            f(b);
        }
        ExprKind::Unary(_, x) => f(x),
        ExprKind::Call(c, args) => {
            f(c);
            args.iter().for_each(|a| f(&a.value));
        }
        ExprKind::If(c, t, e2) => {
            f(c);
            labeled(t, f);
            if let Some(e2) = e2 {
                labeled(e2, f);
            }
        }
        ExprKind::Pipeline(h, stages) => {
            f(h);
            stages.iter().for_each(|s| labeled(s, f));
        }
        ExprKind::Repeat(r) | ExprKind::Dense(r) | ExprKind::ForkN(r) => {
            f(&r.count);
            labeled(&r.body, f);
        }
        ExprKind::Each { body, .. } => labeled(body, f),
    }
}

fn syntax_error(file: FileId, text: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the offending token (or the end of the file) rather than an empty span.
    let end = if end > start {
        end
    } else {
        let rest = &text[start..];
        let tok = rest
            .char_indices()
            .find(|(_, c)| c.is_whitespace())
            .map_or(rest.len(), |(i, _)| i);
        // At least one whole character (which may be several bytes).
        let first = rest.chars().next().map_or(0, char::len_utf8);
        start + tok.max(first)
    };
    if start >= text.len() {
        // At the end of the file the list of what could follow is noise: say what is unclosed.
        let last = text.trim_end().len();
        let at = text[..last].char_indices().last().map_or(0, |(i, _)| i);
        return Diagnostic::new("netc::syntax", "syntax error: unexpected end of file")
            .label(Span::new(file, at, last.max(at)), "the file ends here")
            .help(hint_for(text, start).unwrap_or_else(|| "the last item is incomplete".into()));
    }
    let found = if start >= text.len() {
        "end of file".to_string()
    } else {
        format!("`{}`", &text[start..end.min(text.len())])
    };
    let (message, help) = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<&str> = positives.iter().filter_map(|r| describe(*r)).collect();
            expected.sort_unstable();
            expected.dedup();
            let list = match expected.len() {
                0 => "something else".to_string(),
                1 => expected[0].to_string(),
                n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
            };
            (
                format!("syntax error: expected {list}, found {found}"),
                hint_for(text, start),
            )
        }
        ErrorVariant::CustomError { message } => (message.clone(), None),
    };
    let mut d = Diagnostic::new("netc::syntax", message).label(
        Span::new(file, start, end.min(text.len())),
        "unexpected here",
    );
    if let Some(h) = help {
        d = d.help(h);
    }
    d
}

/// A hint for common slips, judged from the text around the error.
fn hint_for(text: &str, pos: usize) -> Option<String> {
    let before = text[..pos].trim_end();
    if before.ends_with('=') && !before.ends_with("==") {
        return Some("a value is missing after `=`".into());
    }
    if before.ends_with("->") {
        return Some("a layer is missing after `->`".into());
    }
    if before.ends_with(',') {
        return Some("remove the trailing `,` or add the missing element".into());
    }
    let opens = text[..pos].matches('(').count() as i64 - text[..pos].matches(')').count() as i64;
    if opens > 0 && pos >= text.len() {
        return Some("a `)` is missing".into());
    }
    let braces = text[..pos].matches('{').count() as i64 - text[..pos].matches('}').count() as i64;
    if braces > 0 && pos >= text.len() {
        return Some("a `}` is missing".into());
    }
    None
}

/// Human names for the rules pest reports as expected; `None` hides internal rules.
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::ident => "a name",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::string => "a string",
        Rule::expr | Rule::pipeline | Rule::or_expr | Rule::and_expr | Rule::not_expr => {
            "an expression"
        }
        Rule::cmp_expr
        | Rule::add_expr
        | Rule::mul_expr
        | Rule::unary
        | Rule::power
        | Rule::postfix => "an expression",
        Rule::labeled | Rule::list_elem | Rule::stage => "an expression",
        Rule::arrow
        | Rule::cmp_op
        | Rule::add_op
        | Rule::mul_op
        | Rule::call_args
        | Rule::index => "an operator",
        Rule::arg_list => "`(`",
        Rule::param_list => "a parameter list `(...)`",
        Rule::param => "a parameter",
        Rule::type_expr => "a type",
        Rule::body => "`{`",
        Rule::brace_expr => "`{`",
        Rule::import => "`import`",
        Rule::enum_def => "`enum`",
        Rule::block_def => "`block`",
        Rule::network_def => "`network`",
        Rule::const_def => "`let`",
        Rule::input_stmt => "`input`",
        Rule::param_stmt => "`param`",
        Rule::let_stmt => "`let`",
        Rule::assign_stmt => "an assignment",
        Rule::for_stmt => "`for`",
        Rule::if_stmt => "`if`",
        Rule::return_stmt => "`return`",
        Rule::pattern | Rule::tuple_pattern => "a name",
        Rule::network_alias => "`=`",
        Rule::label => "a label",
        Rule::kw_as => "`as`",
        Rule::kw_in => "`in`",
        Rule::kw_else => "`else`",
        Rule::kw_for => "`for`",
        Rule::kw_if => "`if`",
        Rule::kw_and | Rule::kw_or => "an operator",
        Rule::named_arg | Rule::arg => "an argument",
        _ => return None,
    })
}

struct Cx {
    file: FileId,
}

type Res<T> = Result<T, Diagnostic>;

impl Cx {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Spanned<String> {
        debug_assert_eq!(p.as_rule(), Rule::ident);
        Spanned::new(p.as_str().to_string(), self.span(&p))
    }

    fn item(&self, p: Pair<Rule>) -> Res<Item> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
        Ok(match rule {
            Rule::import => {
                let s = self.string(it.next().unwrap())?;
                let path = plain_string(&s).ok_or_else(|| {
                    Diagnostic::new("netc::syntax", "an import path cannot interpolate values")
                        .label(s.span, "interpolation here")
                })?;
                Item::Import(Import {
                    path: Spanned::new(path, s.span),
                    span,
                })
            }
            Rule::const_def => {
                let name = self.ident(it.next().unwrap());
                let value = self.expr(it.next().unwrap())?;
                Item::Const(ConstDef { name, value })
            }
            Rule::enum_def => {
                let name = self.ident(it.next().unwrap());
                let variants = it.map(|v| self.ident(v)).collect();
                Item::Enum(EnumDef { name, variants })
            }
            Rule::block_def => {
                let name = self.ident(it.next().unwrap());
                let params = self.params(it.next().unwrap())?;
                let body = self.body(it.next().unwrap())?;
                Item::Block(BlockDef {
                    name,
                    params,
                    body,
                    span,
                })
            }
            Rule::network_def => {
                let name = self.ident(it.next().unwrap());
                let next = it.next().unwrap();
                let kind = if next.as_rule() == Rule::network_alias {
                    let mut a = next.into_inner();
                    let target = self.ident(a.next().unwrap());
                    let args = self.args(a.next().unwrap())?;
                    NetworkKind::Alias { target, args }
                } else {
                    let params = self.params(next)?;
                    let body = self.body(it.next().unwrap())?;
                    NetworkKind::Defined { params, body }
                };
                Item::Network(NetworkDef { name, kind, span })
            }
            r => unreachable!("grammar: item {r:?}"),
        })
    }

    fn params(&self, p: Pair<Rule>) -> Res<Vec<Param>> {
        p.into_inner()
            .map(|q| {
                let span = self.span(&q);
                let mut it = q.into_inner();
                let name = self.ident(it.next().unwrap());
                let ty = self.type_expr(it.next().unwrap());
                let default = it.next().map(|e| self.expr(e)).transpose()?;
                Ok(Param {
                    name,
                    ty,
                    default,
                    span,
                })
            })
            .collect()
    }

    fn type_expr(&self, p: Pair<Rule>) -> TypeExpr {
        let inner = p.into_inner().next().unwrap();
        let span = self.span(&inner);
        match inner.as_rule() {
            Rule::ident => TypeExpr::Named(self.ident(inner)),
            Rule::list_type => TypeExpr::List(
                Box::new(self.type_expr(inner.into_inner().next().unwrap())),
                span,
            ),
            Rule::tuple_type => TypeExpr::Tuple(
                inner.into_inner().map(|t| self.type_expr(t)).collect(),
                span,
            ),
            r => unreachable!("grammar: type {r:?}"),
        }
    }

    fn body(&self, p: Pair<Rule>) -> Res<Body> {
        let span = self.span(&p);
        let stmts = p.into_inner().map(|s| self.stmt(s)).collect::<Res<_>>()?;
        Ok(Body { stmts, span })
    }

    fn stmt(&self, p: Pair<Rule>) -> Res<Stmt> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
        Ok(match rule {
            Rule::input_stmt => Stmt::Input {
                name: self.ident(it.next().unwrap()),
                shape: self.expr(it.next().unwrap())?,
                span,
            },
            Rule::param_stmt => Stmt::Param {
                name: self.ident(it.next().unwrap()),
                shape: self.expr(it.next().unwrap())?,
                span,
            },
            Rule::let_stmt | Rule::assign_stmt => Stmt::Let {
                pattern: self.pattern(it.next().unwrap()),
                value: self.expr(it.next().unwrap())?,
                span,
            },
            Rule::for_stmt => Stmt::For {
                pattern: self.pattern(it.next().unwrap()),
                iter: self.expr(it.next().unwrap())?,
                body: self.body(it.next().unwrap())?,
                span,
            },
            Rule::if_stmt => {
                let cond = self.expr(it.next().unwrap())?;
                let then = self.body(it.next().unwrap())?;
                let els = match it.next() {
                    None => None,
                    Some(q) if q.as_rule() == Rule::if_stmt => {
                        let inner_span = self.span(&q);
                        Some(Body {
                            stmts: vec![self.stmt(q)?],
                            span: inner_span,
                        })
                    }
                    Some(q) => Some(self.body(q)?),
                };
                Stmt::If {
                    cond,
                    then,
                    els,
                    span,
                }
            }
            Rule::return_stmt => Stmt::Return {
                value: self.expr(it.next().unwrap())?,
                span,
            },
            r => unreachable!("grammar: stmt {r:?}"),
        })
    }

    fn pattern(&self, p: Pair<Rule>) -> Pattern {
        let inner = p.into_inner().next().unwrap();
        match inner.as_rule() {
            Rule::ident => Pattern::Ident(self.ident(inner)),
            Rule::tuple_pattern => {
                let span = self.span(&inner);
                Pattern::Tuple(inner.into_inner().map(|q| self.pattern(q)).collect(), span)
            }
            r => unreachable!("grammar: pattern {r:?}"),
        }
    }

    fn expr(&self, p: Pair<Rule>) -> Res<Expr> {
        match p.as_rule() {
            Rule::expr => self.expr(p.into_inner().next().unwrap()),
            Rule::pipeline => {
                let span = self.span(&p);
                let mut it = p.into_inner();
                let head = self.expr(it.next().unwrap())?;
                let mut stages = Vec::new();
                for q in it {
                    if q.as_rule() == Rule::arrow {
                        continue;
                    }
                    stages.push(self.stage(q)?);
                }
                if stages.is_empty() {
                    return Ok(head);
                }
                Ok(Expr {
                    kind: ExprKind::Pipeline(Box::new(head), stages),
                    span,
                })
            }
            Rule::or_expr | Rule::and_expr => {
                let op = if p.as_rule() == Rule::or_expr {
                    BinOp::Or
                } else {
                    BinOp::And
                };
                let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
                let mut lhs = self.expr(it.next().unwrap())?;
                for q in it {
                    let rhs = self.expr(q)?;
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                        span,
                    };
                }
                Ok(lhs)
            }
            Rule::not_expr => {
                let span = self.span(&p);
                let mut nots = 0;
                let mut inner = None;
                for q in p.into_inner() {
                    if q.as_rule() == Rule::kw_not {
                        nots += 1;
                    } else {
                        inner = Some(self.expr(q)?);
                    }
                }
                let mut e = inner.unwrap();
                for _ in 0..nots {
                    e = Expr {
                        kind: ExprKind::Unary(UnOp::Not, Box::new(e)),
                        span,
                    };
                }
                Ok(e)
            }
            Rule::cmp_expr | Rule::add_expr | Rule::mul_expr => {
                let mut it = p.into_inner();
                let mut lhs = self.expr(it.next().unwrap())?;
                while let Some(op) = it.next() {
                    let rhs = self.expr(it.next().unwrap())?;
                    let op = match op.as_str() {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        "/" => BinOp::Div,
                        "%" => BinOp::Rem,
                        "==" => BinOp::Eq,
                        "!=" => BinOp::Ne,
                        "<" => BinOp::Lt,
                        "<=" => BinOp::Le,
                        ">" => BinOp::Gt,
                        ">=" => BinOp::Ge,
                        o => unreachable!("grammar: operator {o}"),
                    };
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                        span,
                    };
                }
                Ok(lhs)
            }
            Rule::unary => {
                let span = self.span(&p);
                let mut negs = 0;
                let mut inner = None;
                for q in p.into_inner() {
                    if q.as_rule() == Rule::neg {
                        negs += 1;
                    } else {
                        inner = Some(self.expr(q)?);
                    }
                }
                let mut e = inner.unwrap();
                for _ in 0..negs {
                    // Fold `-literal` so `-1` is an int literal, not an expression.
                    e = match e.kind {
                        ExprKind::Int(v) => Expr {
                            kind: ExprKind::Int(v.wrapping_neg()),
                            span,
                        },
                        ExprKind::Float(v) => Expr {
                            kind: ExprKind::Float(-v),
                            span,
                        },
                        kind => Expr {
                            kind: ExprKind::Unary(UnOp::Neg, Box::new(Expr { kind, span: e.span })),
                            span,
                        },
                    };
                }
                Ok(e)
            }
            Rule::power => {
                let mut it = p.into_inner();
                let base = self.expr(it.next().unwrap())?;
                match it.next() {
                    None => Ok(base),
                    Some(q) => {
                        let exp = self.expr(q)?;
                        let span = base.span.to(exp.span);
                        Ok(Expr {
                            kind: ExprKind::Binary(BinOp::Pow, Box::new(base), Box::new(exp)),
                            span,
                        })
                    }
                }
            }
            Rule::postfix => {
                let mut it = p.into_inner();
                let mut e = self.expr(it.next().unwrap())?;
                for q in it {
                    let qspan = self.span(&q);
                    let span = e.span.to(qspan);
                    e = match q.as_rule() {
                        Rule::call_args => Expr {
                            kind: ExprKind::Call(
                                Box::new(e),
                                self.args(q.into_inner().next().unwrap())?,
                            ),
                            span,
                        },
                        Rule::index => Expr {
                            kind: ExprKind::Index(
                                Box::new(e),
                                Box::new(self.expr(q.into_inner().next().unwrap())?),
                            ),
                            span,
                        },
                        r => unreachable!("grammar: postfix {r:?}"),
                    };
                }
                Ok(e)
            }
            _ => self.primary(p),
        }
    }

    fn stage(&self, p: Pair<Rule>) -> Res<Labeled> {
        let mut label = None;
        let mut expr = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::label => label = Some(self.label(q)?),
                _ => expr = Some(self.expr(q)?),
            }
        }
        Ok(Labeled {
            label,
            expr: expr.unwrap(),
        })
    }

    fn label(&self, p: Pair<Rule>) -> Res<Label> {
        let inner = p.into_inner().next().unwrap();
        Ok(match inner.as_rule() {
            Rule::ident | Rule::keyword => {
                Label::Ident(Spanned::new(inner.as_str().to_string(), self.span(&inner)))
            }
            Rule::int => {
                let span = self.span(&inner);
                Label::Int(Spanned::new(self.int_value(&inner)?, span))
            }
            Rule::string => Label::Str(self.string(inner)?),
            r => unreachable!("grammar: label {r:?}"),
        })
    }

    fn labeled(&self, p: Pair<Rule>) -> Res<Labeled> {
        debug_assert!(matches!(p.as_rule(), Rule::labeled | Rule::brace_expr));
        let p = if p.as_rule() == Rule::brace_expr {
            p.into_inner().next().unwrap()
        } else {
            p
        };
        self.stage(p)
    }

    fn int_value(&self, p: &Pair<Rule>) -> Res<i64> {
        p.as_str().replace('_', "").parse::<i64>().map_err(|_| {
            Diagnostic::new("netc::number_too_large", "integer literal out of range")
                .label(self.span(p), "does not fit in 64 bits")
                .help("integers must lie within ±9223372036854775807")
        })
    }

    fn args(&self, p: Pair<Rule>) -> Res<Vec<Arg>> {
        p.into_inner()
            .map(|a| {
                let span = self.span(&a);
                let inner = a.into_inner().next().unwrap();
                if inner.as_rule() == Rule::named_arg {
                    let mut it = inner.into_inner();
                    let name = self.ident(it.next().unwrap());
                    let value = self.expr(it.next().unwrap())?;
                    Ok(Arg {
                        name: Some(name),
                        value,
                        span,
                    })
                } else {
                    Ok(Arg {
                        name: None,
                        value: self.expr(inner)?,
                        span,
                    })
                }
            })
            .collect()
    }

    fn list_elem(&self, p: Pair<Rule>) -> Res<ListElem> {
        let inner = p.into_inner().next().unwrap();
        Ok(match inner.as_rule() {
            Rule::spread => ListElem::Spread(self.expr(inner.into_inner().next().unwrap())?),
            Rule::labeled => ListElem::Item(self.labeled(inner)?),
            r => unreachable!("grammar: list element {r:?}"),
        })
    }

    fn repeat(&self, p: Pair<Rule>) -> Res<RepeatExpr> {
        let mut count = None;
        let mut var = None;
        let mut body = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::kw_repeat | Rule::kw_dense | Rule::kw_fork | Rule::kw_as => {}
                Rule::ident => var = Some(self.ident(q)),
                Rule::brace_expr => body = Some(self.labeled(q)?),
                _ => count = Some(self.expr(q)?),
            }
        }
        Ok(RepeatExpr {
            count: Box::new(count.unwrap()),
            var,
            body: Box::new(body.unwrap()),
        })
    }

    fn string(&self, p: Pair<Rule>) -> Res<StringLit> {
        let span = self.span(&p);
        let mut parts = Vec::new();
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::str_text => push_text(&mut parts, q.as_str()),
                Rule::str_esc => {
                    let c = match &q.as_str()[1..] {
                        "n" => "\n",
                        "t" => "\t",
                        "{" => "{",
                        "}" => "}",
                        "\\" => "\\",
                        "\"" => "\"",
                        other => {
                            return Err(Diagnostic::new(
                                "netc::syntax",
                                format!("unknown escape `\\{other}`"),
                            )
                            .label(self.span(&q), "here")
                            .help("escapes are \\n, \\t, \\{, \\}, \\\\ and \\\""))
                        }
                    };
                    push_text(&mut parts, c);
                }
                Rule::interp => {
                    parts.push(StrPart::Interp(self.expr(q.into_inner().next().unwrap())?))
                }
                r => unreachable!("grammar: string {r:?}"),
            }
        }
        Ok(StringLit { parts, span })
    }

    fn primary(&self, p: Pair<Rule>) -> Res<Expr> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::int => ExprKind::Int(self.int_value(&p)?),
            Rule::float => ExprKind::Float(p.as_str().parse::<f64>().map_err(|_| {
                Diagnostic::new("netc::syntax", "malformed number").label(span, "here")
            })?),
            Rule::kw_true => ExprKind::Bool(true),
            Rule::kw_false => ExprKind::Bool(false),
            Rule::string => ExprKind::Str(self.string(p)?),
            Rule::ident => ExprKind::Ident(p.as_str().to_string()),
            Rule::if_expr => {
                let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
                let cond = self.expr(it.next().unwrap())?;
                let then = self.labeled(it.next().unwrap())?;
                let els = match it.next() {
                    None => None,
                    Some(q) if q.as_rule() == Rule::if_expr => Some(Labeled {
                        label: None,
                        expr: self.primary(q)?,
                    }),
                    Some(q) => Some(self.labeled(q)?),
                };
                ExprKind::If(Box::new(cond), Box::new(then), els.map(Box::new))
            }
            Rule::repeat_expr => ExprKind::Repeat(self.repeat(p)?),
            Rule::dense_expr => ExprKind::Dense(self.repeat(p)?),
            Rule::fork_expr => {
                let inner: Vec<_> = p
                    .into_inner()
                    .filter(|q| q.as_rule() != Rule::kw_fork)
                    .collect();
                if inner.len() == 1 && inner[0].as_rule() == Rule::fork_list {
                    let elems = inner
                        .into_iter()
                        .next()
                        .unwrap()
                        .into_inner()
                        .map(|q| self.list_elem(q))
                        .collect::<Res<_>>()?;
                    ExprKind::ForkList(elems)
                } else {
                    let mut count = None;
                    let mut var = None;
                    let mut body = None;
                    for q in inner {
                        match q.as_rule() {
                            Rule::kw_as => {}
                            Rule::ident => var = Some(self.ident(q)),
                            Rule::brace_expr => body = Some(self.labeled(q)?),
                            _ => count = Some(self.expr(q)?),
                        }
                    }
                    ExprKind::ForkN(RepeatExpr {
                        count: Box::new(count.unwrap()),
                        var,
                        body: Box::new(body.unwrap()),
                    })
                }
            }
            Rule::each_expr => {
                let mut var = None;
                let mut body = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::ident => var = Some(self.ident(q)),
                        Rule::brace_expr => body = Some(self.labeled(q)?),
                        _ => {}
                    }
                }
                ExprKind::Each {
                    var,
                    body: Box::new(body.unwrap()),
                }
            }
            Rule::list_comp => {
                let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
                let elem = self.labeled(it.next().unwrap())?;
                let pattern = self.pattern(it.next().unwrap());
                let iter = self.expr(it.next().unwrap())?;
                let cond = it.next().map(|q| self.expr(q)).transpose()?;
                ExprKind::ListComp {
                    elem: Box::new(elem),
                    pattern,
                    iter: Box::new(iter),
                    cond: cond.map(Box::new),
                }
            }
            Rule::list_lit => ExprKind::List(
                p.into_inner()
                    .map(|q| self.list_elem(q))
                    .collect::<Res<_>>()?,
            ),
            Rule::tuple_or_paren => {
                let text = p.as_str().trim_end_matches(')').trim_end();
                let trailing_comma = text.ends_with(',');
                let mut elems: Vec<Expr> =
                    p.into_inner().map(|q| self.expr(q)).collect::<Res<_>>()?;
                if elems.len() == 1 && !trailing_comma {
                    let mut e = elems.pop().unwrap();
                    e.span = span;
                    return Ok(e);
                }
                ExprKind::Tuple(elems)
            }
            r => unreachable!("grammar: primary {r:?}"),
        };
        Ok(Expr { kind, span })
    }
}

fn push_text(parts: &mut Vec<StrPart>, s: &str) {
    if let Some(StrPart::Text(t)) = parts.last_mut() {
        t.push_str(s);
    } else {
        parts.push(StrPart::Text(s.to_string()));
    }
}

/// The text of a string literal without interpolations.
pub fn plain_string(s: &StringLit) -> Option<String> {
    let mut out = String::new();
    for p in &s.parts {
        match p {
            StrPart::Text(t) => out.push_str(t),
            StrPart::Interp(_) => return None,
        }
    }
    Some(out)
}

fn is_keyword(r: Rule) -> bool {
    matches!(
        r,
        Rule::kw_import
            | Rule::kw_enum
            | Rule::kw_block
            | Rule::kw_network
            | Rule::kw_let
            | Rule::kw_for
            | Rule::kw_in
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_return
            | Rule::kw_input
            | Rule::kw_param
            | Rule::kw_repeat
            | Rule::kw_dense
            | Rule::kw_fork
            | Rule::kw_each
            | Rule::kw_as
            | Rule::kw_and
            | Rule::kw_or
            | Rule::kw_not
    )
}
