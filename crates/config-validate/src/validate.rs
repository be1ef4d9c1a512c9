//! The validator: walks the spanned TOML, collects every problem with its
//! path, line and column, and builds the typed [`Config`] when none is an error.

// `match x { Some(v) => v, None => { report(...); default } }` is this
// module's idiom for "read a field or say why not"; `if let … else` would
// hide the reporting arm.
#![allow(clippy::single_match_else)]

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
};

use modelfleet_budget::{BudgetSpec, Enforcement, Period, Scope};
use modelfleet_errors::{Jitter, RetryConfig, RetryPolicy};
use modelfleet_registry::{Capabilities, Capability, Category, ModelSpec, Money, Pricing};
use modelfleet_selector::{Locality, Requirements, Strategy, WeightValues, Weights};
use serde::Serialize;
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::{
    ApiKey, AuthLockout, CacheSettings, ClusterSettings, Config, HedgeAfter, MetricsSettings, Provider, ProviderKind,
    ResilienceSettings, Role, Route, ServerSettings, StoreSettings, ToolRequirement, Unsupported,
    checks::{EnvKind, EnvValue, MODEL_FILES, check_tool, env_var, model_dir_problems, port_in_use},
};

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The dotted path (`models[2].provider`).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line, when the file says where.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// The result of validating a configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Problems that make the configuration unusable.
    pub errors: Vec<Diagnostic>,
    /// Things worth a look that do not stop it.
    pub warnings: Vec<Diagnostic>,
    /// The configuration, when there is no error.
    #[serde(skip)]
    pub config: Option<Config>,
}

impl Report {
    /// Whether the configuration is usable.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(f, "{} error(s), {} warning(s)", self.errors.len(), self.warnings.len())
    }
}

/// What the validation may look at besides the text.
pub struct Options<'e> {
    /// The environment (passed in: never read from the process here).
    pub env: &'e dyn Fn(&str) -> Option<String>,
    /// Check local model directories on disk.
    pub check_files: bool,
    /// Check the listen port is free.
    pub check_ports: bool,
    /// Run the tools providers need (`tool --version`).
    pub check_tools: bool,
    /// Where relative paths are resolved from (the file's directory).
    pub base_dir: PathBuf,
}

impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("check_files", &self.check_files)
            .field("check_ports", &self.check_ports)
            .field("check_tools", &self.check_tools)
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

/// Reads and validates the file at `path` (relative paths inside it resolve
/// from its directory). A file that cannot be read is one error.
#[must_use]
pub fn validate_file(path: &Path, options: &Options<'_>) -> Report {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => validate(&text, options),
            Err(e) => single(format!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )),
        },
        Err(e) => single(format!("cannot read {}: {e}", path.display())),
    }
}

fn single(message: String) -> Report {
    Report {
        errors: vec![Diagnostic { path: String::new(), message, line: None, column: None }],
        warnings: vec![],
        config: None,
    }
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

struct V<'t> {
    text: &'t str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl V<'_> {
    fn position(&self, span: &Range<usize>) -> (Option<usize>, Option<usize>) {
        let start = span.start.min(self.text.len());
        let Some(before) = self.text.get(..start) else { return (None, None) };
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (Some(line), Some(column))
    }

    fn diagnostic(&self, path: &str, span: Option<&Range<usize>>, message: String) -> Diagnostic {
        let (line, column) = span.map_or((None, None), |s| self.position(s));
        Diagnostic { path: path.to_owned(), message, line, column }
    }

    fn error(&mut self, path: &str, span: Option<&Range<usize>>, message: impl Into<String>) {
        let d = self.diagnostic(path, span, message.into());
        self.errors.push(d);
    }

    fn warn(&mut self, path: &str, span: Option<&Range<usize>>, message: impl Into<String>) {
        let d = self.diagnostic(path, span, message.into());
        self.warnings.push(d);
    }
}

/// The closest candidate within a small edit distance, for "did you mean".
fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d > 0 && *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    suggest(word, candidates.iter().copied()).map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn find<'a, 'i>(table: &'a Table<'i>, key: &str) -> Option<&'a Value<'i>> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(_, v)| v)
}

/// Reports every key of `table` not in `known`, with a suggestion.
fn known_keys(v: &mut V<'_>, table: &Table<'_>, path: &str, known: &[&str]) {
    for (key, _) in table {
        let name = key.get_ref().as_ref();
        if !known.contains(&name) {
            let hint = did_you_mean(name, known);
            v.error(
                &join(path, name),
                Some(&key.span()),
                format!("unknown key `{name}`{hint}; known keys: {}", known.join(", ")),
            );
        }
    }
}

fn type_error(v: &mut V<'_>, path: &str, value: &Value<'_>, wanted: &str) {
    v.error(path, Some(&value.span()), format!("expected {wanted}, found {}", value.get_ref().type_str()));
}

/// A TOML value read as an integer.
enum Int {
    Value(i64),
    /// An integer too large for 64 bits.
    TooLarge,
    /// Not an integer at all.
    NotInteger,
}

fn integer_of(value: &DeValue<'_>) -> Int {
    let Some(int) = value.as_integer() else { return Int::NotInteger };
    let digits = int.as_str().replace('_', "");
    i64::from_str_radix(&digits, int.radix()).map_or(Int::TooLarge, Int::Value)
}

fn get_str(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str) -> Option<(String, Range<usize>)> {
    let value = find(t, key)?;
    match value.get_ref().as_str() {
        Some(s) => Some((s.to_owned(), value.span())),
        None => {
            type_error(v, &join(path, key), value, "a string");
            None
        }
    }
}

fn require_str(
    v: &mut V<'_>,
    t: &Table<'_>,
    t_span: &Range<usize>,
    path: &str,
    key: &str,
) -> Option<(String, Range<usize>)> {
    let found = get_str(v, t, path, key);
    if found.is_none() && find(t, key).is_none() {
        v.error(&join(path, key), Some(t_span), "is required");
    }
    found
}

fn get_int(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str, range: RangeInclusive<i64>) -> Option<i64> {
    let value = find(t, key)?;
    let p = join(path, key);
    match integer_of(value.get_ref()) {
        Int::Value(n) if range.contains(&n) => Some(n),
        Int::Value(n) => {
            v.error(&p, Some(&value.span()), format!("{n} is outside {}..={}", range.start(), range.end()));
            None
        }
        Int::TooLarge => {
            v.error(&p, Some(&value.span()), "integer too large");
            None
        }
        Int::NotInteger => {
            type_error(v, &p, value, "an integer");
            None
        }
    }
}

fn get_u64(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str, range: RangeInclusive<i64>, default: u64) -> u64 {
    get_int(v, t, path, key, range).and_then(|n| u64::try_from(n).ok()).unwrap_or(default)
}

fn get_u32(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str, range: RangeInclusive<i64>, default: u32) -> u32 {
    get_int(v, t, path, key, range).and_then(|n| u32::try_from(n).ok()).unwrap_or(default)
}

fn get_float(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str, range: RangeInclusive<f64>) -> Option<f64> {
    let value = find(t, key)?;
    let p = join(path, key);
    let number = match value.get_ref() {
        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        other => match integer_of(other) {
            Int::Value(n) => Some(n as f64),
            Int::TooLarge | Int::NotInteger => None,
        },
    };
    match number {
        Some(x) if x.is_finite() && range.contains(&x) => Some(x),
        Some(x) => {
            v.error(&p, Some(&value.span()), format!("{x} is outside {}..={}", range.start(), range.end()));
            None
        }
        None => {
            type_error(v, &p, value, "a number");
            None
        }
    }
}

fn get_bool(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str) -> Option<bool> {
    let value = find(t, key)?;
    let b = value.get_ref().as_bool();
    if b.is_none() {
        type_error(v, &join(path, key), value, "true or false");
    }
    b
}

/// A dollar amount: a number or a decimal string, never negative.
fn get_money(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str) -> Option<Money> {
    let value = find(t, key)?;
    let p = join(path, key);
    let money = match value.get_ref() {
        DeValue::String(s) => s.parse::<Money>().map_err(|e| e.to_string()),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(Money::from_dollars_f64)
            .ok_or_else(|| format!("{} is not a dollar amount", f.as_str())),
        other => match integer_of(other) {
            Int::Value(n) => Ok(Money::from_dollars(n)),
            Int::TooLarge | Int::NotInteger => Err(format!("expected a dollar amount, found {}", other.type_str())),
        },
    };
    match money {
        Ok(m) if m < Money::ZERO => {
            v.error(&p, Some(&value.span()), format!("${m} is negative"));
            None
        }
        Ok(m) => Some(m),
        Err(message) => {
            v.error(&p, Some(&value.span()), message);
            None
        }
    }
}

fn get_str_list(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str) -> Vec<(String, Range<usize>)> {
    let Some(value) = find(t, key) else { return Vec::new() };
    let p = join(path, key);
    let Some(items) = value.get_ref().as_array() else {
        type_error(v, &p, value, "an array of strings");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get_ref().as_str() {
            Some(s) => out.push((s.to_owned(), item.span())),
            None => type_error(v, &format!("{p}[{i}]"), item, "a string"),
        }
    }
    out
}

