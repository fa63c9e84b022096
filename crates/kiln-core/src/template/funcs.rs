//! The functions templates can call (`timestamp()`, `file(path)`, `join(sep, list)`, ...), with
//! Packer's names and behaviour.

use std::cell::RefCell;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::{Map, Value};
use sha2::Digest as _;

thread_local! {
    /// The environment `env()` reads; set only while variable defaults are evaluated.
    static ENV: RefCell<Option<Vec<(String, String)>>> = const { RefCell::new(None) };
}

/// Makes `env()` usable (reading `env`) while `f` runs: Packer allows it in variable defaults only.
pub fn with_env<T>(env: &[(String, String)], f: impl FnOnce() -> T) -> T {
    ENV.with(|cell| *cell.borrow_mut() = Some(env.to_vec()));
    let out = f();
    ENV.with(|cell| *cell.borrow_mut() = None);
    out
}

type Result<T> = std::result::Result<T, String>;

/// The names of all functions, for "did you mean" hints.
pub const NAMES: &[&str] = &[
    "abspath",
    "base64decode",
    "base64encode",
    "basename",
    "chomp",
    "coalesce",
    "concat",
    "contains",
    "dirname",
    "distinct",
    "element",
    "endswith",
    "env",
    "file",
    "flatten",
    "format",
    "formatdate",
    "join",
    "jsondecode",
    "jsonencode",
    "keys",
    "length",
    "lookup",
    "lower",
    "max",
    "md5",
    "merge",
    "min",
    "pathexpand",
    "regex",
    "regex_replace",
    "regexall",
    "replace",
    "reverse",
    "sha256",
    "sha512",
    "split",
    "startswith",
    "substr",
    "timestamp",
    "title",
    "trimprefix",
    "trimspace",
    "trimsuffix",
    "upper",
    "uuidv4",
    "values",
];

/// Every function with its definition.
fn defs() -> Vec<(&'static str, FuncDef)> {
    use ParamType::Any;
    let fixed = |n: usize, f: hcl::eval::Func| FuncDef::new(f, vec![Any; n]);
    let variadic = |n: usize, f: hcl::eval::Func| {
        FuncDef::builder()
            .params(vec![Any; n])
            .variadic_param(Any)
            .build(f)
    };
    vec![
        ("abspath", fixed(1, abspath)),
        ("base64decode", fixed(1, base64decode)),
        ("base64encode", fixed(1, base64encode)),
        ("basename", fixed(1, basename)),
        ("chomp", fixed(1, chomp)),
        ("coalesce", variadic(0, coalesce)),
        ("concat", variadic(0, concat)),
        ("contains", fixed(2, contains)),
        ("dirname", fixed(1, dirname)),
        ("distinct", fixed(1, distinct)),
        ("element", fixed(2, element)),
        ("endswith", fixed(2, endswith)),
        ("env", fixed(1, env)),
        ("file", fixed(1, file)),
        ("flatten", fixed(1, flatten)),
        ("format", variadic(1, format)),
        ("formatdate", fixed(2, formatdate)),
        ("join", fixed(2, join)),
        ("jsondecode", fixed(1, jsondecode)),
        ("jsonencode", fixed(1, jsonencode)),
        ("keys", fixed(1, keys)),
        ("length", fixed(1, length)),
        ("lookup", variadic(2, lookup)),
        ("lower", fixed(1, lower)),
        ("max", variadic(0, max)),
        ("md5", fixed(1, md5)),
        ("merge", variadic(0, merge)),
        ("min", variadic(0, min)),
        ("pathexpand", fixed(1, pathexpand)),
        ("regex", fixed(2, regex)),
        ("regex_replace", fixed(3, regex_replace)),
        ("regexall", fixed(2, regexall)),
        ("replace", fixed(3, replace)),
        ("reverse", fixed(1, reverse)),
        ("sha256", fixed(1, sha256)),
        ("sha512", fixed(1, sha512)),
        ("split", fixed(2, split)),
        ("startswith", fixed(2, startswith)),
        ("substr", fixed(3, substr)),
        ("timestamp", fixed(0, timestamp)),
        ("trimprefix", fixed(2, trimprefix)),
        ("trimspace", fixed(1, trimspace)),
        ("trimsuffix", fixed(2, trimsuffix)),
        ("upper", fixed(1, upper)),
        ("uuidv4", fixed(0, uuidv4)),
        ("values", fixed(1, values)),
        ("title", fixed(1, title)),
    ]
}

