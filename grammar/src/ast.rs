//! The abstract syntax tree of a `.net` file.
//!
//! Every node that can be blamed in a diagnostic carries a [`Span`]. The AST is
//! purely syntactic: names are not resolved and nothing is evaluated here; that
//! is elaboration's job (`netc-compiler`).

use crate::span::{Span, Spanned};

/// One parsed `.net` source file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// Top-level items in source order.
    pub items: Vec<Item>,
}

/// A top-level declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `import "path.net"`
    Import(Import),
    /// `let NAME = expr` at file level: a constant visible to every block.
    Const(ConstDef),
    /// `enum Name { a, b, c }`
    Enum(EnumDef),
    /// `block Name(params) { ... }`
    Block(BlockDef),
    /// `network Name(params) { ... }` or `network Name = Family(args)`
    Network(NetworkDef),
}

/// `import "path"`: the path is relative to the importing file.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The path as written.
    pub path: Spanned<String>,
    /// The whole item.
    pub span: Span,
}

/// A file-level constant.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstDef {
    /// The constant's name.
    pub name: Spanned<String>,
    /// Its value.
    pub value: Expr,
}

/// A user enum: a closed set of symbolic values, usable as a parameter type.
#[derive(Debug, Clone, PartialEq)]
pub struct EnumDef {
    /// The enum type's name.
    pub name: Spanned<String>,
    /// Its variants, in order.
    pub variants: Vec<Spanned<String>>,
}

/// A parametric sub-graph.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDef {
    /// The block's name.
    pub name: Spanned<String>,
    /// Declared parameters (the input tensors are parameters of type `tensor`).
    pub params: Vec<Param>,
    /// The statements of the body.
    pub body: Body,
    /// The whole definition.
    pub span: Span,
}

/// A network: the unit that `netc build` compiles.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkDef {
    /// The network's name.
    pub name: Spanned<String>,
    /// How it is defined.
    pub kind: NetworkKind,
    /// The whole definition.
    pub span: Span,
}

/// The two forms of a network definition.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkKind {
    /// A network with its own parameters and body (`input` statements declare its inputs).
    Defined {
        /// Parameters, overridable with `--set`.
        params: Vec<Param>,
        /// The body.
        body: Body,
    },
    /// `network resnet50 = ResNet(depth = 50)`: another network with some arguments fixed.
    Alias {
        /// The network instantiated.
        target: Spanned<String>,
        /// The arguments bound (positional or named).
        args: Vec<Arg>,
    },
}

/// A declared parameter `name: type = default`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Parameter name.
    pub name: Spanned<String>,
    /// Declared type.
    pub ty: TypeExpr,
    /// Default value, if any.
    pub default: Option<Expr>,
    /// The whole parameter.
    pub span: Span,
}

/// A type as written in a parameter list.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeExpr {
    /// A named type: `int`, `float`, `bool`, `str`, `tensor`, `layer`, `activation`, or an enum.
    Named(Spanned<String>),
    /// `[T]`: a list of any length.
    List(Box<TypeExpr>, Span),
    /// `(T, U, ...)`: a tuple of fixed length.
    Tuple(Vec<TypeExpr>, Span),
}

impl TypeExpr {
    /// The source span of the type.
    pub fn span(&self) -> Span {
        match self {
            TypeExpr::Named(n) => n.span,
            TypeExpr::List(_, s) | TypeExpr::Tuple(_, s) => *s,
        }
    }
}

/// A braced statement list.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// Statements in order.
    pub stmts: Vec<Stmt>,
    /// The braces and everything between.
    pub span: Span,
}

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `input name: [C, H, W]` (network bodies only): a graph input; batch is implicit.
    Input {
        /// Input name.
        name: Spanned<String>,
        /// Its shape without the batch dimension.
        shape: Expr,
        /// Whole statement.
        span: Span,
    },
    /// `param name: [dims]`: a learned tensor named `scope.name`.
    Param {
        /// Parameter name (the last component of its key).
        name: Spanned<String>,
        /// Its shape.
        shape: Expr,
        /// Whole statement.
        span: Span,
    },
    /// `let pat = expr` or `pat = expr`.
    Let {
        /// What is bound.
        pattern: Pattern,
        /// The value.
        value: Expr,
        /// Whole statement.
        span: Span,
    },
    /// `for pat in iter { ... }`.
    For {
        /// Loop variable pattern.
        pattern: Pattern,
        /// The list iterated over.
        iter: Expr,
        /// Loop body.
        body: Body,
        /// Whole statement.
        span: Span,
    },
    /// `if cond { ... } else { ... }` as a statement (bindings made in the taken
    /// branch are visible after it).
    If {
        /// The condition.
        cond: Expr,
        /// Statements when true.
        then: Body,
        /// Statements when false (an `else if` is a body holding one `If`).
        els: Option<Body>,
        /// Whole statement.
        span: Span,
    },
    /// `return expr`.
    Return {
        /// The value returned.
        value: Expr,
        /// Whole statement.
        span: Span,
    },
}