fn get_table<'a, 'i>(v: &mut V<'_>, t: &'a Table<'i>, path: &str, key: &str) -> Option<(&'a Table<'i>, Range<usize>)> {
    let value = find(t, key)?;
    match value.get_ref().as_table() {
        Some(table) => Some((table, value.span())),
        None => {
            type_error(v, &join(path, key), value, "a table");
            None
        }
    }
}

fn get_tables<'a, 'i>(v: &mut V<'_>, t: &'a Table<'i>, key: &str) -> Vec<(&'a Table<'i>, Range<usize>)> {
    let Some(value) = find(t, key) else { return Vec::new() };
    let Some(items) = value.get_ref().as_array() else {
        type_error(v, key, value, &format!("an array of tables ([[{key}]])"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get_ref().as_table() {
            Some(table) => out.push((table, item.span())),
            None => type_error(v, &format!("{key}[{i}]"), item, "a table"),
        }
    }
    out
}

/// One of `names`, mapped by position onto `values`.
fn get_enum<T: Copy>(v: &mut V<'_>, t: &Table<'_>, path: &str, key: &str, names: &[&str], values: &[T]) -> Option<T> {
    let (text, span) = get_str(v, t, path, key)?;
    match names.iter().position(|n| *n == text) {
        Some(i) => values.get(i).copied(),
        None => {
            let hint = did_you_mean(&text, names);
            v.error(
                &join(path, key),
                Some(&span),
                format!("unknown value {text:?}{hint}; expected one of: {}", names.join(", ")),
            );
            None
        }
    }
}

/// A port given as an integer or a string of digits.
fn check_port(v: &mut V<'_>, path: &str, value: &Value<'_>) -> Option<u16> {
    let number = match value.get_ref() {
        DeValue::String(s) => match s.trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                v.error(path, Some(&value.span()), format!("port {s:?} is not a number"));
                return None;
            }
        },
        other => match integer_of(other) {
            Int::Value(n) => n,
            Int::TooLarge | Int::NotInteger => {
                type_error(v, path, value, "a port number");
                return None;
            }
        },
    };
    match u16::try_from(number) {
        Ok(0) | Err(_) => {
            v.error(path, Some(&value.span()), format!("port {number} is outside 1..=65535"));
            None
        }
        Ok(port) => {
            if port < 1024 {
                v.warn(
                    path,
                    Some(&value.span()),
                    format!("port {port} is privileged (below 1024): binding it usually needs root"),
                );
            }
            Some(port)
        }
    }
}

/// Validates a configuration text; never panics, whatever the text.
#[must_use]
pub fn validate(text: &str, options: &Options<'_>) -> Report {
    let mut v = V { text, errors: Vec::new(), warnings: Vec::new() };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span();
            let message = format!("invalid TOML: {}", e.message().trim());
            v.error("", span.as_ref(), message);
            return Report { errors: v.errors, warnings: v.warnings, config: None };
        }
    };
    let root = root.get_ref();
    known_keys(
        &mut v,
        root,
        "",
        &[
            "server",
            "store",
            "providers",
            "models",
            "routes",
            "retry",
            "cooldown",
            "circuit",
            "fallback",
            "selector",
            "budgets",
            "ledger",
            "cache",
            "metrics",
            "cluster",
        ],
    );
    let server = server(&mut v, root, options);
    let store = store(&mut v, root, options);
    let providers = providers(&mut v, root, options);
    let ModelParts { specs: models, fallbacks: model_fallbacks, paths: model_paths, hedges: model_hedges, places } =
        models(&mut v, root, &providers, options);
    let routes = routes(&mut v, root, &models);
    let retry = retry(&mut v, root);
    let resilience = resilience(&mut v, root);
    let weights = weights(&mut v, root);
    let (budgets, utc_offset_minutes) = budgets(&mut v, root, &providers, &models);
    let cache = cache(&mut v, root);
    let metrics = metrics(&mut v, root);
    let cluster = cluster(&mut v, root, options);
    expensive_without_budget(&mut v, &models, &budgets, &places);
    unbounded_under_hard_budget(&mut v, &models, &budgets, &server, &places);

    let config = v.errors.is_empty().then_some(Config {
        server,
        store,
        providers,
        models,
        model_fallbacks,
        model_paths,
        model_hedges,
        routes,
        retry,
        resilience,
        weights,
        budgets,
        utc_offset_minutes,
        cache,
        cluster,
        metrics,
    });
    Report { errors: v.errors, warnings: v.warnings, config }
}

/// What is wrong with `origin` as a CORS origin, if anything: it must be
/// `http` or `https`, a host, an optional port, and nothing else (browsers
/// send exactly that in `Origin`); `*` is refused.
fn origin_problem(origin: &str) -> Option<String> {
    if origin == "*" {
        return Some(
            "\"*\" would let any web page call this gateway, admin API included: list the origins that may".to_owned(),
        );
    }
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some(format!("{origin:?} is not an origin: it starts with http:// or https://"));
    };
    // An IPv6 host is bracketed; any other host has no colon. What follows
    // the host is nothing or `:port`.
    let (host, tail) = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']').unwrap_or(("", "")),
        None => rest.find(':').map_or((rest, ""), |at| rest.split_at(at)),
    };
    if !tail.is_empty() && tail.strip_prefix(':').is_none_or(|port| port.parse::<u16>().is_err()) {
        return Some(format!("{origin:?} is not an origin: {tail:?} is not :port (no path, no trailing slash)"));
    }
    let valid_host =
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !valid_host {
        return Some(format!("{origin:?} is not an origin: scheme://host[:port], no path, no trailing slash"));
    }
    None
}

/// The fewest characters an API key of `[[server.api_keys]]` may have.
pub const MIN_API_KEY_CHARS: usize = 16;

/// `[[server.api_keys]]`: each with a unique name and a long enough value.
fn api_keys(v: &mut V<'_>, t: &Table<'_>, options: &Options<'_>) -> Vec<ApiKey> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, (key, span)) in get_tables(v, t, "api_keys").into_iter().enumerate() {
        let path = format!("server.api_keys[{i}]");
        known_keys(v, key, &path, &["name", "key_env", "role", "monthly_budget"]);
        let name = require_str(v, key, &span, &path, "name");
        let key_env = require_str(v, key, &span, &path, "key_env");
        if let Some((env_name, env_span)) = &key_env {
            match env_var(options.env, env_name, true, None, EnvKind::Text) {
                Err(message) => v.error(&format!("{path}.key_env"), Some(env_span), message),
                Ok(EnvValue::Text(key)) if key.chars().count() < MIN_API_KEY_CHARS => v.error(
                    &format!("{path}.key_env"),
                    Some(env_span),
                    format!(
                        "{env_name} holds a key of {} characters: at least {MIN_API_KEY_CHARS} are needed (a short key \
                         can be guessed)",
                        key.chars().count()
                    ),
                ),
                Ok(_) => {}
            }
        }
        if let Some((name, name_span)) = &name
            && keys.iter().any(|k| k.name == *name)
        {
            v.error(&format!("{path}.name"), Some(name_span), format!("another key is already named {name:?}"));
        }
        let role = get_enum(
            v,
            key,
            &path,
            "role",
            &["client", "admin", "metrics"],
            &[Role::Client, Role::Admin, Role::Metrics],
        );
        if find(key, "role").is_none() {
            v.error(&format!("{path}.role"), Some(&span), "is required (client, admin or metrics)");
        }
        let budget = get_money(v, key, &path, "monthly_budget");
        if let (Some((name, _)), Some((key_env, _)), Some(role)) = (name, key_env, role) {
            keys.push(ApiKey { name, key_env, role, monthly_budget: budget });
        }
    }
    keys
}

