//! `boot_command`: Packer's key notation (`<enter>`, `<leftCtrlOn>`, `<wait5>`...) parsed into
//! key presses and waits, typed into the guest through QMP `input-send-event` (never VNC).
//!
//! Plain characters are typed as on a US keyboard (upper case and symbols with shift). A `<...>`
//! that is not a known key or wait is typed literally, as Packer does. `{{ .HTTPIP }}`,
//! `{{ .HTTPPort }}` and `{{ .Name }}` are replaced before parsing.

use std::time::Duration;

use qapi::qmp::QKeyCode;

/// One thing to do while typing.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Press these keys together (modifiers first) and release them in reverse order.
    Press(Vec<QKeyCode>),
    /// Hold a key down (`<leftShiftOn>`).
    Down(QKeyCode),
    /// Release a held key (`<leftShiftOff>`).
    Up(QKeyCode),
    Wait(Duration),
}

/// The values `{{ .X }}` placeholders take.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub http_ip: Option<String>,
    pub http_port: Option<u16>,
    pub name: String,
}

/// Why a boot command cannot be typed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BootCommandError {
    #[error("unknown placeholder `{{{{ .{0} }}}}` (known: `.HTTPIP`, `.HTTPPort`, `.Name`)")]
    UnknownPlaceholder(String),
    #[error(
        "`{{{{ .{0} }}}}` needs `http_directory` or `http_content` (Kiln serves files only then)"
    )]
    NoHttp(&'static str),
    #[error("unterminated placeholder `{{{{` in `{0}`")]
    Unterminated(String),
}

/// Checks the placeholders of `text` without values (at configuration time).
pub fn check_placeholders(text: &str, http: bool) -> Result<(), BootCommandError> {
    let vars = Vars {
        http_ip: http.then(|| "10.0.2.2".into()),
        http_port: http.then_some(1),
        name: String::new(),
    };
    substitute(text, &vars).map(drop)
}