/// Declares every function in `ctx`.
pub fn declare(ctx: &mut Context) {
    for (name, def) in defs() {
        ctx.declare_func(name, def);
    }
}

fn string(v: &Value, what: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "{what} must be a string, got {}",
            super::types::describe(other)
        )),
    }
}

fn arg(args: &FuncArgs, i: usize) -> Result<String> {
    string(&args[i], &format!("argument {}", i + 1))
}

fn list<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| format!("{what} must be a list, got {}", super::types::describe(v)))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        format!(
            "{what} must be a map or object, got {}",
            super::types::describe(v)
        )
    })
}

fn integer(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{what} must be a whole number, got `{v}`"))
}

fn number(v: &Value, what: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{what} must be a number, got `{v}`"))
}

fn s(v: impl Into<String>) -> Result<Value> {
    Ok(Value::String(v.into()))
}

fn timestamp(_: FuncArgs) -> Result<Value> {
    s(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// `formatdate(spec, timestamp)` with Terraform's format letters (`YYYY-MM-DD hh:mm:ss`).
fn formatdate(args: FuncArgs) -> Result<Value> {
    let spec = arg(&args, 0)?;
    let ts = arg(&args, 1)?;
    let t = chrono::DateTime::parse_from_rfc3339(&ts)
        .map_err(|e| format!("`{ts}` is not an RFC 3339 timestamp: {e}"))?;
    let chars: Vec<char> = spec.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let close = chars[i + 1..]
                .iter()
                .position(|&ch| ch == '\'')
                .ok_or("unterminated literal in format")?;
            let literal: String = chars[i + 1..i + 1 + close].iter().collect();
            out.push_str(if literal.is_empty() { "'" } else { &literal });
            i += close + 2;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = chars[i..].iter().take_while(|&&ch| ch == c).count();
        let piece = match (c, n) {
            ('Y', 4) => "%Y",
            ('Y', 2) => "%y",
            ('M', 4) => "%B",
            ('M', 3) => "%b",
            ('M', 2) => "%m",
            ('M', 1) => "%-m",
            ('D', 2) => "%d",
            ('D', 1) => "%-d",
            ('E', 4) => "%A",
            ('E', 3) => "%a",
            ('h', 2) => "%H",
            ('h', 1) => "%-H",
            ('H', 2) => "%I",
            ('H', 1) => "%-I",
            ('m', 2) => "%M",
            ('m', 1) => "%-M",
            ('s', 2) => "%S",
            ('s', 1) => "%-S",
            ('A', 2) => "%p",
            ('a', 2) => "%P",
            ('Z', 5) => "%:z",
            ('Z', 4) => "%z",
            ('Z', 3) => "%Z",
            ('Z', 1) => "%:z",
            _ => {
                return Err(format!(
                    "invalid date format verb `{}`",
                    c.to_string().repeat(n)
                ))
            }
        };
        let formatted = t.format(piece).to_string();
        if (c, n) == ('Z', 1) && formatted == "+00:00" {
            out.push('Z');
        } else {
            out.push_str(&formatted);
        }
        i += n;
    }
    s(out)
}

fn uuidv4(_: FuncArgs) -> Result<Value> {
    s(uuid::Uuid::new_v4().to_string())
}

fn env(args: FuncArgs) -> Result<Value> {
    let name = arg(&args, 0)?;
    ENV.with(|cell| match &*cell.borrow() {
        Some(env) => s(env
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()),
        None => Err("`env` can only be used in variable defaults".to_string()),
    })
}

fn file(args: FuncArgs) -> Result<Value> {
    let path = arg(&args, 0)?;
    std::fs::read_to_string(&path)
        .map(Value::String)
        .map_err(|e| format!("cannot read `{path}`: {e}"))
}

/// Makes `path` absolute against the working directory and removes `.` and `..` lexically.
fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn abspath(args: FuncArgs) -> Result<Value> {
    s(absolute(Path::new(&arg(&args, 0)?)).display().to_string())
}

fn basename(args: FuncArgs) -> Result<Value> {
    let p = arg(&args, 0)?;
    s(Path::new(&p)
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned()))
}

