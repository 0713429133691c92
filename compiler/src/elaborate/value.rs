//! The values elaboration computes with: numbers, lists, tensors (IR nodes) and
//! layers (not-yet-applied ops and blocks), and the types that check them.

use super::builtins::OpSpec;
use netc_grammar::ast::Labeled;
use netc_grammar::Span;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// A value during elaboration.
#[derive(Clone)]
pub enum Value {
    /// The result of an `if` without `else` whose condition was false.
    None,
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(Rc<str>),
    /// A variant of a user enum: (enum, variant).
    Symbol(Rc<str>, Rc<str>),
    /// A list or tuple.
    List(Rc<Vec<Value>>),
    /// A tensor: the IR node producing it.
    Tensor(NodeIndex),
    /// A layer: something that can be applied to tensors.
    Layer(Rc<Layer>),
}

impl Value {
    /// The value's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "nothing",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::Symbol(..) => "enum value",
            Value::List(_) => "list",
            Value::Tensor(_) => "tensor",
            Value::Layer(_) => "layer",
        }
    }

    /// A list value.
    pub fn list(v: Vec<Value>) -> Value {
        Value::List(Rc::new(v))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("none"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v:?}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Symbol(_, v) => f.write_str(v),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if i >= 8 {
                        write!(f, "... ({} items)", items.len())?;
                        break;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Tensor(_) => f.write_str("<tensor>"),
            Value::Layer(l) => write!(f, "<layer {}>", l.describe()),
        }
    }
}

/// An evaluated argument with where it was written.
#[derive(Clone)]
pub struct ArgValue {
    /// The value.
    pub value: Value,
    /// The argument's span.
    pub span: Span,
}

/// Something that maps tensors to tensors when applied in a pipeline.
#[derive(Clone)]
pub struct Layer {
    /// What it is.
    pub kind: LayerKind,
    /// The name it was given where it was built (`conv1: conv(...)`), if any.
    pub label: Option<Rc<str>>,
    /// Where it was built.
    pub span: Span,
}

impl Layer {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            LayerKind::Op { spec, .. } => spec.name.to_string(),
            LayerKind::Block { name, .. } => name.to_string(),
            LayerKind::Seq(v) => format!("sequence of {}", v.len()),
            LayerKind::Dense(v) => format!("dense block of {}", v.len()),
            LayerKind::Fork(v) => format!("fork of {}", v.len()),
            LayerKind::Each(_) => "each".into(),
        }
    }

    /// The same layer with another label.
    pub fn with_label(&self, label: Option<Rc<str>>) -> Layer {
        Layer {
            kind: self.kind.clone(),
            label,
            span: self.span,
        }
    }
}

/// The kinds of layer.
#[derive(Clone)]
pub enum LayerKind {
    /// A built-in op with its arguments bound (input channels come from the input).
    Op {
        /// The op's specification.
        spec: &'static OpSpec,
        /// Arguments by parameter name, defaults not yet filled.
        args: HashMap<&'static str, ArgValue>,
    },
    /// A block with some parameters bound.
    Block {
        /// Block name.
        name: Rc<str>,
        /// Bound non-tensor arguments by parameter name.
        args: Vec<(Rc<str>, ArgValue)>,
    },
    /// Apply each in turn; children are named by their label or index.
    Seq(Vec<Rc<Layer>>),
    /// Dense connectivity: layer i sees concat(input, out_0, ..., out_{i-1});
    /// the result is the concat of the input and every output.
    Dense(Vec<Rc<Layer>>),
    /// The same input into every path; the result is the list of outputs.
    Fork(Vec<Rc<Layer>>),
    /// Apply a layer (built per index) to every tensor of a list.
    Each(Closure),
}

/// A deferred layer body with the bindings it saw.
#[derive(Clone)]
pub struct Closure {
    /// Variables visible where it was written.
    pub env: Rc<HashMap<Rc<str>, Value>>,
    /// The index variable.
    pub var: Option<Rc<str>>,
    /// The body.
    pub body: Rc<Labeled>,
}

/// Parameter types.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    /// Integer (accepts integral floats).
    Int,
    /// Float (accepts ints).
    Float,
    /// Boolean.
    Bool,
    /// String.
    Str,
    /// A tensor input.
    Tensor,
    /// Any layer.
    Layer,
    /// An activation op (`relu`, `silu`, ...).
    Activation,
    /// A user enum.
    Enum(Rc<str>),
    /// A list of any length.
    List(Box<Type>),
    /// A tuple of fixed length.
    Tuple(Vec<Type>),
    /// Anything.
    Any,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Int => f.write_str("int"),
            Type::Float => f.write_str("float"),
            Type::Bool => f.write_str("bool"),
            Type::Str => f.write_str("str"),
            Type::Tensor => f.write_str("tensor"),
            Type::Layer => f.write_str("layer"),
            Type::Activation => f.write_str("activation"),
            Type::Enum(n) => f.write_str(n),
            Type::List(t) => write!(f, "[{t}]"),
            Type::Tuple(ts) => {
                f.write_str("(")?;
                for (i, t) in ts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
            Type::Any => f.write_str("any"),
        }
    }
}

/// Checks `v` against `ty`, converting where the language allows (int → float,
/// integral float → int). `Err` carries the reason.
pub fn coerce(ty: &Type, v: &Value) -> Result<Value, String> {
    let mismatch = || format!("expected {ty}, found {} `{v}`", v.kind());
    match (ty, v) {
        (Type::Any, _) => Ok(v.clone()),
        (Type::Int, Value::Int(_)) => Ok(v.clone()),
        (Type::Int, Value::Float(f)) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Ok(Value::Int(*f as i64))
            } else {
                Err(format!(
                    "expected int, found non-integral float `{v}`; use floor(), ceil() or round()"
                ))
            }
        }
        (Type::Float, Value::Int(i)) => Ok(Value::Float(*i as f64)),
        (Type::Float, Value::Float(_)) => Ok(v.clone()),
        (Type::Bool, Value::Bool(_)) => Ok(v.clone()),
        (Type::Str, Value::Str(_)) => Ok(v.clone()),
        (Type::Tensor, Value::Tensor(_)) => Ok(v.clone()),
        (Type::Layer, Value::Layer(_)) => Ok(v.clone()),
        (Type::Layer, Value::List(items))
            if items.iter().all(|i| matches!(i, Value::Layer(_))) =>
        {
            Ok(v.clone())
        }
        (Type::Activation, Value::Layer(l)) => match &l.kind {
            LayerKind::Op { spec, .. } if spec.is_activation => Ok(v.clone()),
            _ => Err(format!(
                "expected an activation (relu, relu6, gelu, silu, sigmoid, hardswish, hardsigmoid, tanh, identity), found `{}`",
                l.describe()
            )),
        },
        (Type::Enum(e), Value::Symbol(se, _)) if e == se => Ok(v.clone()),
        (Type::List(t), Value::List(items)) => items
            .iter()
            .map(|i| coerce(t, i))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::list),
        (Type::Tuple(ts), Value::List(items)) => {
            if ts.len() != items.len() {
                return Err(format!(
                    "expected a {}-tuple {ty}, found {} elements `{v}`",
                    ts.len(),
                    items.len()
                ));
            }
            ts.iter()
                .zip(items.iter())
                .map(|(t, i)| coerce(t, i))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::list)
        }
        _ => Err(mismatch()),
    }
}