fn server(v: &mut V<'_>, root: &Table<'_>, options: &Options<'_>) -> ServerSettings {
    let mut settings = ServerSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        api_keys: Vec::new(),
        max_body_bytes: 1 << 20,
        max_in_flight: 1_024,
        allow_unauthenticated_remote: false,
        cors_origins: Vec::new(),
        auth_lockout: AuthLockout::Remote,
        header_read_timeout_ms: 10_000,
        body_read_timeout_ms: 30_000,
        idle_timeout_ms: 60_000,
        request_timeout_ms: 600_000,
        max_connections: 4_096,
        stream_send_timeout_ms: 30_000,
        drain_grace_ms: 2_000,
        drain_timeout_ms: 30_000,
        memory_high_percent: 90,
        memory_limit_bytes: None,
    };
    let Some((t, _)) = get_table(v, root, "", "server") else { return settings };
    known_keys(
        v,
        t,
        "server",
        &[
            "listen",
            "api_keys",
            "max_body_bytes",
            "max_in_flight",
            "allow_unauthenticated_remote",
            "cors_origins",
            "auth_lockout",
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "idle_timeout_ms",
            "request_timeout_ms",
            "max_connections",
            "stream_send_timeout_ms",
            "drain_grace_ms",
            "drain_timeout_ms",
            "memory_high_percent",
            "memory_limit_bytes",
        ],
    );
    for (j, (origin, span)) in get_str_list(v, t, "server", "cors_origins").into_iter().enumerate() {
        match origin_problem(&origin) {
            Some(problem) => v.error(&format!("server.cors_origins[{j}]"), Some(&span), problem),
            None => settings.cors_origins.push(origin),
        }
    }
    if let Some(value) = find(t, "listen") {
        match value.get_ref().as_str() {
            Some(text) => match text.rsplit_once(':') {
                Some((host, port_text)) => {
                    let port_value = Spanned::new(value.span(), DeValue::String(port_text.to_owned().into()));
                    if let Some(port) = check_port(v, "server.listen", &port_value) {
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        match host.parse::<std::net::IpAddr>() {
                            Ok(ip) => settings.listen = SocketAddr::new(ip, port),
                            Err(_) => v.error(
                                "server.listen",
                                Some(&value.span()),
                                format!("{host:?} is not an IP address (use 127.0.0.1, 0.0.0.0 or [::1])"),
                            ),
                        }
                    }
                }
                None => v.error("server.listen", Some(&value.span()), format!("{text:?} is not host:port")),
            },
            None => type_error(v, "server.listen", value, "\"host:port\""),
        }
        if options.check_ports && port_in_use(settings.listen) {
            v.error("server.listen", Some(&value.span()), format!("{} is already in use", settings.listen));
        }
    }
    settings.max_body_bytes = get_u64(v, t, "server", "max_body_bytes", 1_024..=(1 << 30), settings.max_body_bytes);
    settings.max_in_flight = get_u32(v, t, "server", "max_in_flight", 1..=1_000_000, settings.max_in_flight);
    settings.allow_unauthenticated_remote = get_bool(v, t, "server", "allow_unauthenticated_remote").unwrap_or(false);
    server_limits(v, t, &mut settings);
    settings.auth_lockout = get_enum(
        v,
        t,
        "server",
        "auth_lockout",
        &["remote", "all", "off"],
        &[AuthLockout::Remote, AuthLockout::All, AuthLockout::Off],
    )
    .unwrap_or_default();
    settings.api_keys = api_keys(v, t, options);
    if !settings.listen.ip().is_loopback() && settings.api_keys.is_empty() && !settings.allow_unauthenticated_remote {
        v.warn(
            "server.listen",
            find(t, "listen").map(Spanned::span).as_ref(),
            format!("{} is reachable from other machines but no api_keys are set: the server will bind 127.0.0.1 instead unless allow_unauthenticated_remote = true", settings.listen),
        );
    }
    settings
}

/// `[server]`'s timeouts and limits.
fn server_limits(v: &mut V<'_>, t: &Table<'_>, settings: &mut ServerSettings) {
    let ms = |v: &mut V<'_>, key: &str, range: RangeInclusive<i64>, default: u64| {
        get_u64(v, t, "server", key, range, default)
    };
    settings.header_read_timeout_ms = ms(v, "header_read_timeout_ms", 100..=600_000, settings.header_read_timeout_ms);
    settings.body_read_timeout_ms = ms(v, "body_read_timeout_ms", 100..=3_600_000, settings.body_read_timeout_ms);
    settings.idle_timeout_ms = ms(v, "idle_timeout_ms", 100..=3_600_000, settings.idle_timeout_ms);
    settings.request_timeout_ms = ms(v, "request_timeout_ms", 100..=3_600_000, settings.request_timeout_ms);
    settings.stream_send_timeout_ms = ms(v, "stream_send_timeout_ms", 100..=600_000, settings.stream_send_timeout_ms);
    settings.drain_grace_ms = ms(v, "drain_grace_ms", 0..=600_000, settings.drain_grace_ms);
    settings.drain_timeout_ms = ms(v, "drain_timeout_ms", 0..=3_600_000, settings.drain_timeout_ms);
    settings.max_connections = get_u32(v, t, "server", "max_connections", 1..=1_000_000, settings.max_connections);
    settings.memory_high_percent =
        u8::try_from(get_u64(v, t, "server", "memory_high_percent", 1..=100, 90)).unwrap_or(90);
    if find(t, "memory_limit_bytes").is_some() {
        settings.memory_limit_bytes =
            Some(get_u64(v, t, "server", "memory_limit_bytes", (1 << 20)..=(1 << 50), 1 << 30));
    }
}

fn store(v: &mut V<'_>, root: &Table<'_>, options: &Options<'_>) -> StoreSettings {
    let mut settings = StoreSettings {
        path: None,
        batch_rows: 512,
        batch_wait_ms: 50,
        sync_full: false,
        retain_days: 30,
        aggregate_retain_days: 400,
    };
    let Some((t, _)) = get_table(v, root, "", "store") else { return settings };
    known_keys(
        v,
        t,
        "store",
        &["path", "batch_rows", "batch_wait_ms", "sync_full", "retain_days", "aggregate_retain_days"],
    );
    settings.path = get_str(v, t, "store", "path").map(|(p, _)| options.base_dir.join(p));
    settings.batch_rows = usize::try_from(get_u64(v, t, "store", "batch_rows", 1..=100_000, 512)).unwrap_or(512);
    settings.batch_wait_ms = get_u64(v, t, "store", "batch_wait_ms", 1..=10_000, 50);
    settings.sync_full = get_bool(v, t, "store", "sync_full").unwrap_or(false);
    settings.retain_days = get_u32(v, t, "store", "retain_days", 0..=36_500, 30);
    // Reports read whole hours from the aggregates: they must outlive the
    // raw rows. Unset, they do (for ever when the raw rows are kept for
    // ever); set shorter, the file says what it cannot have.
    let raw = settings.retain_days;
    settings.aggregate_retain_days = if raw == 0 { 0 } else { raw.max(400) };
    if find(t, "aggregate_retain_days").is_some() {
        let aggregates = get_u32(v, t, "store", "aggregate_retain_days", 0..=36_500, settings.aggregate_retain_days);
        if aggregates != 0 && (raw == 0 || aggregates < raw) {
            let span = find(t, "aggregate_retain_days").map(Value::span);
            v.error(
                "store.aggregate_retain_days",
                span.as_ref(),
                format!(
                    "{aggregates} days is shorter than the raw rows are kept (retain_days = {raw}{}): reports read \
                     whole hours from the aggregates, so they must be kept at least as long (or 0, for ever)",
                    if raw == 0 { ", for ever" } else { "" }
                ),
            );
        }
        settings.aggregate_retain_days = aggregates;
    }
    settings
}

/// `api_key_env` and `api_key_envs`: each variable set, none twice.
fn provider_keys(v: &mut V<'_>, t: &Table<'_>, path: &str, options: &Options<'_>) -> Vec<String> {
    let mut api_key_envs = Vec::new();
    if let Some((env_name, s)) = get_str(v, t, path, "api_key_env") {
        api_key_envs.push((env_name, s, format!("{path}.api_key_env")));
    }
    for (j, (env_name, s)) in get_str_list(v, t, path, "api_key_envs").into_iter().enumerate() {
        api_key_envs.push((env_name, s, format!("{path}.api_key_envs[{j}]")));
    }
    for (j, (env_name, s, at)) in api_key_envs.iter().enumerate() {
        if let Err(message) = env_var(options.env, env_name, true, None, EnvKind::Text) {
            v.error(at, Some(s), message);
        }
        if api_key_envs[..j].iter().any(|(other, ..)| other == env_name) {
            v.error(at, Some(s), format!("{env_name} is listed twice"));
        }
    }
    api_key_envs.into_iter().map(|(e, ..)| e).collect()
}

/// Headers a provider's `headers` may not set: the key headers of every kind,
/// the versions the gateway sends, and the message's own framing.
const RESERVED_HEADERS: [&str; 11] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "anthropic-version",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "traceparent",
];

/// `headers`: names of letters, digits, '-' and '_'; printable ASCII values.
fn provider_headers(v: &mut V<'_>, t: &Table<'_>, path: &str) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    let Some((table, _)) = get_table(v, t, path, "headers") else { return headers };
    for (name, value) in table {
        let at = format!("{path}.headers.{}", name.get_ref());
        let valid_name = !name.get_ref().is_empty()
            && name.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid_name {
            v.error(&at, Some(&name.span()), "a header name is letters, digits, '-' and '_'");
        }
        if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name.get_ref())) {
            v.error(
                &at,
                Some(&name.span()),
                "is set by the gateway (keys go in api_key_env/api_key_envs, the version in anthropic_version)",
            );
        }
        match value.get_ref().as_str() {
            Some(text) if text.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) => {
                headers.insert(name.get_ref().to_string(), text.to_owned());
            }
            Some(_) => v.error(&at, Some(&value.span()), "a header value is printable ASCII"),
            None => type_error(v, &at, value, "a string"),
        }
    }
    headers
}

