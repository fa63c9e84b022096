//! Variable type constraints (`string`, `list(number)`, `object({...})`, ...) and the conversion
//! of values to them, following HCL's type conversion rules.

use std::fmt;

use hcl::{Expression, Map, ObjectKey, Value};

/// A type constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Any,
    String,
    Number,
    Bool,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    Object(Vec<(String, Type)>),
    Tuple(Vec<Type>),
}

impl Type {
    /// Reads a type expression as written in a `variable` block.
    pub fn parse(expr: &Expression) -> Result<Type, String> {
        match expr {
            Expression::Variable(v) => match v.as_str() {
                "any" => Ok(Type::Any),
                "string" => Ok(Type::String),
                "number" => Ok(Type::Number),
                "bool" => Ok(Type::Bool),
                other => Err(format!("unknown type `{other}`")),
            },
            // The JSON form writes types as strings.
            Expression::String(s) => {
                let expr: Expression = s
                    .parse()
                    .map_err(|_| format!("invalid type expression `{s}`"))?;
                Type::parse(&expr)
            }
            Expression::FuncCall(call) => {
                let name = call.name.to_string();
                let [arg] = call.args.as_slice() else {
                    return Err(format!("`{name}(...)` takes exactly one argument"));
                };
                match name.as_str() {
                    "list" => Ok(Type::List(Box::new(Type::parse(arg)?))),
                    "set" => Ok(Type::Set(Box::new(Type::parse(arg)?))),
                    "map" => Ok(Type::Map(Box::new(Type::parse(arg)?))),
                    "object" => match arg {
                        Expression::Object(fields) => fields
                            .iter()
                            .map(|(k, v)| Ok((object_key(k)?, Type::parse(v)?)))
                            .collect::<Result<_, String>>()
                            .map(Type::Object),
                        _ => Err("`object(...)` takes an object of attribute types".into()),
                    },
                    "tuple" => match arg {
                        Expression::Array(items) => items
                            .iter()
                            .map(Type::parse)
                            .collect::<Result<_, _>>()
                            .map(Type::Tuple),
                        _ => Err("`tuple(...)` takes a list of element types".into()),
                    },
                    other => Err(format!("unknown type constructor `{other}`")),
                }
            }
            other => Err(format!("invalid type expression `{other}`")),
        }
    }

    /// Converts `value` to this type, as HCL does (numbers and bools become strings and back,
    /// lists become sets, objects become maps).
    pub fn convert(&self, value: Value) -> Result<Value, String> {
        match (self, value) {
            (Type::Any, v) => Ok(v),
            (_, Value::Null) => Ok(Value::Null),
            (Type::String, Value::String(s)) => Ok(Value::String(s)),
            (Type::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
            (Type::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
            (Type::Number, Value::Number(n)) => Ok(Value::Number(n)),
            (Type::Number, Value::String(s)) => parse_number(&s)
                .ok_or_else(|| format!("a number is required, got the string \"{s}\"")),
            (Type::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (Type::Bool, Value::String(s)) => match s.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("a bool is required, got the string \"{s}\"")),
            },
            (Type::List(elem), Value::Array(items)) => convert_all(elem, items),
            (Type::Set(elem), Value::Array(items)) => {
                let mut out: Vec<Value> = Vec::new();
                for v in convert_items(elem, items)? {
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                Ok(Value::Array(out))
            }
            (Type::Map(elem), Value::Object(map)) => {
                let mut out = Map::new();
                for (k, v) in map {
                    let v = elem
                        .convert(v)
                        .map_err(|e| format!("element \"{k}\": {e}"))?;
                    out.insert(k, v);
                }
                Ok(Value::Object(out))
            }
            (Type::Object(fields), Value::Object(mut map)) => {
                let mut out = Map::new();
                for (name, ty) in fields {
                    let v = map
                        .swap_remove(name)
                        .ok_or_else(|| format!("attribute \"{name}\" is required"))?;
                    let v = ty
                        .convert(v)
                        .map_err(|e| format!("attribute \"{name}\": {e}"))?;
                    out.insert(name.clone(), v);
                }
                if let Some(extra) = map.keys().next() {
                    return Err(format!("unexpected attribute \"{extra}\""));
                }
                Ok(Value::Object(out))
            }
            (Type::Tuple(types), Value::Array(items)) => {
                if types.len() != items.len() {
                    return Err(format!(
                        "a tuple of {} elements is required, got {}",
                        types.len(),
                        items.len()
                    ));
                }
                types
                    .iter()
                    .zip(items)
                    .enumerate()
                    .map(|(i, (t, v))| t.convert(v).map_err(|e| format!("element {i}: {e}")))
                    .collect::<Result<_, _>>()
                    .map(Value::Array)
            }
            (ty, v) => Err(format!(
                "{} is required, got {}",
                ty.article(),
                describe(&v)
            )),
        }
    }

    fn article(&self) -> String {
        match self {
            Type::Any => "any value".into(),
            Type::String => "a string".into(),
            Type::Number => "a number".into(),
            Type::Bool => "a bool".into(),
            Type::Object(_) => "an object".into(),
            other => format!("a {other}"),
        }
    }
}

fn convert_items(elem: &Type, items: Vec<Value>) -> Result<Vec<Value>, String> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| elem.convert(v).map_err(|e| format!("element {i}: {e}")))
        .collect()
}