fn dirname(args: FuncArgs) -> Result<Value> {
    let p = arg(&args, 0)?;
    let dir = Path::new(&p)
        .parent()
        .map_or(String::new(), |d| d.display().to_string());
    s(if dir.is_empty() { ".".to_string() } else { dir })
}

fn pathexpand(args: FuncArgs) -> Result<Value> {
    let p = arg(&args, 0)?;
    match (p.strip_prefix('~'), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if rest.is_empty() || rest.starts_with('/') => s(home + rest),
        _ => s(p),
    }
}

fn lower(args: FuncArgs) -> Result<Value> {
    s(arg(&args, 0)?.to_lowercase())
}

fn upper(args: FuncArgs) -> Result<Value> {
    s(arg(&args, 0)?.to_uppercase())
}

fn title(args: FuncArgs) -> Result<Value> {
    let text = arg(&args, 0)?;
    let mut out = String::new();
    let mut start = true;
    for c in text.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    s(out)
}

/// `replace(string, substring, replacement)`; a substring in slashes (`/a+/`) is a regex.
fn replace(args: FuncArgs) -> Result<Value> {
    let text = arg(&args, 0)?;
    let search = arg(&args, 1)?;
    let with = arg(&args, 2)?;
    match search
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix('/'))
        .filter(|r| !r.is_empty())
    {
        Some(pattern) => regex_replace_str(&text, pattern, &with),
        None => s(text.replace(&search, &with)),
    }
}

fn regex_replace_str(text: &str, pattern: &str, with: &str) -> Result<Value> {
    let re = compile(pattern)?;
    s(re.replace_all(text, with).into_owned())
}

fn regex_replace(args: FuncArgs) -> Result<Value> {
    regex_replace_str(&arg(&args, 0)?, &arg(&args, 1)?, &arg(&args, 2)?)
}

/// A match as Terraform's `regex` returns it: the matched text without capture groups, a map
/// with named groups, a list with unnamed ones.
fn captures(re: &regex::Regex, caps: &regex::Captures) -> Value {
    let text = |m: Option<regex::Match>| m.map_or(Value::Null, |m| Value::from(m.as_str()));
    if re.captures_len() == 1 {
        return text(caps.get(0));
    }
    if re.capture_names().flatten().next().is_some() {
        let map = re
            .capture_names()
            .flatten()
            .map(|name| (name.to_string(), text(caps.name(name))))
            .collect();
        return Value::Object(map);
    }
    Value::Array((1..re.captures_len()).map(|i| text(caps.get(i))).collect())
}

fn compile(pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(pattern).map_err(|e| format!("invalid regular expression: {e}"))
}

/// `regex(pattern, string)`: the first match; an error when there is none.
fn regex(args: FuncArgs) -> Result<Value> {
    let re = compile(&arg(&args, 0)?)?;
    let text = arg(&args, 1)?;
    re.captures(&text)
        .map(|caps| captures(&re, &caps))
        .ok_or_else(|| "the pattern does not match".to_string())
}

/// `regexall(pattern, string)`: every match, as a list.
fn regexall(args: FuncArgs) -> Result<Value> {
    let re = compile(&arg(&args, 0)?)?;
    let text = arg(&args, 1)?;
    Ok(Value::Array(
        re.captures_iter(&text).map(|c| captures(&re, &c)).collect(),
    ))
}

fn split(args: FuncArgs) -> Result<Value> {
    let sep = arg(&args, 0)?;
    let text = arg(&args, 1)?;
    if sep.is_empty() {
        return Err("the separator must not be empty".into());
    }
    Ok(Value::Array(
        text.split(sep.as_str()).map(Value::from).collect(),
    ))
}

fn join(args: FuncArgs) -> Result<Value> {
    let sep = arg(&args, 0)?;
    let items = list(&args[1], "argument 2")?
        .iter()
        .map(|v| string(v, "every element"))
        .collect::<Result<Vec<_>>>()?;
    s(items.join(&sep))
}

fn concat(args: FuncArgs) -> Result<Value> {
    let mut out = Vec::new();
    for (i, v) in args.iter().enumerate() {
        out.extend(list(v, &format!("argument {}", i + 1))?.iter().cloned());
    }
    Ok(Value::Array(out))
}