/// `requires`: tools the provider needs, checked when tool checks are on.
fn provider_requires(v: &mut V<'_>, t: &Table<'_>, path: &str, options: &Options<'_>) -> Vec<ToolRequirement> {
    let mut requires = Vec::new();
    for (j, (req, req_span)) in get_tables(v, t, "requires").into_iter().enumerate() {
        let req_path = format!("{path}.requires[{j}]");
        known_keys(v, req, &req_path, &["tool", "min_version"]);
        if let (Some((tool, _)), Some((min_version, _))) = (
            require_str(v, req, &req_span, &req_path, "tool"),
            require_str(v, req, &req_span, &req_path, "min_version"),
        ) {
            if options.check_tools
                && let Err(message) = check_tool(&tool, &min_version)
            {
                v.error(&req_path, Some(&req_span), message);
            }
            requires.push(ToolRequirement { tool, min_version });
        }
    }
    requires
}

fn providers(v: &mut V<'_>, root: &Table<'_>, options: &Options<'_>) -> Vec<Provider> {
    let mut out: Vec<Provider> = Vec::new();
    for (i, (t, span)) in get_tables(v, root, "providers").into_iter().enumerate() {
        let path = format!("providers[{i}]");
        known_keys(
            v,
            t,
            &path,
            &[
                "name",
                "kind",
                "base_url",
                "api_key_env",
                "api_key_envs",
                "headers",
                "unsupported_params",
                "api_version",
                "anthropic_version",
                "connect_timeout_ms",
                "request_timeout_ms",
                "first_token_timeout_ms",
                "stream_idle_timeout_ms",
                "include_usage",
                "responses",
                "max_upstream_body_bytes",
                "requires",
            ],
        );
        let name = require_str(v, t, &span, &path, "name");
        if let Some((n, s)) = &name
            && out.iter().any(|p| &p.name == n)
        {
            v.error(&format!("{path}.name"), Some(s), format!("provider {n:?} is defined twice"));
        }
        let kind = get_enum(v, t, &path, "kind", &ProviderKind::ALL.map(ProviderKind::as_str), &ProviderKind::ALL);
        if find(t, "kind").is_none() {
            v.error(
                &format!("{path}.kind"),
                Some(&span),
                "is required (openai, anthropic, gemini, azure or simulated)",
            );
        }
        let base_url = provider_base_url(v, t, &path, &span, kind);
        let api_key_envs = provider_keys(v, t, &path, options);
        let headers = provider_headers(v, t, &path);
        let unsupported_params =
            get_enum(v, t, &path, "unsupported_params", &["drop", "error"], &[Unsupported::Drop, Unsupported::Error])
                .unwrap_or_default();
        let api_version = get_str(v, t, &path, "api_version");
        if kind == Some(ProviderKind::Azure) && api_version.is_none() && find(t, "api_version").is_none() {
            v.error(
                &format!("{path}.api_version"),
                Some(&span),
                "is required for an azure provider (the api-version query parameter, e.g. \"2024-10-21\")",
            );
        }
        let anthropic_version =
            get_str(v, t, &path, "anthropic_version").map_or_else(|| "2023-06-01".to_owned(), |(text, _)| text);
        let connect = get_u64(v, t, &path, "connect_timeout_ms", 1..=60_000, 5_000);
        let request = get_u64(v, t, &path, "request_timeout_ms", 1..=600_000, 120_000);
        let first_token = get_u64(v, t, &path, "first_token_timeout_ms", 1..=3_600_000, 120_000);
        let stream_idle = get_u64(v, t, &path, "stream_idle_timeout_ms", 1..=3_600_000, 60_000);
        // Azure's API versions since 2024-10-21 take stream_options too.
        let include_usage = get_bool(v, t, &path, "include_usage")
            .unwrap_or(matches!(kind, Some(ProviderKind::Openai | ProviderKind::Azure)));
        let responses = get_bool(v, t, &path, "responses").unwrap_or(false);
        if responses && kind.is_some_and(|k| k != ProviderKind::Openai) {
            v.error(
                &format!("{path}.responses"),
                find(t, "responses").map(Spanned::span).as_ref(),
                "only an openai provider serves OpenAI's Responses API natively",
            );
        }
        let max_body = get_u64(v, t, &path, "max_upstream_body_bytes", 1_024..=(1 << 30), 32 << 20);
        let requires = provider_requires(v, t, &path, options);
        if let (Some((name, _)), Some(kind)) = (name, kind) {
            out.push(Provider {
                name,
                kind,
                base_url: base_url.map(|(u, _)| u),
                api_key_envs,
                headers,
                unsupported_params,
                api_version: api_version.map(|(a, _)| a),
                anthropic_version,
                connect_timeout_ms: connect,
                request_timeout_ms: request,
                first_token_timeout_ms: first_token,
                stream_idle_timeout_ms: stream_idle,
                include_usage,
                responses,
                max_upstream_body_bytes: max_body,
                requires,
            });
        }
    }
    out
}

/// A provider's `base_url`: required for a kind without a public default,
/// and an `http(s)` URL.
fn provider_base_url(
    v: &mut V<'_>,
    t: &Table<'_>,
    path: &str,
    span: &Range<usize>,
    kind: Option<ProviderKind>,
) -> Option<(String, Range<usize>)> {
    let base_url = get_str(v, t, path, "base_url");
    let remote = kind.filter(|k| *k != ProviderKind::Simulated);
    match (&base_url, remote) {
        (None, Some(kind)) if find(t, "base_url").is_none() && kind.default_base_url().is_none() => {
            v.error(&format!("{path}.base_url"), Some(span), format!("is required for an {} provider", kind.as_str()));
        }
        (Some((url, s)), Some(_)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            v.error(&format!("{path}.base_url"), Some(s), format!("{url:?} must start with http:// or https://"));
        }
        _ => {}
    }
    base_url
}

/// Where a model is in the file: its path, its id's span, its fallbacks' span.
#[derive(Debug, Clone, Default)]
struct ModelPlace {
    path: String,
    id: Range<usize>,
    fallbacks: Range<usize>,
}

/// What `[[models]]` gives, by model id besides the specs.
struct ModelParts {
    specs: Vec<ModelSpec>,
    fallbacks: BTreeMap<String, Vec<String>>,
    paths: BTreeMap<String, PathBuf>,
    hedges: BTreeMap<String, HedgeAfter>,
    /// Where each model is in the file, for later cross-checks.
    places: BTreeMap<String, ModelPlace>,
}

const MODEL_KEYS: &[&str] = &[
    "id",
    "provider",
    "display_name",
    "upstream",
    "status",
    "enabled",
    "priority",
    "categories",
    "context_window",
    "max_output_tokens",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "cached_input_price_per_mtok",
    "cache_write_price_per_mtok",
    "reasoning_price_per_mtok",
    "quality",
    "typical_latency_ms",
    "languages",
    "primary_language",
    "capabilities",
    "embedding_dimensions",
    "local",
    "memory_mb",
    "path",
    "fallbacks",
    "hedge_after",
    "tags",
];

fn models(v: &mut V<'_>, root: &Table<'_>, providers: &[Provider], options: &Options<'_>) -> ModelParts {
    let mut specs: Vec<ModelSpec> = Vec::new();
    let mut fallbacks = BTreeMap::new();
    let mut paths = BTreeMap::new();
    let mut hedges = BTreeMap::new();
    // Model id -> (its path in the file, its span), for later cross-checks.
    let mut spans = BTreeMap::new();
    let provider_names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    let categories: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
    for (i, (t, span)) in get_tables(v, root, "models").into_iter().enumerate() {
        let path = format!("models[{i}]");
        known_keys(v, t, &path, MODEL_KEYS);
        let id = require_str(v, t, &span, &path, "id");
        let provider = require_str(v, t, &span, &path, "provider");
        if let Some((p, s)) = &provider
            && !provider_names.contains(&p.as_str())
        {
            let hint = did_you_mean(p, &provider_names);
            v.error(&format!("{path}.provider"), Some(s), format!("unknown provider {p:?}{hint}"));
        }
        let (Some((id, id_span)), Some((provider, _))) = (id, provider) else { continue };
        if spans.contains_key(&id) {
            v.error(&format!("{path}.id"), Some(&id_span), format!("model {id:?} is defined twice"));
            continue;
        }
        let mut spec = ModelSpec::new(id.clone(), provider);
        model_details(v, t, &path, &span, &mut spec, &categories);
        if let Some((dir, s)) = get_str(v, t, &path, "path") {
            let dir = options.base_dir.join(dir);
            if options.check_files {
                for problem in model_dir_problems(&dir, &MODEL_FILES) {
                    v.error(&format!("{path}.path"), Some(&s), format!("{}: {problem}", dir.display()));
                }
            }
            paths.insert(id.clone(), dir);
        }
        if let Some(hedge) = get_hedge(v, t, &path) {
            hedges.insert(id.clone(), hedge);
        }
        let chain: Vec<(String, Range<usize>)> = get_str_list(v, t, &path, "fallbacks");
        fallbacks.insert(id.clone(), chain.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>());
        let fallbacks_span = find(t, "fallbacks").map_or(id_span.clone(), Spanned::span);
        spans.insert(id.clone(), ModelPlace { path: path.clone(), id: id_span.clone(), fallbacks: fallbacks_span });
        for problem in spec.problems() {
            let at = format!("{path}.{}", problem.field);
            if !v.errors.iter().any(|e| e.path == at) {
                v.error(&at, Some(&id_span), problem.message);
            }
        }
        specs.push(spec);
    }
    // Fallbacks must name models of the file that can do the model's job.
    let ids: Vec<String> = specs.iter().map(|m| m.id.clone()).collect();
    for (id, chain) in &fallbacks {
        let ModelPlace { path, fallbacks: span, .. } = spans[id].clone();
        let named = specs.iter().find(|m| m.id == *id);
        for (j, target) in chain.iter().enumerate() {
            let at = format!("{path}.fallbacks[{j}]");
            if !ids.contains(target) {
                let hint = did_you_mean(target, &ids.iter().map(String::as_str).collect::<Vec<_>>());
                v.error(&at, Some(&span), format!("unknown model {target:?}{hint}"));
            } else if target == id {
                v.error(&at, Some(&span), "a model cannot be its own fallback");
            } else if let (Some(named), Some(other)) = (named, specs.iter().find(|m| m.id == *target))
                && let Some(why) = embedding_mismatch(named, other)
            {
                v.error(&at, Some(&span), format!("{target:?} cannot stand in for {id:?}: {why}"));
            }
        }
    }
    // An embedding model on a provider kind without an embeddings API.
    for spec in &specs {
        let kind = providers.iter().find(|p| p.name == spec.provider).map(|p| p.kind);
        if spec.capabilities.embeddings && kind == Some(ProviderKind::Anthropic) {
            let ModelPlace { path, id: span, .. } = spans[&spec.id].clone();
            v.error(
                &format!("{path}.capabilities"),
                Some(&span),
                format!("provider {:?} is of kind \"anthropic\", which has no embeddings API", spec.provider),
            );
        }
    }
    ModelParts { specs, fallbacks, paths, hedges, places: spans }
}

