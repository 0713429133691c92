//! Scalar and introspection functions: `min`, `ceil`, `make_divisible`,
//! `channels(x)`, `range`, ...

use super::eval::{Elab, R};
use super::limits;
use super::value::{ArgValue, Value};
use netc_grammar::Span;

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Python's `round`: nearest int, halves to even.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// An int argument; integral floats are accepted as everywhere else.
fn int_arg(me: &Elab<'_>, a: &ArgValue) -> R<i64> {
    match super::value::coerce(&super::value::Type::Int, &a.value) {
        Ok(Value::Int(i)) => Ok(i),
        _ => Err(me.error(
            "netc::type",
            format!("expected an int, found {} `{}`", a.value.kind(), a.value),
            a.span,
            "this argument",
        )),
    }
}

/// Calls a built-in function.
pub(super) fn call(me: &mut Elab<'_>, name: &str, args: &[ArgValue], span: Span) -> R<Value> {
    let arity = |me: &Elab<'_>, lo: usize, hi: usize| -> R<()> {
        if args.len() < lo || args.len() > hi {
            let want = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo} to {hi}")
            };
            return Err(me
                .error(
                    "netc::arity",
                    format!("`{name}` takes {want} argument(s), found {}", args.len()),
                    span,
                    "this call",
                )
                .help(
                    super::builtins::FUNCTIONS
                        .iter()
                        .find(|f| f.0 == name)
                        .map_or(String::new(), |f| format!("{name}: {}", f.1)),
                ));
        }
        Ok(())
    };
    let type_err = |me: &Elab<'_>, a: &ArgValue, want: &str| {
        me.error(
            "netc::type",
            format!(
                "`{name}` expects {want}, found {} `{}`",
                a.value.kind(),
                a.value
            ),
            a.span,
            "this argument",
        )
    };
    let number =
        |me: &Elab<'_>, a: &ArgValue| num(&a.value).ok_or_else(|| type_err(me, a, "a number"));
    let to_int = |me: &Elab<'_>, x: f64| -> R<Value> {
        if !x.is_finite() || x.abs() > 9.0e15 {
            return Err(me.error(
                "netc::overflow",
                format!("`{name}` result {x} is not a representable int"),
                span,
                "here",
            ));
        }
        Ok(Value::Int(x as i64))
    };
    let tensor_shape = |me: &Elab<'_>, a: &ArgValue| match &a.value {
        Value::Tensor(t) => Ok(me.graph.node(*t).shape.clone()),
        _ => Err(type_err(me, a, "a tensor")),
    };
    Ok(match name {
        "min" | "max" => {
            let items: Vec<ArgValue> = if args.len() == 1 {
                match &args[0].value {
                    Value::List(items) => items
                        .iter()
                        .map(|v| ArgValue {
                            value: v.clone(),
                            span: args[0].span,
                        })
                        .collect(),
                    _ => return Err(type_err(me, &args[0], "a list or several numbers")),
                }
            } else {
                args.to_vec()
            };
            if items.is_empty() {
                return Err(me.error("netc::arity", format!("`{name}` of nothing"), span, "empty"));
            }
            let mut best = items[0].clone();
            let mut bv = number(me, &best)?;
            for it in &items[1..] {
                let v = number(me, it)?;
                if (name == "min" && v < bv) || (name == "max" && v > bv) {
                    best = it.clone();
                    bv = v;
                }
            }
            best.value
        }
        "ceil" | "floor" | "round" | "int" => {
            arity(me, 1, 1)?;
            let x = number(me, &args[0])?;
            to_int(
                me,
                match name {
                    "ceil" => x.ceil(),
                    "floor" => x.floor(),
                    "round" => round_half_even(x),
                    _ => x.trunc(),
                },
            )?
        }
        "abs" => {
            arity(me, 1, 1)?;
            match &args[0].value {
                Value::Int(i) => {
                    Value::Int(i.checked_abs().ok_or_else(|| {
                        me.error("netc::overflow", "integer overflow", span, "here")
                    })?)
                }
                _ => Value::Float(number(me, &args[0])?.abs()),
            }
        }
        "float" => {
            arity(me, 1, 1)?;
            Value::Float(number(me, &args[0])?)
        }
        "sqrt" => {
            arity(me, 1, 1)?;
            let x = number(me, &args[0])?;
            if x < 0.0 {
                return Err(me.error(
                    "netc::domain",
                    "square root of a negative number",
                    args[0].span,
                    "negative",
                ));
            }
            Value::Float(x.sqrt())
        }
        "len" => {
            arity(me, 1, 1)?;
            match &args[0].value {
                Value::List(items) => Value::Int(items.len() as i64),
                Value::Str(s) => Value::Int(s.chars().count() as i64),
                _ => return Err(type_err(me, &args[0], "a list")),
            }
        }
        "range" => {
            arity(me, 1, 3)?;
            let mut ints = Vec::new();
            for a in args {
                ints.push(int_arg(me, a)?);
            }
            let (start, end, step) = match ints.as_slice() {
                [n] => (0, *n, 1),
                [a, b] => (*a, *b, 1),
                [a, b, s] => (*a, *b, *s),
                _ => unreachable!(),
            };
            if step == 0 {
                return Err(me.error(
                    "netc::bad_argument",
                    "range step is 0",
                    args[2].span,
                    "zero step",
                ));
            }
            let count = if step > 0 {
                (end.saturating_sub(start) as i128 + step as i128 - 1) / step as i128
            } else {
                (start.saturating_sub(end) as i128 + (-step) as i128 - 1) / (-step) as i128
            }
            .max(0);
            if count > limits::MAX_REPEAT as i128 {
                return Err(me
                    .error(
                        "netc::limit",
                        format!(
                            "range of {count} elements is over the limit of {}",
                            limits::MAX_REPEAT
                        ),
                        span,
                        "too long",
                    )
                    .help("repetition counts are limited"));
            }
            Value::list(
                (0..count as i64)
                    .map(|i| Value::Int(start + i * step))
                    .collect(),
            )
        }
        "enumerate" => {
            arity(me, 1, 1)?;
            match &args[0].value {
                Value::List(items) => Value::list(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Value::list(vec![Value::Int(i as i64), v.clone()]))
                        .collect(),
                ),
                _ => return Err(type_err(me, &args[0], "a list")),
            }
        }
        "zip" => {
            if args.is_empty() {
                return Err(me.error("netc::arity", "`zip` needs at least one list", span, "here"));
            }
            let mut lists = Vec::new();
            for a in args {
                match &a.value {
                    Value::List(items) => lists.push(items.clone()),
                    _ => return Err(type_err(me, a, "a list")),
                }
            }
            let n = lists.iter().map(|l| l.len()).min().unwrap_or(0);
            Value::list(
                (0..n)
                    .map(|i| Value::list(lists.iter().map(|l| l[i].clone()).collect()))
                    .collect(),
            )
        }
        "make_divisible" => {
            arity(me, 2, 3)?;
            let v = number(me, &args[0])?;
            let divisor = int_arg(me, &args[1])?;
            if divisor <= 0 {
                return Err(type_err(me, &args[1], "a positive int divisor"));
            }
            let min_value = match args.get(2) {
                Some(a) => int_arg(me, a)?,
                None => divisor,
            };
            if !v.is_finite() || v.abs() > 9.0e15 {
                return Err(type_err(me, &args[0], "a finite number"));
            }
            // torchvision's _make_divisible.
            let d = divisor as f64;
            let mut new_v =
                (min_value as f64).max(((v + d / 2.0) as i64 / divisor * divisor) as f64);
            if new_v < 0.9 * v {
                new_v += d;
            }
            Value::Int(new_v as i64)
        }
        "channels" => {
            arity(me, 1, 1)?;
            let s = tensor_shape(me, &args[0])?;
            match s.known(1) {
                Some(c) => Value::Int(c as i64),
                None => {
                    return Err(me.error(
                        "netc::type",
                        format!("a tensor of shape {s} has no channel axis"),
                        args[0].span,
                        "here",
                    ))
                }
            }
        }
        "dim" => {
            arity(me, 2, 2)?;
            let s = tensor_shape(me, &args[0])?;
            let axis = int_arg(me, &args[1])?;
            match s.axis(axis).and_then(|a| s.known(a)) {
                Some(d) => Value::Int(d as i64),
                None => {
                    return Err(me
                        .error(
                            "netc::bad_argument",
                            format!("axis {axis} of {s} has no static extent"),
                            args[1].span,
                            "here",
                        )
                        .help("axis 0 is the batch, whose size is only known at run time"))
                }
            }
        }
        "shape" => {
            arity(me, 1, 1)?;
            let s = tensor_shape(me, &args[0])?;
            Value::list(
                s.per_sample()
                    .into_iter()
                    .map(|d| Value::Int(d as i64))
                    .collect(),
            )
        }
        "str" => {
            arity(me, 1, 1)?;
            match &args[0].value {
                Value::Str(s) => Value::Str(s.clone()),
                v => Value::Str(v.to_string().into()),
            }
        }
        other => unreachable!("function table and implementation disagree on `{other}`"),
    })
}