fn merge(args: FuncArgs) -> Result<Value> {
    let mut out = Map::new();
    for (i, v) in args.iter().enumerate() {
        if v.is_null() {
            continue;
        }
        for (k, v) in object(v, &format!("argument {}", i + 1))? {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

fn lookup(args: FuncArgs) -> Result<Value> {
    if args.len() > 3 {
        return Err(format!("expected 2 or 3 arguments, got {}", args.len()));
    }
    let map = object(&args[0], "argument 1")?;
    let key = arg(&args, 1)?;
    match (map.get(&key), args.get(2)) {
        (Some(v), _) => Ok(v.clone()),
        (None, Some(default)) => Ok(default.clone()),
        (None, None) => Err(format!("no key `{key}` in the map and no default given")),
    }
}

fn length(args: FuncArgs) -> Result<Value> {
    let n = match &args[0] {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        Value::String(s) => s.chars().count(),
        other => {
            return Err(format!(
                "argument must be a list, map or string, got {}",
                super::types::describe(other)
            ))
        }
    };
    Ok(Value::from(n))
}

fn contains(args: FuncArgs) -> Result<Value> {
    Ok(Value::Bool(
        list(&args[0], "argument 1")?.contains(&args[1]),
    ))
}

fn coalesce(args: FuncArgs) -> Result<Value> {
    args.iter()
        .find(|v| !v.is_null() && v.as_str() != Some(""))
        .cloned()
        .ok_or_else(|| "no non-null, non-empty argument".to_string())
}

/// `format(spec, args...)` with `%s`, `%d`, `%f`, `%v`, `%q`, `%t` and `%%`, and Go's flags
/// `-` (left-justify), `0` (zero-pad), `+` (sign), a width and a precision (`%-8s`, `%03d`, `%.2f`).
fn format(args: FuncArgs) -> Result<Value> {
    let spec = arg(&args, 0)?;
    let mut values = args.iter().skip(1);
    let mut out = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                _ => break,
            }
            chars.next();
        }
        let digits = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            n.parse::<usize>().ok()
        };
        let width = digits(&mut chars);
        let precision = match chars.peek() {
            Some('.') => {
                chars.next();
                Some(digits(&mut chars).unwrap_or(0))
            }
            _ => None,
        };
        let verb = chars.next().ok_or("the format ends with a lone `%`")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let v = values
            .next()
            .ok_or_else(|| format!("not enough arguments for `%{verb}`"))?;
        let sign = |n: String| {
            if plus && !n.starts_with('-') {
                format!("+{n}")
            } else {
                n
            }
        };
        let text = match verb {
            's' | 'v' | 't' => {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match precision {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            'd' => sign(integer(v, "a `%d` argument")?.to_string()),
            'f' => sign(format!(
                "{:.*}",
                precision.unwrap_or(6),
                number(v, "a `%f` argument")?
            )),
            'q' => serde_json::to_string(&string(v, "a `%q` argument")?).unwrap_or_default(),
            other => return Err(format!("unsupported format verb `%{other}`")),
        };
        let pad = width.unwrap_or(0).saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else if zero && matches!(verb, 'd' | 'f') {
            let (sign, digits) = match text.strip_prefix(['-', '+']) {
                Some(rest) => (&text[..1], rest),
                None => ("", text.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    if values.next().is_some() {
        return Err("too many arguments for the format".into());
    }
    s(out)
}

fn trimspace(args: FuncArgs) -> Result<Value> {
    s(arg(&args, 0)?.trim())
}

fn chomp(args: FuncArgs) -> Result<Value> {
    s(arg(&args, 0)?.trim_end_matches(['\n', '\r']))
}

fn trimprefix(args: FuncArgs) -> Result<Value> {
    let text = arg(&args, 0)?;
    let prefix = arg(&args, 1)?;
    s(text.strip_prefix(prefix.as_str()).unwrap_or(&text))
}

fn trimsuffix(args: FuncArgs) -> Result<Value> {
    let text = arg(&args, 0)?;
    let suffix = arg(&args, 1)?;
    s(text.strip_suffix(suffix.as_str()).unwrap_or(&text))
}

fn startswith(args: FuncArgs) -> Result<Value> {
    Ok(Value::Bool(arg(&args, 0)?.starts_with(&arg(&args, 1)?)))
}

fn endswith(args: FuncArgs) -> Result<Value> {
    Ok(Value::Bool(arg(&args, 0)?.ends_with(&arg(&args, 1)?)))
}

/// `substr(string, offset, length)`; a negative offset counts from the end, length -1 means all.
fn substr(args: FuncArgs) -> Result<Value> {
    let chars: Vec<char> = arg(&args, 0)?.chars().collect();
    let len = chars.len() as i64;
    let mut offset = integer(&args[1], "the offset")?;
    let length = integer(&args[2], "the length")?;
    if offset < 0 {
        offset += len;
    }
    if offset < 0 || offset > len {
        return Err("the offset is outside the string".into());
    }
    let end = if length < 0 {
        len
    } else {
        (offset + length).min(len)
    };
    s(chars[offset as usize..end as usize]
        .iter()
        .collect::<String>())
}

fn jsonencode(args: FuncArgs) -> Result<Value> {
    serde_json::to_string(&args[0])
        .map(Value::String)
        .map_err(|e| e.to_string())
}

fn jsondecode(args: FuncArgs) -> Result<Value> {
    let text = arg(&args, 0)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    hcl::to_value(json).map_err(|e| e.to_string())
}

fn sha256(args: FuncArgs) -> Result<Value> {
    s(hex::encode(sha2::Sha256::digest(arg(&args, 0)?.as_bytes())))
}

fn sha512(args: FuncArgs) -> Result<Value> {
    s(hex::encode(sha2::Sha512::digest(arg(&args, 0)?.as_bytes())))
}

fn md5(args: FuncArgs) -> Result<Value> {
    s(hex::encode(md5::Md5::digest(arg(&args, 0)?.as_bytes())))
}

fn base64encode(args: FuncArgs) -> Result<Value> {
    s(base64::engine::general_purpose::STANDARD.encode(arg(&args, 0)?))
}

fn base64decode(args: FuncArgs) -> Result<Value> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(arg(&args, 0)?)
        .map_err(|e| format!("invalid base64: {e}"))?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| "the decoded bytes are not UTF-8".to_string())
}

fn keys(args: FuncArgs) -> Result<Value> {
    let map = object(&args[0], "argument")?;
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Ok(Value::Array(
        keys.into_iter().map(|k| Value::from(k.as_str())).collect(),
    ))
}

fn values(args: FuncArgs) -> Result<Value> {
    let map = object(&args[0], "argument")?;
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    Ok(Value::Array(
        entries.into_iter().map(|(_, v)| v.clone()).collect(),
    ))
}

fn element(args: FuncArgs) -> Result<Value> {
    let items = list(&args[0], "argument 1")?;
    if items.is_empty() {
        return Err("cannot use element() on an empty list".into());
    }
    let i = integer(&args[1], "the index")?;
    if i < 0 {
        return Err("the index must not be negative".into());
    }
    Ok(items[i as usize % items.len()].clone())
}

fn flatten_into(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten_into(i, out)),
        other => out.push(other.clone()),
    }
}

fn flatten(args: FuncArgs) -> Result<Value> {
    let mut out = Vec::new();
    list(&args[0], "argument")?
        .iter()
        .for_each(|v| flatten_into(v, &mut out));
    Ok(Value::Array(out))
}

fn distinct(args: FuncArgs) -> Result<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in list(&args[0], "argument")? {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    Ok(Value::Array(out))
}

fn reverse(args: FuncArgs) -> Result<Value> {
    Ok(Value::Array(
        list(&args[0], "argument")?.iter().rev().cloned().collect(),
    ))
}

fn extreme(args: FuncArgs, pick: fn(f64, f64) -> bool) -> Result<Value> {
    let mut best: Option<(f64, &Value)> = None;
    for (i, v) in args.iter().enumerate() {
        let n = number(v, &format!("argument {}", i + 1))?;
        if best.is_none_or(|(b, _)| pick(n, b)) {
            best = Some((n, v));
        }
    }
    match best {
        Some((_, v @ Value::Number(_))) => Ok(v.clone()),
        Some((n, _)) => hcl::to_value(n).map_err(|e| e.to_string()),
        None => Err("at least one argument is required".into()),
    }
}

fn min(args: FuncArgs) -> Result<Value> {
    extreme(args, |a, b| a < b)
}

fn max(args: FuncArgs) -> Result<Value> {
    extreme(args, |a, b| a > b)
}

#[cfg(test)]
mod tests {
    use hcl::eval::Evaluate;

    use super::*;

    fn eval(src: &str) -> std::result::Result<Value, String> {
        let mut ctx = Context::new();
        declare(&mut ctx);
        let expr: hcl::Expression = src.parse().map_err(|e: hcl::Error| e.to_string())?;
        expr.evaluate(&ctx).map_err(|e| e.to_string())
    }

    fn ok(src: &str) -> Value {
        eval(src).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn every_name_is_declared() {
        let mut declared: Vec<&str> = defs().into_iter().map(|(n, _)| n).collect();
        declared.sort();
        assert_eq!(declared, NAMES);
        for name in NAMES {
            let src = format!("{name}()");
            let err = eval(&src).err().unwrap_or_default();
            assert!(!err.contains("undefined function"), "{name}: {err}");
        }
    }

    #[test]
    fn string_functions() {
        assert_eq!(ok(r#"lower("AbC")"#), Value::from("abc"));
        assert_eq!(ok(r#"upper("AbC")"#), Value::from("ABC"));
        assert_eq!(ok(r#"title("hello world")"#), Value::from("Hello World"));
        assert_eq!(ok(r#"replace("a-b-c", "-", "+")"#), Value::from("a+b+c"));
        assert_eq!(
            ok(r#"replace("a1b22", "/[0-9]+/", "_")"#),
            Value::from("a_b_")
        );
        assert_eq!(
            ok(r#"regex_replace("a1b22", "[0-9]", "")"#),
            Value::from("ab")
        );
        assert_eq!(ok(r#"regex("[0-9]+", "ab12cd34")"#), Value::from("12"));
        assert_eq!(ok(r#"regex("(a)(b)?", "a")"#), hcl::value!(["a", null]));
        assert_eq!(
            ok(r#"regex("(?P<k>[a-z]+)=(?P<v>[0-9]+)", "x=1")"#),
            hcl::value!({ k = "x", v = "1" })
        );
        assert!(eval(r#"regex("z", "abc")"#).is_err());
        assert_eq!(ok(r#"regexall("[0-9]", "a1b2")"#), hcl::value!(["1", "2"]));
        assert_eq!(ok(r#"split(",", "a,b")"#), hcl::value!(["a", "b"]));
        assert_eq!(ok(r#"join("-", ["a", "b", 1])"#), Value::from("a-b-1"));
        assert_eq!(ok(r#"trimspace("  x \n")"#), Value::from("x"));
        assert_eq!(ok(r#"chomp("x\n")"#), Value::from("x"));
        assert_eq!(ok(r#"trimprefix("prefix-x", "prefix-")"#), Value::from("x"));
        assert_eq!(ok(r#"trimsuffix("x.img", ".img")"#), Value::from("x"));
        assert_eq!(ok(r#"startswith("kiln", "ki")"#), Value::Bool(true));
        assert_eq!(ok(r#"endswith("kiln", "ki")"#), Value::Bool(false));
        assert_eq!(ok(r#"substr("hello", 1, 3)"#), Value::from("ell"));
        assert_eq!(ok(r#"substr("hello", -3, -1)"#), Value::from("llo"));
        assert_eq!(
            ok(r#"format("%s-%d-%q-%%", "a", 7, "b")"#),
            Value::from("a-7-\"b\"-%")
        );
        assert!(eval(r#"format("%s %s", "a")"#).is_err());
        assert_eq!(
            ok(r#"format("[%03d|%-4s|%4s|%.2f|%+d|%.1s]", 7, "ab", "cd", 3.14159, 5, "xyz")"#),
            Value::from("[007|ab  |  cd|3.14|+5|x]")
        );
        assert_eq!(ok(r#"format("%05d", -42)"#), Value::from("-0042"));
    }

    #[test]
    fn collection_functions() {
        assert_eq!(
            ok(r#"concat(["a"], ["b", "c"])"#),
            hcl::value!(["a", "b", "c"])
        );
        assert_eq!(
            ok(r#"merge({a = 1}, {a = 2, b = 3})"#),
            hcl::value!({ a = 2, b = 3 })
        );
        assert_eq!(ok(r#"lookup({a = 1}, "a")"#), Value::from(1));
        assert_eq!(ok(r#"lookup({a = 1}, "b", 5)"#), Value::from(5));
        assert!(eval(r#"lookup({a = 1}, "b")"#).is_err());
        assert_eq!(ok(r#"length([1, 2])"#), Value::from(2));
        assert_eq!(ok(r#"length({a = 1})"#), Value::from(1));
        assert_eq!(ok(r#"length("héllo")"#), Value::from(5));
        assert_eq!(ok(r#"contains(["a", "b"], "b")"#), Value::Bool(true));
        assert_eq!(ok(r#"coalesce(null, "", "x")"#), Value::from("x"));
        assert_eq!(ok(r#"keys({b = 1, a = 2})"#), hcl::value!(["a", "b"]));
        assert_eq!(ok(r#"values({b = 1, a = 2})"#), hcl::value!([2, 1]));
        assert_eq!(ok(r#"element(["a", "b"], 3)"#), Value::from("b"));
        assert_eq!(
            ok(r#"flatten([["a"], ["b", ["c"]]])"#),
            hcl::value!(["a", "b", "c"])
        );
        assert_eq!(ok(r#"distinct(["a", "b", "a"])"#), hcl::value!(["a", "b"]));
        assert_eq!(ok(r#"reverse([1, 2])"#), hcl::value!([2, 1]));
        assert_eq!(ok("min(3, 1, 2)"), Value::from(1));
        assert_eq!(ok("max(3, 1.5)"), Value::from(3));
    }

    #[test]
    fn encoding_functions() {
        assert_eq!(
            ok(r#"jsonencode({a = [1, "x"]})"#),
            Value::from(r#"{"a":[1,"x"]}"#)
        );
        assert_eq!(
            ok(r#"jsondecode("{\"a\": [true]}")"#),
            hcl::value!({ a = [true] })
        );
        assert_eq!(
            ok(r#"sha256("")"#),
            Value::from("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(
            ok(r#"md5("")"#),
            Value::from("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            ok(r#"substr(sha512(""), 0, 16)"#),
            Value::from("cf83e1357eefb8bd")
        );
        assert_eq!(ok(r#"base64encode("kiln")"#), Value::from("a2lsbg=="));
        assert_eq!(ok(r#"base64decode("a2lsbg==")"#), Value::from("kiln"));
        assert!(eval(r#"base64decode("!!")"#).is_err());
    }

    #[test]
    fn path_functions() {
        assert_eq!(ok(r#"basename("/a/b.txt")"#), Value::from("b.txt"));
        assert_eq!(ok(r#"dirname("/a/b.txt")"#), Value::from("/a"));
        assert_eq!(ok(r#"dirname("b.txt")"#), Value::from("."));
        assert_eq!(ok(r#"abspath("/a/./b/../c")"#), Value::from("/a/c"));
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(ok(r#"pathexpand("~/x")"#), Value::from(format!("{home}/x")));
        }
        assert_eq!(ok(r#"pathexpand("/etc/~x")"#), Value::from("/etc/~x"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        std::fs::write(&path, "content").unwrap();
        assert_eq!(
            ok(&format!("file({:?})", path.display().to_string())),
            Value::from("content")
        );
        assert!(eval(r#"file("/nonexistent/kiln")"#).is_err());
    }

    #[test]
    fn time_and_id_functions() {
        let ts = ok("timestamp()");
        assert!(chrono::DateTime::parse_from_rfc3339(ts.as_str().unwrap()).is_ok());
        assert_eq!(
            ok(r#"formatdate("YYYY-MM-DD hh:mm:ss 'at' EEE MMM D Z", "2024-03-05T07:08:09Z")"#),
            Value::from("2024-03-05 07:08:09 at Tue Mar 5 Z")
        );
        assert!(eval(r#"formatdate("YYY", "2024-03-05T07:08:09Z")"#).is_err());
        let id = ok("uuidv4()");
        assert_eq!(
            uuid::Uuid::parse_str(id.as_str().unwrap())
                .unwrap()
                .get_version_num(),
            4
        );
    }

    #[test]
    fn env_only_in_defaults() {
        assert!(eval(r#"env("HOME")"#)
            .unwrap_err()
            .contains("variable defaults"));
        let env = vec![("KILN_T".to_string(), "v".to_string())];
        assert_eq!(with_env(&env, || ok(r#"env("KILN_T")"#)), Value::from("v"));
        assert_eq!(with_env(&env, || ok(r#"env("NOPE")"#)), Value::from(""));
    }
}
