//! Checks that look outside the file: environment variables, ports, local
//! model directories and external tools. Each is usable on its own.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The type an environment variable must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// Any non-empty text.
    Text,
    /// An integer within `min..=max`.
    Integer {
        /// The smallest allowed.
        min: i64,
        /// The largest allowed.
        max: i64,
    },
    /// `1`/`true`/`yes` or `0`/`false`/`no` (any case).
    Boolean,
}

/// A checked environment variable's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// Text.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Boolean(bool),
    /// Optional, absent and without a default.
    Absent,
}

/// Reads and checks one variable from `env` (the environment is passed in,
/// never read or changed here). Empty or whitespace-only counts as missing;
/// a missing optional variable takes `default` (checked like a value).
pub fn env_var(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    required: bool,
    default: Option<&str>,
    kind: EnvKind,
) -> Result<EnvValue, String> {
    let value = env(name).filter(|v| !v.trim().is_empty());
    let (raw, from_default) = match (value, default) {
        (Some(v), _) => (v, false),
        (None, Some(d)) if !required => (d.to_owned(), true),
        (None, _) if required => {
            return Err(format!("environment variable {name} is required but not set (or empty)"));
        }
        (None, _) => return Ok(EnvValue::Absent),
    };
    let origin = if from_default { "default of " } else { "" };
    let raw = raw.trim();
    match kind {
        EnvKind::Text => Ok(EnvValue::Text(raw.to_owned())),
        EnvKind::Integer { min, max } => {
            let n: i64 = raw.parse().map_err(|_| format!("{origin}{name}={raw:?} is not an integer"))?;
            if n < min || n > max {
                return Err(format!("{origin}{name}={n} is outside {min}..={max}"));
            }
            Ok(EnvValue::Integer(n))
        }
        EnvKind::Boolean => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(EnvValue::Boolean(true)),
            "0" | "false" | "no" => Ok(EnvValue::Boolean(false)),
            _ => Err(format!("{origin}{name}={raw:?} is not a boolean (use 1/true/yes or 0/false/no)")),
        },
    }
}

/// Whether something already listens on `addr` (a bind fails with
/// "address in use"). Other bind errors (no permission) count as free:
/// the check fails open rather than blocking a start it cannot judge.
#[must_use]
pub fn port_in_use(addr: SocketAddr) -> bool {
    matches!(TcpListener::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// The first port of `ports` on `host` nothing listens on.
#[must_use]
pub fn find_free_port(host: std::net::IpAddr, ports: std::ops::RangeInclusive<u16>) -> Option<u16> {
    ports.into_iter().find(|&port| TcpListener::bind(SocketAddr::new(host, port)).is_ok())
}

/// The files a local model directory must hold by default.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Problems with a local model directory: missing, not a directory,
/// unreadable, or lacking one of `required` files. A symlink to a directory
/// is fine.
#[must_use]
pub fn model_dir_problems(dir: &Path, required: &[&str]) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(dir) else {
        return vec!["does not exist".to_owned()];
    };
    if !meta.is_dir() {
        return vec!["is not a directory".to_owned()];
    }
    if let Err(e) = std::fs::read_dir(dir) {
        return vec![format!("is not readable ({})", e.kind())];
    }
    required.iter().filter(|f| !dir.join(f).is_file()).map(|f| format!("lacks {f}")).collect()
}

/// A dotted version (`2.47.3`), compared number by number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub Vec<u64>);

impl Version {
    /// The first dotted number in `text` (`git version 2.47.3` → `2.47.3`).
    #[must_use]
    pub fn find(text: &str) -> Option<Version> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let parts: Vec<u64> = text[start..]
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .split('.')
            .map_while(|p| p.parse().ok())
            .collect();
        (!parts.is_empty()).then_some(Version(parts))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// Runs `tool --version` (at most 5 s) and checks it is at least `min`.
pub fn check_tool(tool: &str, min: &str) -> Result<Version, String> {
    let wanted = Version::find(min).ok_or_else(|| format!("minimum version {min:?} is not a version"))?;
    let mut child = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{tool} is not installed or not runnable ({})", e.kind()))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return Err(format!("{tool} --version did not answer within 5 s"));
            }
        }
    }
    let output = child.wait_with_output().map_err(|e| format!("{tool} --version failed ({})", e.kind()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let found = Version::find(&text).ok_or_else(|| format!("{tool} --version printed no version"))?;
    if found < wanted {
        return Err(format!("{tool} {found} is older than the required {wanted}"));
    }
    Ok(found)
}