/// Why `other` cannot stand in for `named` as an embedding model, if it
/// cannot: one embeds and the other does not, or their vectors' lengths
/// differ or are unknown (an index built from one cannot take another's).
fn embedding_mismatch(named: &ModelSpec, other: &ModelSpec) -> Option<String> {
    match (named.capabilities.embeddings, other.capabilities.embeddings) {
        (false, false) => None,
        (true, false) => Some("it is not an embedding model".to_owned()),
        (false, true) => Some("it is an embedding model".to_owned()),
        (true, true) => match (named.embedding_dimensions, other.embedding_dimensions) {
            (Some(a), Some(b)) if a == b => None,
            (Some(a), Some(b)) => Some(format!("its vectors have {b} dimensions, not {a}")),
            _ => Some("both must state embedding_dimensions, and the same".to_owned()),
        },
    }
}

/// `hedge_after`: milliseconds (1..=600000) or `"p95"`.
fn get_hedge(v: &mut V<'_>, t: &Table<'_>, path: &str) -> Option<HedgeAfter> {
    const MAX_MS: i64 = 600_000;
    let value = find(t, "hedge_after")?;
    let got = match value.get_ref() {
        DeValue::String(s) if s.as_ref() == "p95" => return Some(HedgeAfter::P95),
        DeValue::String(s) => format!("{s:?}{}", did_you_mean(s, &["p95"])),
        DeValue::Float(f) => f.as_str().to_owned(),
        other => match integer_of(other) {
            Int::Value(n) if (1..=MAX_MS).contains(&n) => {
                return u64::try_from(n).ok().map(|ms| HedgeAfter::Fixed(std::time::Duration::from_millis(ms)));
            }
            Int::Value(n) => n.to_string(),
            Int::TooLarge => "an integer too large".to_owned(),
            Int::NotInteger => {
                let kind = other.type_str();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                format!("{article} {kind}")
            }
        },
    };
    v.error(
        &join(path, "hedge_after"),
        Some(&value.span()),
        format!("expected milliseconds (1 to {MAX_MS}) or \"p95\", got {got}"),
    );
    None
}

/// Everything of a model entry but its id, provider, path, fallbacks and hedge.
fn model_details(
    v: &mut V<'_>,
    t: &Table<'_>,
    path: &str,
    span: &Range<usize>,
    spec: &mut ModelSpec,
    categories: &[&str],
) {
    spec.display_name = get_str(v, t, path, "display_name").map(|(s, _)| s).unwrap_or_default();
    spec.upstream = get_str(v, t, path, "upstream").map(|(s, _)| s).unwrap_or_default();
    if let Some(status) = get_enum(
        v,
        t,
        path,
        "status",
        &["active", "inactive", "deprecated", "experimental", "maintenance"],
        &[
            modelfleet_registry::ModelStatus::Active,
            modelfleet_registry::ModelStatus::Inactive,
            modelfleet_registry::ModelStatus::Deprecated,
            modelfleet_registry::ModelStatus::Experimental,
            modelfleet_registry::ModelStatus::Maintenance,
        ],
    ) {
        spec.status = status;
    }
    spec.enabled = get_bool(v, t, path, "enabled").unwrap_or(true);
    spec.priority = get_int(v, t, path, "priority", 0..=100).and_then(|p| u8::try_from(p).ok()).unwrap_or(0);
    for (j, (name, s)) in get_str_list(v, t, path, "categories").into_iter().enumerate() {
        match Category::ALL.iter().find(|c| c.as_str() == name) {
            Some(c) => spec.categories.push(*c),
            None => {
                let hint = did_you_mean(&name, categories);
                v.error(
                    &format!("{path}.categories[{j}]"),
                    Some(&s),
                    format!("unknown category {name:?}{hint}; expected one of: {}", categories.join(", ")),
                );
            }
        }
    }
    spec.context_window = get_int(v, t, path, "context_window", 1..=100_000_000).and_then(|n| u32::try_from(n).ok());
    spec.max_output_tokens =
        get_int(v, t, path, "max_output_tokens", 1..=100_000_000).and_then(|n| u32::try_from(n).ok());
    if let (Some(w), Some(o)) = (spec.context_window, spec.max_output_tokens)
        && o > w
    {
        v.error(
            &format!("{path}.max_output_tokens"),
            find(t, "max_output_tokens").map(Spanned::span).as_ref(),
            format!("{o} exceeds the context window of {w}"),
        );
    }
    let input = get_money(v, t, path, "input_price_per_mtok");
    let output = get_money(v, t, path, "output_price_per_mtok");
    let cached = get_money(v, t, path, "cached_input_price_per_mtok");
    let cache_write = get_money(v, t, path, "cache_write_price_per_mtok");
    let reasoning = get_money(v, t, path, "reasoning_price_per_mtok");
    let (has_input, has_output) =
        (find(t, "input_price_per_mtok").is_some(), find(t, "output_price_per_mtok").is_some());
    if has_input != has_output {
        v.error(
            path,
            Some(span),
            "give both input_price_per_mtok and output_price_per_mtok (or neither, for a local model)",
        );
    }
    spec.pricing = match (input, output) {
        (Some(input_per_mtok), Some(output_per_mtok)) => Some(Pricing {
            input_per_mtok,
            output_per_mtok,
            cached_input_per_mtok: cached,
            cache_write_per_mtok: cache_write,
            reasoning_per_mtok: reasoning,
        }),
        _ => None,
    };
    spec.quality = get_float(v, t, path, "quality", 0.0..=1.0);
    spec.typical_latency_ms =
        get_int(v, t, path, "typical_latency_ms", 1..=3_600_000).and_then(|n| u32::try_from(n).ok());
    spec.languages = get_str_list(v, t, path, "languages").into_iter().map(|(l, _)| l).collect();
    spec.primary_language =
        get_str(v, t, path, "primary_language").map(|(l, _)| l).or_else(|| spec.languages.first().cloned());
    spec.tags = get_str_list(v, t, path, "tags").into_iter().map(|(l, _)| l).collect();
    let capabilities = model_capabilities(v, t, path);
    spec.capabilities = capabilities;
    spec.embedding_dimensions =
        get_int(v, t, path, "embedding_dimensions", 1..=65_536).and_then(|n| u32::try_from(n).ok());
    spec.local = get_bool(v, t, path, "local").unwrap_or(false);
    spec.memory_mb = get_int(v, t, path, "memory_mb", 1..=16_777_216).and_then(|n| u64::try_from(n).ok());
}