fn convert_all(elem: &Type, items: Vec<Value>) -> Result<Value, String> {
    convert_items(elem, items).map(Value::Array)
}

fn parse_number(s: &str) -> Option<Value> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::from)
}

fn object_key(key: &ObjectKey) -> Result<String, String> {
    match key {
        ObjectKey::Identifier(id) => Ok(id.to_string()),
        ObjectKey::Expression(Expression::String(s)) => Ok(s.clone()),
        other => Err(format!("invalid attribute name `{other:?}`")),
    }
}

/// A short description of a value's type for error messages.
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Any => f.write_str("any"),
            Type::String => f.write_str("string"),
            Type::Number => f.write_str("number"),
            Type::Bool => f.write_str("bool"),
            Type::List(t) => write!(f, "list({t})"),
            Type::Set(t) => write!(f, "set({t})"),
            Type::Map(t) => write!(f, "map({t})"),
            Type::Object(fields) => {
                f.write_str("object({")?;
                for (i, (k, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} = {t}")?;
                }
                f.write_str("})")
            }
            Type::Tuple(types) => {
                f.write_str("tuple([")?;
                for (i, t) in types.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str("])")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> Type {
        Type::parse(&s.parse::<Expression>().unwrap()).unwrap()
    }

    #[test]
    fn parses_and_displays_types() {
        for s in [
            "string",
            "list(number)",
            "map(bool)",
            "set(string)",
            "object({a = string, b = list(number)})",
            "tuple([string, number])",
        ] {
            assert_eq!(ty(s).to_string(), s);
        }
        assert!(Type::parse(&"strnig".parse::<Expression>().unwrap()).is_err());
    }

    #[test]
    fn converts_like_hcl() {
        assert_eq!(ty("number").convert(Value::from("42")), Ok(Value::from(42)));
        assert_eq!(ty("string").convert(Value::from(1)), Ok(Value::from("1")));
        assert_eq!(
            ty("bool").convert(Value::from("true")),
            Ok(Value::Bool(true))
        );
        assert!(ty("number").convert(Value::from("abc")).is_err());
        assert!(ty("list(string)").convert(Value::from("x")).is_err());
        let set = ty("set(string)")
            .convert(Value::Array(vec!["a".into(), "a".into(), "b".into()]))
            .unwrap();
        assert_eq!(set, Value::Array(vec!["a".into(), "b".into()]));
        let obj: Value = hcl::value!({ a = "x" });
        let err = ty("object({a = string, b = number})")
            .convert(obj)
            .unwrap_err();
        assert_eq!(err, "attribute \"b\" is required");
    }
}