/// A binding pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// A single name.
    Ident(Spanned<String>),
    /// `(a, b, ...)`: destructures a list or tuple of the same length.
    Tuple(Vec<Pattern>, Span),
}

impl Pattern {
    /// The source span of the pattern.
    pub fn span(&self) -> Span {
        match self {
            Pattern::Ident(n) => n.span,
            Pattern::Tuple(_, s) => *s,
        }
    }
}

/// A name given to a layer: `conv1:`, `"denselayer{i + 1}":`, `0:`.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    /// A plain identifier.
    Ident(Spanned<String>),
    /// An integer.
    Int(Spanned<i64>),
    /// A (possibly interpolated) string.
    Str(StringLit),
}

impl Label {
    /// The source span of the label.
    pub fn span(&self) -> Span {
        match self {
            Label::Ident(n) => n.span,
            Label::Int(n) => n.span,
            Label::Str(s) => s.span,
        }
    }
}

/// An expression with an optional label, as found in lists, branches and pipeline stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Labeled {
    /// The name given, if any.
    pub label: Option<Label>,
    /// The expression.
    pub expr: Expr,
}

/// A string literal, possibly with `{expr}` interpolations.
#[derive(Debug, Clone, PartialEq)]
pub struct StringLit {
    /// Literal text and interpolated expressions, in order.
    pub parts: Vec<StrPart>,
    /// The whole literal, quotes included.
    pub span: Span,
}

/// A piece of a string literal.
#[derive(Debug, Clone, PartialEq)]
pub enum StrPart {
    /// Literal text (escapes already resolved).
    Text(String),
    /// `{expr}`.
    Interp(Expr),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (true division)
    Div,
    /// `%`
    Rem,
    /// `**`
    Pow,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `and`
    And,
    /// `or`
    Or,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "**",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `not x`
    Not,
}

/// A call argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// `Some(name)` for `name = value`.
    pub name: Option<Spanned<String>>,
    /// The value.
    pub value: Expr,
    /// The whole argument.
    pub span: Span,
}

/// An expression with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What kind of expression.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// String literal.
    Str(StringLit),
    /// A name.
    Ident(String),
    /// `[a, ..b, c]`
    List(Vec<ListElem>),
    /// `[e for p in xs if cond]`
    ListComp {
        /// The element produced.
        elem: Box<Labeled>,
        /// The loop pattern.
        pattern: Pattern,
        /// The list iterated.
        iter: Box<Expr>,
        /// Optional filter.
        cond: Option<Box<Expr>>,
    },
    /// `(a, b)`
    Tuple(Vec<Expr>),
    /// `lhs op rhs`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `op e`
    Unary(UnOp, Box<Expr>),
    /// `callee(args)`
    Call(Box<Expr>, Vec<Arg>),
    /// `base[index]`
    Index(Box<Expr>, Box<Expr>),
    /// `if c { a } else { b }` (else optional: then the value is `none`, dropped from lists).
    If(Box<Expr>, Box<Labeled>, Option<Box<Labeled>>),
    /// `input -> [label:] layer -> ...`
    Pipeline(Box<Expr>, Vec<Labeled>),
    /// `repeat n as i { layer }`
    Repeat(RepeatExpr),
    /// `dense n as i { layer }`
    Dense(RepeatExpr),
    /// `fork { a, b }`
    ForkList(Vec<ListElem>),
    /// `fork n as i { layer }`
    ForkN(RepeatExpr),
    /// `each as i { layer }`
    Each {
        /// Index variable.
        var: Option<Spanned<String>>,
        /// The layer applied to each element.
        body: Box<Labeled>,
    },
}

/// The shared shape of `repeat`, `dense` and `fork n`.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatExpr {
    /// How many.
    pub count: Box<Expr>,
    /// The index variable, if named.
    pub var: Option<Spanned<String>>,
    /// The layer built for each index.
    pub body: Box<Labeled>,
}

/// An element of a list literal.
#[derive(Debug, Clone, PartialEq)]
pub enum ListElem {
    /// A (possibly labelled) element.
    Item(Labeled),
    /// `..xs`: every element of another list.
    Spread(Expr),
}