/// A model's `capabilities` list.
fn model_capabilities(v: &mut V<'_>, t: &Table<'_>, path: &str) -> Capabilities {
    // Without a `capabilities` list a model is taken to stream (every
    // OpenAI-compatible chat API does) and nothing more; a list states
    // them exactly. A streamed request needs a model that streams.
    let mut capabilities = Capabilities { streaming: find(t, "capabilities").is_none(), ..Capabilities::default() };
    for (j, (name, s)) in get_str_list(v, t, path, "capabilities").into_iter().enumerate() {
        let all = [
            ("streaming", Capability::Streaming),
            ("tools", Capability::Tools),
            ("json_mode", Capability::JsonMode),
            ("vision", Capability::Vision),
            ("embeddings", Capability::Embeddings),
        ];
        match all.iter().find(|(n, _)| *n == name) {
            Some((_, Capability::Streaming)) => capabilities.streaming = true,
            Some((_, Capability::Tools)) => capabilities.tools = true,
            Some((_, Capability::JsonMode)) => capabilities.json_mode = true,
            Some((_, Capability::Vision)) => capabilities.vision = true,
            Some((_, Capability::Embeddings)) => capabilities.embeddings = true,
            None => {
                let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
                let hint = did_you_mean(&name, &names);
                v.error(&format!("{path}.capabilities[{j}]"), Some(&s), format!("unknown capability {name:?}{hint}"));
            }
        }
    }
    if capabilities.embeddings
        && (capabilities.streaming || capabilities.tools || capabilities.json_mode || capabilities.vision)
    {
        v.error(
            &format!("{path}.capabilities"),
            find(t, "capabilities").map(Spanned::span).as_ref(),
            "an embedding model serves embeddings requests only: \"embeddings\" goes alone",
        );
    }
    capabilities
}

fn routes(v: &mut V<'_>, root: &Table<'_>, models: &[ModelSpec]) -> Vec<Route> {
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    let mut out: Vec<Route> = Vec::new();
    let strategies = ["weighted_score", "cheapest", "fastest", "highest_quality", "priority_order", "weighted_random"];
    for (i, (t, span)) in get_tables(v, root, "routes").into_iter().enumerate() {
        let path = format!("routes[{i}]");
        known_keys(v, t, &path, &["name", "strategy", "seed", "fallbacks", "hedge_after", "requirements"]);
        let Some((name, name_span)) = require_str(v, t, &span, &path, "name") else { continue };
        if ids.contains(&name.as_str()) || out.iter().any(|r| r.name == name) {
            v.error(&format!("{path}.name"), Some(&name_span), format!("{name:?} is already a model or route name"));
        }
        let seed = get_int(v, t, &path, "seed", 0..=i64::MAX).and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        let strategy = get_enum(
            v,
            t,
            &path,
            "strategy",
            &strategies,
            &[
                Strategy::WeightedScore,
                Strategy::Cheapest,
                Strategy::Fastest,
                Strategy::HighestQuality,
                Strategy::PriorityOrder,
                Strategy::WeightedRandom { seed },
            ],
        )
        .unwrap_or_default();
        let fallbacks: Vec<String> = get_str_list(v, t, &path, "fallbacks")
            .into_iter()
            .enumerate()
            .filter_map(|(j, (target, s))| {
                if ids.contains(&target.as_str()) {
                    Some(target)
                } else {
                    let hint = did_you_mean(&target, &ids);
                    v.error(&format!("{path}.fallbacks[{j}]"), Some(&s), format!("unknown model {target:?}{hint}"));
                    None
                }
            })
            .collect();
        let requirements = get_table(v, t, &path, "requirements")
            .map(|(r, _)| requirements(v, r, &format!("{path}.requirements")))
            .unwrap_or_default();
        let hedge = get_hedge(v, t, &path);
        out.push(Route { name, requirements, strategy, fallbacks, hedge });
    }
    out
}

fn requirements(v: &mut V<'_>, t: &Table<'_>, path: &str) -> Requirements {
    known_keys(
        v,
        t,
        path,
        &[
            "category",
            "language",
            "prompt_tokens",
            "max_output_tokens",
            "capabilities",
            "embedding_dimensions",
            "max_cost",
            "min_quality",
            "max_latency_ms",
            "providers",
            "exclude_providers",
            "locality",
            "prefer_free",
            "prefer_local",
            "n",
        ],
    );
    let categories: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
    let capabilities = Capability::ALL;
    Requirements {
        category: get_enum(v, t, path, "category", &categories, &Category::ALL),
        language: get_str(v, t, path, "language").map(|(l, _)| l),
        prompt_tokens: get_int(v, t, path, "prompt_tokens", 0..=100_000_000)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        max_output_tokens: get_int(v, t, path, "max_output_tokens", 0..=100_000_000)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        capabilities: get_str_list(v, t, path, "capabilities")
            .into_iter()
            .filter_map(|(c, s)| {
                let found = capabilities.iter().find(|cap| cap.to_string() == c).copied();
                if found.is_none() {
                    v.error(&format!("{path}.capabilities"), Some(&s), format!("unknown capability {c:?}"));
                }
                found
            })
            .collect(),
        embedding_dimensions: get_int(v, t, path, "embedding_dimensions", 1..=65_536)
            .and_then(|n| u32::try_from(n).ok()),
        // Measured per request, never configured.
        unmeasured: false,
        max_cost: get_money(v, t, path, "max_cost"),
        min_quality: get_float(v, t, path, "min_quality", 0.0..=1.0),
        max_latency_ms: get_int(v, t, path, "max_latency_ms", 1..=3_600_000).and_then(|n| u32::try_from(n).ok()),
        providers: get_str_list(v, t, path, "providers").into_iter().map(|(p, _)| p).collect(),
        exclude_providers: get_str_list(v, t, path, "exclude_providers").into_iter().map(|(p, _)| p).collect(),
        locality: get_enum(
            v,
            t,
            path,
            "locality",
            &["any", "local_only", "cloud_only"],
            &[Locality::Any, Locality::LocalOnly, Locality::CloudOnly],
        ),
        prefer_free: get_bool(v, t, path, "prefer_free").unwrap_or(false),
        prefer_local: get_bool(v, t, path, "prefer_local").unwrap_or(false),
        n: get_int(v, t, path, "n", 1..=128).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        available_memory_mb: None,
    }
}

fn retry(v: &mut V<'_>, root: &Table<'_>) -> RetryConfig {
    let defaults = RetryConfig::default();
    let Some((t, span)) = get_table(v, root, "", "retry") else { return defaults };
    known_keys(
        v,
        t,
        "retry",
        &[
            "max_attempts",
            "initial_backoff_ms",
            "multiplier",
            "max_backoff_ms",
            "jitter",
            "deadline_ms",
            "max_retry_after_ms",
        ],
    );
    let ms = |n: u64| std::time::Duration::from_millis(n);
    let config = RetryConfig {
        max_attempts: get_int(v, t, "retry", "max_attempts", 1..=20)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.max_attempts),
        initial_backoff: get_int(v, t, "retry", "initial_backoff_ms", 0..=60_000)
            .and_then(|n| u64::try_from(n).ok())
            .map_or(defaults.initial_backoff, ms),
        multiplier: get_float(v, t, "retry", "multiplier", 1.0..=10.0).unwrap_or(defaults.multiplier),
        max_backoff: get_int(v, t, "retry", "max_backoff_ms", 0..=600_000)
            .and_then(|n| u64::try_from(n).ok())
            .map_or(defaults.max_backoff, ms),
        jitter: get_enum(
            v,
            t,
            "retry",
            "jitter",
            &["none", "full", "equal"],
            &[Jitter::None, Jitter::Full, Jitter::Equal],
        )
        .unwrap_or(defaults.jitter),
        deadline: get_int(v, t, "retry", "deadline_ms", 1..=600_000)
            .and_then(|n| u64::try_from(n).ok())
            .map(ms)
            .or(defaults.deadline),
        max_retry_after: get_int(v, t, "retry", "max_retry_after_ms", 0..=600_000)
            .and_then(|n| u64::try_from(n).ok())
            .map_or(defaults.max_retry_after, ms),
    };
    if let Err(modelfleet_errors::Error::InvalidRetryConfig { field, reason }) = RetryPolicy::new(config.clone()) {
        v.error(&format!("retry.{field}"), Some(&span), reason);
    }
    config
}

fn resilience(v: &mut V<'_>, root: &Table<'_>) -> ResilienceSettings {
    let mut s = ResilienceSettings::default();
    if let Some((t, _)) = get_table(v, root, "", "cooldown") {
        cooldown(v, t, &mut s);
    }
    if let Some((t, _)) = get_table(v, root, "", "circuit") {
        circuit(v, t, &mut s);
    }
    if let Some((t, _)) = get_table(v, root, "", "fallback") {
        fallback(v, t, &mut s);
    }
    s
}