/// Replaces `{{ .HTTPIP }}`, `{{ .HTTPPort }}` and `{{ .Name }}`.
pub fn substitute(text: &str, vars: &Vars) -> Result<String, BootCommandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| BootCommandError::Unterminated(text.to_string()))?;
        let name = after[..end].trim().trim_start_matches('.');
        let value = match name {
            "HTTPIP" => vars
                .http_ip
                .clone()
                .ok_or(BootCommandError::NoHttp("HTTPIP"))?,
            "HTTPPort" => vars
                .http_port
                .ok_or(BootCommandError::NoHttp("HTTPPort"))?
                .to_string(),
            "Name" => vars.name.clone(),
            other => return Err(BootCommandError::UnknownPlaceholder(other.to_string())),
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn code(name: &str) -> QKeyCode {
    name.parse()
        .unwrap_or_else(|_| panic!("`{name}` is a QEMU key code"))
}

/// The key code and whether shift is needed for a character on a US keyboard.
fn char_key(c: char) -> Option<(QKeyCode, bool)> {
    let plain = |n: &str| Some((code(n), false));
    let shifted = |n: &str| Some((code(n), true));
    match c {
        'a'..='z' | '0'..='9' => plain(&c.to_string()),
        'A'..='Z' => shifted(&c.to_ascii_lowercase().to_string()),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '\t' => plain("tab"),
        '-' => plain("minus"),
        '_' => shifted("minus"),
        '=' => plain("equal"),
        '+' => shifted("equal"),
        '[' => plain("bracket_left"),
        '{' => shifted("bracket_left"),
        ']' => plain("bracket_right"),
        '}' => shifted("bracket_right"),
        '\\' => plain("backslash"),
        '|' => shifted("backslash"),
        ';' => plain("semicolon"),
        ':' => shifted("semicolon"),
        '\'' => plain("apostrophe"),
        '"' => shifted("apostrophe"),
        '`' => plain("grave_accent"),
        '~' => shifted("grave_accent"),
        ',' => plain("comma"),
        '<' => shifted("comma"),
        '.' => plain("dot"),
        '>' => shifted("dot"),
        '/' => plain("slash"),
        '?' => shifted("slash"),
        '!' => shifted("1"),
        '@' => shifted("2"),
        '#' => shifted("3"),
        '$' => shifted("4"),
        '%' => shifted("5"),
        '^' => shifted("6"),
        '&' => shifted("7"),
        '*' => shifted("8"),
        '(' => shifted("9"),
        ')' => shifted("0"),
        _ => None,
    }
}

/// Packer's special key names (lower-cased) and their QEMU key codes.
fn special_key(name: &str) -> Option<QKeyCode> {
    let qcode = match name {
        "bs" => "backspace",
        "del" => "delete",
        "enter" | "return" => "ret",
        "esc" => "esc",
        "insert" => "insert",
        "home" => "home",
        "end" => "end",
        "pageup" => "pgup",
        "pagedown" => "pgdn",
        "tab" => "tab",
        "up" => "up",
        "down" => "down",
        "left" => "left",
        "right" => "right",
        "spacebar" => "spc",
        "menu" => "menu",
        "leftalt" => "alt",
        "rightalt" => "alt_r",
        "leftctrl" => "ctrl",
        "rightctrl" => "ctrl_r",
        "leftshift" => "shift",
        "rightshift" => "shift_r",
        "leftsuper" => "meta_l",
        "rightsuper" => "meta_r",
        f if f.len() <= 3
            && f.starts_with('f')
            && f[1..].parse::<u8>().is_ok_and(|n| (1..=12).contains(&n)) =>
        {
            f
        }
        _ => return None,
    };
    Some(code(qcode))
}

/// `<wait>`, `<wait5>` (seconds), `<wait1m30s>` (a Go duration).
fn wait(name: &str) -> Option<Duration> {
    let rest = name.strip_prefix("wait")?;
    if rest.is_empty() {
        return Some(Duration::from_secs(1));
    }
    if let Ok(secs) = rest.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    kiln_comm::ssh::parse_go_duration(rest).ok()
}

/// What a `<...>` means, if it is one of Packer's names.
fn bracket(inner: &str) -> Option<Action> {
    let lower = inner.to_ascii_lowercase();
    if let Some(d) = wait(&lower) {
        return Some(Action::Wait(d));
    }
    if let Some(key) = special_key(&lower) {
        return Some(Action::Press(vec![key]));
    }
    if let Some(base) = lower.strip_suffix("on") {
        return special_key(base).map(Action::Down);
    }
    if let Some(base) = lower.strip_suffix("off") {
        return special_key(base).map(Action::Up);
    }
    None
}

/// Parses one boot command string (after substitution). Characters with no key on a US
/// keyboard are skipped and returned so the caller can warn about them.
pub fn parse(text: &str) -> (Vec<Action>, Vec<char>) {
    let mut actions = Vec::new();
    let mut skipped = Vec::new();
    let mut type_char = |c: char, actions: &mut Vec<Action>| match char_key(c) {
        Some((key, true)) => actions.push(Action::Press(vec![code("shift"), key])),
        Some((key, false)) => actions.push(Action::Press(vec![key])),
        None => skipped.push(c),
    };
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            if let Some(end) = rest.find('>') {
                if let Some(action) = bracket(&rest[1..end]) {
                    actions.push(action);
                    rest = &rest[end + 1..];
                    continue;
                }
            }
        }
        type_char(c, &mut actions);
        rest = &rest[c.len_utf8()..];
    }
    (actions, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Action {
        Action::Press(names.iter().map(|n| code(n)).collect())
    }

    #[test]
    fn plain_text_is_typed_on_a_us_keyboard() {
        let (actions, skipped) = parse("aZ:/ ~");
        assert_eq!(
            actions,
            vec![
                keys(&["a"]),
                keys(&["shift", "z"]),
                keys(&["shift", "semicolon"]),
                keys(&["slash"]),
                keys(&["spc"]),
                keys(&["shift", "grave_accent"]),
            ]
        );
        assert!(skipped.is_empty());
    }

    #[test]
    fn special_keys_waits_and_modifiers() {
        let (actions, _) =
            parse("<esc><wait><wait5><wait1m2s><F12><leftCtrlOn>c<leftCtrlOff><enter>");
        assert_eq!(
            actions,
            vec![
                keys(&["esc"]),
                Action::Wait(Duration::from_secs(1)),
                Action::Wait(Duration::from_secs(5)),
                Action::Wait(Duration::from_secs(62)),
                keys(&["f12"]),
                Action::Down(code("ctrl")),
                keys(&["c"]),
                Action::Up(code("ctrl")),
                keys(&["ret"]),
            ]
        );
    }

    #[test]
    fn unknown_brackets_are_typed_literally() {
        let (actions, _) = parse("<x>");
        assert_eq!(
            actions,
            vec![
                keys(&["shift", "comma"]),
                keys(&["x"]),
                keys(&["shift", "dot"])
            ]
        );
        let (actions, _) = parse("a < b");
        assert_eq!(actions.len(), 5);
    }

    #[test]
    fn characters_without_a_key_are_reported() {
        let (actions, skipped) = parse("é1");
        assert_eq!(actions, vec![keys(&["1"])]);
        assert_eq!(skipped, vec!['é']);
    }

    #[test]
    fn placeholders() {
        let vars = Vars {
            http_ip: Some("10.0.2.2".into()),
            http_port: Some(8123),
            name: "vm".into(),
        };
        assert_eq!(
            substitute("url=http://{{ .HTTPIP }}:{{.HTTPPort}}/{{ .Name }}", &vars).unwrap(),
            "url=http://10.0.2.2:8123/vm"
        );
        assert_eq!(
            substitute("{{ .Nope }}", &vars),
            Err(BootCommandError::UnknownPlaceholder("Nope".into()))
        );
        assert_eq!(
            check_placeholders("{{ .HTTPPort }}", false),
            Err(BootCommandError::NoHttp("HTTPPort"))
        );
        assert!(check_placeholders("{{ .HTTPPort }}", true).is_ok());
        assert!(matches!(
            substitute("{{ .Name", &vars),
            Err(BootCommandError::Unterminated(_))
        ));
    }
}