fn cooldown(v: &mut V<'_>, t: &Table<'_>, s: &mut ResilienceSettings) {
    const P: &str = "cooldown";
    known_keys(
        v,
        t,
        P,
        &[
            "short_ms",
            "long_ms",
            "escalating_base_ms",
            "escalating_max_ms",
            "timeouts_to_eject",
            "request_specific_to_eject",
            "multiplier_decay_ms",
            "streak_decay_ms",
        ],
    );
    s.cooldown_short_ms = get_u64(v, t, P, "short_ms", 0..=3_600_000, s.cooldown_short_ms);
    s.cooldown_long_ms = get_u64(v, t, P, "long_ms", 0..=86_400_000, s.cooldown_long_ms);
    let base = get_int(v, t, P, "escalating_base_ms", 1..=3_600_000).and_then(|n| u64::try_from(n).ok());
    let max = get_int(v, t, P, "escalating_max_ms", 1..=86_400_000).and_then(|n| u64::try_from(n).ok());
    // Compare only values that are not already wrong.
    let base_ok = base.is_some() || find(t, "escalating_base_ms").is_none();
    let max_ok = max.is_some() || find(t, "escalating_max_ms").is_none();
    s.cooldown_escalating_base_ms = base.unwrap_or(s.cooldown_escalating_base_ms);
    s.cooldown_escalating_max_ms = max.unwrap_or(s.cooldown_escalating_max_ms);
    let (base, max) = (s.cooldown_escalating_base_ms, s.cooldown_escalating_max_ms);
    if base_ok && max_ok && max < base {
        let (span, message) = match (find(t, "escalating_max_ms"), find(t, "escalating_base_ms")) {
            (Some(value), _) => (Some(value.span()), format!("{max} is less than escalating_base_ms ({base})")),
            (None, at) => (
                at.map(Spanned::span),
                format!("the default {max} is less than escalating_base_ms ({base}): set escalating_max_ms too"),
            ),
        };
        v.error("cooldown.escalating_max_ms", span.as_ref(), message);
    }
    s.cooldown_timeouts_to_eject = get_u32(v, t, P, "timeouts_to_eject", 1..=1_000, s.cooldown_timeouts_to_eject);
    s.cooldown_request_specific_to_eject =
        get_u32(v, t, P, "request_specific_to_eject", 1..=1_000, s.cooldown_request_specific_to_eject);
    s.cooldown_multiplier_decay_ms =
        get_u64(v, t, P, "multiplier_decay_ms", 1..=86_400_000, s.cooldown_multiplier_decay_ms);
    s.cooldown_streak_decay_ms = get_u64(v, t, P, "streak_decay_ms", 1..=86_400_000, s.cooldown_streak_decay_ms);
}

fn circuit(v: &mut V<'_>, t: &Table<'_>, s: &mut ResilienceSettings) {
    const P: &str = "circuit";
    known_keys(
        v,
        t,
        P,
        &[
            "window_ms",
            "min_requests",
            "failure_ratio",
            "open_ms",
            "half_open_probes",
            "slow_call_ms",
            "slow_call_ratio",
        ],
    );
    s.circuit_window_ms = get_u64(v, t, P, "window_ms", 100..=3_600_000, s.circuit_window_ms);
    s.circuit_min_requests = get_u32(v, t, P, "min_requests", 1..=100_000, s.circuit_min_requests);
    s.circuit_failure_ratio = get_float(v, t, P, "failure_ratio", 0.01..=1.0).unwrap_or(s.circuit_failure_ratio);
    s.circuit_open_ms = get_u64(v, t, P, "open_ms", 100..=3_600_000, s.circuit_open_ms);
    s.circuit_half_open_probes = get_u32(v, t, P, "half_open_probes", 1..=100, s.circuit_half_open_probes);
    s.circuit_slow_call_ms = get_u64(v, t, P, "slow_call_ms", 1..=3_600_000, s.circuit_slow_call_ms);
    s.circuit_slow_call_ratio = get_float(v, t, P, "slow_call_ratio", 0.01..=1.0).unwrap_or(s.circuit_slow_call_ratio);
}

fn fallback(v: &mut V<'_>, t: &Table<'_>, s: &mut ResilienceSettings) {
    const P: &str = "fallback";
    known_keys(
        v,
        t,
        P,
        &[
            "max_attempts_per_request",
            "max_ejected_percent",
            "retry_budget_percent",
            "retry_budget_min_per_sec",
            "retry_budget_window_ms",
        ],
    );
    s.max_attempts_per_request = get_u32(v, t, P, "max_attempts_per_request", 1..=100, s.max_attempts_per_request);
    s.max_ejected_percent = get_int(v, t, P, "max_ejected_percent", 0..=100)
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(s.max_ejected_percent);
    s.retry_budget_percent =
        get_float(v, t, P, "retry_budget_percent", 0.0..=1_000.0).unwrap_or(s.retry_budget_percent);
    s.retry_budget_min_per_sec =
        get_float(v, t, P, "retry_budget_min_per_sec", 0.0..=10_000.0).unwrap_or(s.retry_budget_min_per_sec);
    s.retry_budget_window_ms = get_u64(v, t, P, "retry_budget_window_ms", 1_000..=3_600_000, s.retry_budget_window_ms);
}

fn weights(v: &mut V<'_>, root: &Table<'_>) -> Weights {
    let Some((selector, _)) = get_table(v, root, "", "selector") else { return Weights::default() };
    known_keys(v, selector, "selector", &["weights"]);
    let Some((t, span)) = get_table(v, selector, "selector", "weights") else { return Weights::default() };
    let mut w = WeightValues::default();
    let names = ["quality", "reliability", "language", "cost", "speed", "load", "category", "priority"];
    known_keys(v, t, "selector.weights", &names);
    for name in names {
        if let Some(x) = get_float(v, t, "selector.weights", name, 0.0..=Weights::MAX) {
            match name {
                "quality" => w.quality = x,
                "reliability" => w.reliability = x,
                "language" => w.language = x,
                "cost" => w.cost = x,
                "speed" => w.speed = x,
                "load" => w.load = x,
                "category" => w.category = x,
                _ => w.priority = x,
            }
        }
    }
    Weights::new(w).unwrap_or_else(|e| {
        v.error("selector.weights", Some(&span), e.to_string());
        Weights::default()
    })
}

fn budgets(v: &mut V<'_>, root: &Table<'_>, providers: &[Provider], models: &[ModelSpec]) -> (Vec<BudgetSpec>, i16) {
    let mut offset = 0;
    if let Some((t, _)) = get_table(v, root, "", "ledger") {
        known_keys(v, t, "ledger", &["utc_offset_minutes"]);
        offset = get_int(v, t, "ledger", "utc_offset_minutes", -1_080..=1_080)
            .and_then(|n| i16::try_from(n).ok())
            .unwrap_or(0);
    }
    let mut out: Vec<BudgetSpec> = Vec::new();
    for (i, (t, span)) in get_tables(v, root, "budgets").into_iter().enumerate() {
        let path = format!("budgets[{i}]");
        known_keys(v, t, &path, &["scope", "period", "limit", "enforcement", "thresholds"]);
        let scope = require_str(v, t, &span, &path, "scope").and_then(|(text, s)| {
            let scope = match text.split_once(':') {
                None if text == "global" => Some(Scope::Global),
                Some(("provider", p)) => {
                    if !providers.iter().any(|x| x.name == p) {
                        v.error(&format!("{path}.scope"), Some(&s), format!("unknown provider {p:?}"));
                    }
                    Some(Scope::Provider(p.to_owned()))
                }
                Some(("model", m)) => {
                    if !models.iter().any(|x| x.id == m) {
                        v.error(&format!("{path}.scope"), Some(&s), format!("unknown model {m:?}"));
                    }
                    Some(Scope::Model(m.to_owned()))
                }
                Some(("key", k)) if !k.is_empty() => Some(Scope::Key(k.to_owned())),
                _ => None,
            };
            if scope.is_none() {
                v.error(
                    &format!("{path}.scope"),
                    Some(&s),
                    format!("{text:?} is not a scope: use global, provider:<name>, model:<id> or key:<name>"),
                );
            }
            scope
        });
        let period = get_enum(
            v,
            t,
            &path,
            "period",
            &["daily", "weekly", "monthly", "none"],
            &[Period::Daily, Period::Weekly, Period::Monthly, Period::None],
        );
        if find(t, "period").is_none() {
            v.error(&format!("{path}.period"), Some(&span), "is required (daily, weekly, monthly or none)");
        }
        let limit = get_money(v, t, &path, "limit");
        if find(t, "limit").is_none() {
            v.error(&format!("{path}.limit"), Some(&span), "is required (dollars)");
        }
        let enforcement =
            get_enum(v, t, &path, "enforcement", &["hard", "soft"], &[Enforcement::Hard, Enforcement::Soft])
                .unwrap_or_default();
        let thresholds: Vec<u8> = match find(t, "thresholds") {
            None => vec![50, 75, 90, 100],
            Some(value) => match value.get_ref().as_array() {
                Some(items) => items
                    .iter()
                    .filter_map(|item| match integer_of(item.get_ref()) {
                        Int::Value(n @ 1..=200) => u8::try_from(n).ok(),
                        _ => {
                            v.error(
                                &format!("{path}.thresholds"),
                                Some(&item.span()),
                                "thresholds are whole percents in 1..=200",
                            );
                            None
                        }
                    })
                    .collect(),
                None => {
                    type_error(v, &format!("{path}.thresholds"), value, "an array of percents");
                    Vec::new()
                }
            },
        };
        if let (Some(scope), Some(period), Some(limit)) = (scope, period, limit) {
            if out.iter().any(|b| b.scope == scope && b.period == period) {
                v.error(&path, Some(&span), format!("a {period:?} budget for {scope} is defined twice"));
            }
            out.push(BudgetSpec { scope, period, limit, enforcement, thresholds });
        }
    }
    (out, offset)
}

fn cache(v: &mut V<'_>, root: &Table<'_>) -> CacheSettings {
    let mut s = CacheSettings { enabled: false, ttl_secs: 3_600, max_entries: 10_000, max_bytes: 64 << 20 };
    let Some((t, _)) = get_table(v, root, "", "cache") else { return s };
    known_keys(v, t, "cache", &["enabled", "ttl_secs", "max_entries", "max_bytes"]);
    s.enabled = get_bool(v, t, "cache", "enabled").unwrap_or(true);
    s.ttl_secs = get_u64(v, t, "cache", "ttl_secs", 1..=2_592_000, s.ttl_secs);
    s.max_entries = get_u64(v, t, "cache", "max_entries", 1..=10_000_000, s.max_entries);
    s.max_bytes = get_u64(v, t, "cache", "max_bytes", 1_024..=(1 << 40), s.max_bytes);
    s
}

/// `[cluster]`: the PostgreSQL URL from `postgres_url` or the variable
/// `postgres_url_env` names (one of them), a schema that is an identifier;
/// optionally the Redis URL the same way, and a plain key prefix.
fn cluster(v: &mut V<'_>, root: &Table<'_>, options: &Options<'_>) -> Option<ClusterSettings> {
    let (t, span) = get_table(v, root, "", "cluster")?;
    known_keys(
        v,
        t,
        "cluster",
        &[
            "postgres_url",
            "postgres_url_env",
            "schema",
            "replica",
            "timeout_ms",
            "hold_ttl_ms",
            "leases",
            "lease_ttl_ms",
            "redis_url",
            "redis_url_env",
            "redis_prefix",
        ],
    );
    let url = match (get_str(v, t, "cluster", "postgres_url"), get_str(v, t, "cluster", "postgres_url_env")) {
        (Some(_), Some((_, s))) => {
            v.error("cluster.postgres_url_env", Some(&s), "give postgres_url or postgres_url_env, not both");
            None
        }
        (Some((url, _)), None) => Some(url),
        (None, Some((name, s))) => match env_var(options.env, &name, true, None, EnvKind::Text) {
            Ok(EnvValue::Text(url)) => Some(url),
            Ok(_) => None,
            Err(message) => {
                v.error("cluster.postgres_url_env", Some(&s), message);
                None
            }
        },
        (None, None) => {
            v.error("cluster.postgres_url", Some(&span), "is required (or postgres_url_env, when it holds a password)");
            None
        }
    };
    if let Some(url) = &url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        // The URL itself may hold a password: never in a message.
        v.error("cluster.postgres_url", None, "must start with postgres:// or postgresql://");
    }
    let schema = get_str(v, t, "cluster", "schema").map_or_else(|| "modelfleet".to_owned(), |(s, _)| s);
    let valid_schema = schema.len() <= 63
        && schema.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_schema {
        v.error(
            "cluster.schema",
            find(t, "schema").map(Spanned::span).as_ref(),
            format!("{schema:?}: a lower-case identifier of at most 63 letters, digits and underscores"),
        );
    }
    let replica = get_str(v, t, "cluster", "replica").map(|(r, _)| r);
    let timeout_ms = get_u64(v, t, "cluster", "timeout_ms", 100..=60_000, 2_000);
    let hold_ttl_ms = get_u64(v, t, "cluster", "hold_ttl_ms", 1_000..=86_400_000, 3_600_000);
    let leases = get_bool(v, t, "cluster", "leases").unwrap_or(true);
    let lease_ttl_ms = get_u64(v, t, "cluster", "lease_ttl_ms", 1_000..=3_600_000, 10_000);
    if lease_ttl_ms < timeout_ms.saturating_mul(4) {
        v.error(
            "cluster.lease_ttl_ms",
            find(t, "lease_ttl_ms").or_else(|| find(t, "timeout_ms")).map(Spanned::span).as_ref(),
            format!(
                "{lease_ttl_ms} ms is less than four times timeout_ms ({timeout_ms} ms): a lease renewed every third of \
                 its life must survive a renewal that times out"
            ),
        );
    }
    let redis_url = redis_url(v, t, options);
    let redis_prefix = get_str(v, t, "cluster", "redis_prefix").map_or_else(|| "modelfleet".to_owned(), |(s, _)| s);
    let valid_prefix = !redis_prefix.is_empty()
        && redis_prefix.len() <= 64
        && redis_prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b':' | b'-'));
    if !valid_prefix {
        v.error(
            "cluster.redis_prefix",
            find(t, "redis_prefix").map(Spanned::span).as_ref(),
            format!("{redis_prefix:?}: 1 to 64 lower-case letters, digits, '_', ':' or '-'"),
        );
    }
    Some(ClusterSettings {
        postgres_url: url.unwrap_or_default(),
        schema,
        replica,
        timeout_ms,
        hold_ttl_ms,
        leases,
        lease_ttl_ms,
        redis_url,
        redis_prefix,
    })
}

/// `[cluster]`'s Redis URL, from `redis_url` or the variable
/// `redis_url_env` names (at most one of them); `None` without either.
fn redis_url(v: &mut V<'_>, t: &Table<'_>, options: &Options<'_>) -> Option<String> {
    let url = match (get_str(v, t, "cluster", "redis_url"), get_str(v, t, "cluster", "redis_url_env")) {
        (Some(_), Some((_, s))) => {
            v.error("cluster.redis_url_env", Some(&s), "give redis_url or redis_url_env, not both");
            return None;
        }
        (Some((url, _)), None) => url,
        (None, Some((name, s))) => match env_var(options.env, &name, true, None, EnvKind::Text) {
            Ok(EnvValue::Text(url)) => url,
            Ok(_) => return None,
            Err(message) => {
                v.error("cluster.redis_url_env", Some(&s), message);
                return None;
            }
        },
        (None, None) => return None,
    };
    // The URL itself may hold a password: never in a message.
    if url.starts_with("rediss://") {
        v.error("cluster.redis_url", None, "rediss:// (TLS) is not supported: use redis://");
    } else if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
        v.error("cluster.redis_url", None, "must start with redis://, redis+unix:// or unix://");
    }
    Some(url)
}

fn metrics(v: &mut V<'_>, root: &Table<'_>) -> MetricsSettings {
    let mut s = MetricsSettings { enabled: true, window_secs: 60, port: None };
    let Some((t, _)) = get_table(v, root, "", "metrics") else { return s };
    known_keys(v, t, "metrics", &["enabled", "window_secs", "port"]);
    s.enabled = get_bool(v, t, "metrics", "enabled").unwrap_or(true);
    s.window_secs =
        get_int(v, t, "metrics", "window_secs", 1..=3_600).and_then(|n| u32::try_from(n).ok()).unwrap_or(60);
    if let Some(value) = find(t, "port") {
        s.port = check_port(v, "metrics.port", value);
    }
    s
}

/// Warns about priced models no budget covers.
fn expensive_without_budget(
    v: &mut V<'_>,
    models: &[ModelSpec],
    budgets: &[BudgetSpec],
    spans: &BTreeMap<String, ModelPlace>,
) {
    let threshold = Money::from_dollars(5);
    let global = budgets.iter().any(|b| b.scope == Scope::Global);
    for m in models {
        let Some(price) = m.pricing else { continue };
        let covered = global
            || budgets
                .iter()
                .any(|b| b.scope == Scope::Model(m.id.clone()) || b.scope == Scope::Provider(m.provider.clone()));
        if price.output_per_mtok >= threshold && !covered {
            let place = spans.get(&m.id).cloned().unwrap_or_default();
            v.warn(
                &place.path,
                Some(&place.id),
                format!("{} costs ${} per million output tokens and no budget covers it", m.id, price.output_per_mtok),
            );
        }
    }
}

/// A model whose cost cannot be bounded (a cloud model without a price, or
/// one with neither `max_output_tokens` nor `context_window`) is never
/// eligible for a request a hard budget would pay for: say so, once per model.
fn unbounded_under_hard_budget(
    v: &mut V<'_>,
    models: &[ModelSpec],
    budgets: &[BudgetSpec],
    server: &ServerSettings,
    spans: &BTreeMap<String, ModelPlace>,
) {
    let key_budget =
        server.api_keys.iter().find(|k| k.monthly_budget.is_some()).map(|k| format!("key:{} monthly", k.name));
    for m in models {
        // The selector's own rule, so this warning and selection agree.
        if modelfleet_selector::worst_case_cost(m, &Requirements::default()).is_some() {
            continue;
        }
        let why =
            if m.price().is_none() { "it has no price" } else { "it has neither max_output_tokens nor context_window" };
        let covering = budgets
            .iter()
            .filter(|b| b.enforcement == Enforcement::Hard)
            .find(|b| match &b.scope {
                Scope::Global | Scope::Key(_) => true,
                Scope::Provider(p) => *p == m.provider,
                Scope::Model(id) => *id == m.id,
            })
            .map(|b| format!("{} {}", b.scope, b.period))
            .or_else(|| key_budget.clone());
        if let Some(budget) = covering {
            let place = spans.get(&m.id).cloned().unwrap_or_default();
            v.warn(
                &place.path,
                Some(&place.id),
                format!(
                    "{}: its cost cannot be bounded ({why}), so it never serves a request that hard budget {budget} would pay for",
                    m.id
                ),
            );
        }
    }
}
