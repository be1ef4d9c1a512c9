//! Config validation tests: the shipped example, seed 002's checks, cross
//! references, the full report of a broken file, and arbitrary input.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
};

use proptest::prelude::*;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn check_text(text: &str, env: &HashMap<String, String>) -> Report {
    let lookup = |name: &str| env.get(name).cloned();
    let options = Options {
        env: &lookup,
        check_files: false,
        check_ports: false,
        check_tools: false,
        base_dir: PathBuf::from("/etc/modelfleet"),
    };
    validate(text, &options)
}

fn example_env() -> HashMap<String, String> {
    env_of(&[
        ("MODELFLEET_KEY_TEAM_A", "team-a-key-0123456789"),
        ("MODELFLEET_KEY_OPS", "ops-key-0123456789ab"),
        ("OPENAI_API_KEY", "sk-test"),
    ])
}

const EXAMPLE: &str = include_str!("../../../config/modelfleet.example.toml");

const QUICKSTART: &str = include_str!("../../../config/gateway.quickstart.toml");
const PROVIDERS: &str = include_str!("../../../config/providers.example.toml");

#[test]
fn the_readme_gateway_quickstart_is_valid() {
    let env = HashMap::from([("LOCAL_API_KEY".to_owned(), "anything".to_owned())]);
    let report = check_text(QUICKSTART, &env);
    assert!(report.is_valid() && report.warnings.is_empty(), "{report}");
    let config = report.config.unwrap();
    assert_eq!(config.model_fallbacks["fast-small"], ["steady", "sim-backup"]);
    assert_eq!(config.models[0].upstream_name(), "tiny");
    assert_eq!(config.routes[0].name, "cheap");
}

#[test]
fn the_shipped_example_is_valid_and_complete() {
    let report = check_text(EXAMPLE, &example_env());
    assert!(report.is_valid(), "{report}");
    assert!(report.warnings.is_empty(), "{report}");
    let config = report.config.unwrap();
    assert_eq!(config.server.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(config.server.api_keys.len(), 2);
    assert_eq!(config.providers.len(), 3);
    assert_eq!(config.models.len(), 4);
    assert_eq!(config.model_fallbacks["gpt-4o-mini"], ["llama-local"]);
    assert_eq!(config.routes[0].requirements.category, Some(modelfleet_registry::Category::Code));
    assert_eq!(config.budgets.len(), 2);
    assert_eq!(config.store.path, Some(PathBuf::from("/etc/modelfleet/modelfleet.db")), "relative to the file");
    let mini = &config.models[0];
    assert_eq!(mini.pricing.map(|p| p.input_per_mtok.to_string()), Some("0.15".into()));
    assert_eq!(config.models[2].price().map(|p| p.is_free()), Some(true), "local and unpriced: free");
    assert_eq!(config.resilience, ResilienceSettings::default(), "the example shows the defaults");
    assert_eq!(config.retry.deadline, Some(std::time::Duration::from_mins(2)), "the example shows the default");
    assert!(config.model_hedges.is_empty() && config.routes[0].hedge.is_none(), "hedging is opt-in");
}

#[test]
fn the_minimal_gateway_config_is_valid() {
    let text = r#"
[server]
listen = "127.0.0.1:8080"
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key_env = "LOCAL_API_KEY"
[[models]]
id = "fast-small"
provider = "local"
upstream = "tiny"
context_window = 8192
input_price_per_mtok = 0.50
output_price_per_mtok = 1.50
quality = 0.7
languages = ["en"]
categories = ["general"]
"#;
    let report = check_text(text, &env_of(&[("LOCAL_API_KEY", "x")]));
    assert!(report.is_valid(), "{report}");
    // Split rates are read into the pricing; left out, they are unset.
    let pricing = report.config.and_then(|c| c.models[0].pricing).unwrap();
    assert_eq!((pricing.cache_write_per_mtok, pricing.reasoning_per_mtok), (None, None));
    let split = text.replace(
        "quality = 0.7",
        "cache_write_price_per_mtok = \"0.625\"\nreasoning_price_per_mtok = 2\nquality = 0.7",
    );
    let pricing = check_text(&split, &env_of(&[("LOCAL_API_KEY", "x")])).config.and_then(|c| c.models[0].pricing);
    let pricing = pricing.unwrap();
    assert_eq!(pricing.cache_write_per_mtok.map(|m| m.to_string()), Some("0.625".into()));
    assert_eq!(pricing.reasoning_per_mtok.map(|m| m.to_string()), Some("2".into()));
    let missing_key = check_text(text, &env_of(&[("LOCAL_API_KEY", "   ")]));
    assert_eq!(
        missing_key.errors[0].to_string(),
        "providers[0].api_key_env: environment variable LOCAL_API_KEY is required but not set (or empty) (line 8, column 15)"
    );
}

#[test]
fn the_providers_example_serves_every_provider_of_the_default_catalog() {
    let keys = ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "MISTRAL_API_KEY", "DEEPSEEK_API_KEY"];
    let env = env_of(&keys.map(|k| (k, "k")));
    let report = check_text(PROVIDERS, &env);
    assert!(report.is_valid() && report.warnings.is_empty(), "{report}");
    let config = report.config.unwrap();
    assert!(config.models.is_empty(), "the default catalog is served");
    let names: std::collections::BTreeSet<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
    let catalog = modelfleet_registry::default_catalog().unwrap();
    for model in &catalog {
        assert!(names.contains(model.provider.as_str()), "{} names {}", model.id, model.provider);
    }
    assert!(config.simulated_providers().is_empty(), "every provider is real");
}

#[test]
fn native_provider_kinds_keys_headers_and_unsupported_params() {
    let text = r#"
[[providers]]
name = "claude"
kind = "anthropic"
api_key_envs = ["ANTHROPIC_KEY_1", "ANTHROPIC_KEY_2"]
unsupported_params = "error"
headers = { "anthropic-beta" = "prompt-caching-2024-07-31" }

[[providers]]
name = "google"
kind = "gemini"
api_key_env = "GEMINI_KEY"

[[providers]]
name = "azure"
kind = "azure"
base_url = "https://example.openai.azure.com"
api_version = "2024-10-21"
api_key_env = "AZURE_KEY"

[[providers]]
name = "oai"
kind = "openai"
base_url = "https://api.openai.com/v1"
responses = true
"#;
    let env = env_of(&[("ANTHROPIC_KEY_1", "a"), ("ANTHROPIC_KEY_2", "b"), ("GEMINI_KEY", "g"), ("AZURE_KEY", "z")]);
    let report = check_text(text, &env);
    assert!(report.is_valid(), "{report}");
    let config = report.config.unwrap();
    let [claude, google, azure, oai] = &config.providers[..] else { panic!("{:?}", config.providers) };
    assert_eq!(
        (claude.kind, google.kind, azure.kind, oai.kind),
        (ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Azure, ProviderKind::Openai)
    );
    assert_eq!(claude.api_key_envs, ["ANTHROPIC_KEY_1", "ANTHROPIC_KEY_2"]);
    assert_eq!(google.api_key_envs, ["GEMINI_KEY"]);
    assert_eq!(claude.unsupported_params, crate::Unsupported::Error);
    assert_eq!(google.unsupported_params, crate::Unsupported::Drop, "drop unless said otherwise");
    assert_eq!(claude.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    assert_eq!(claude.anthropic_version, "2023-06-01");
    assert_eq!(
        (claude.base_url.as_deref(), ProviderKind::Anthropic.default_base_url()),
        (None, Some("https://api.anthropic.com/v1"))
    );
    assert_eq!(azure.api_version.as_deref(), Some("2024-10-21"));
    assert!(azure.include_usage && oai.include_usage && !claude.include_usage, "Azure takes stream_options too");
    assert!(oai.responses && !azure.responses && !claude.responses, "native Responses only where said");

    // Each mistake named where it is.
    let broken = text
        .replace("api_version = \"2024-10-21\"\n", "")
        .replace("\"ANTHROPIC_KEY_2\"]", "\"ANTHROPIC_KEY_1\"]")
        .replace("unsupported_params = \"error\"", "unsupported_params = \"ignore\"")
        .replace("\"anthropic-beta\" = ", "\"bad header\" = ")
        .replace(
            "kind = \"gemini\"\n",
            "kind = \"gemini\"\nheaders = { Authorization = \"Bearer x\" }\nresponses = true\n",
        );
    let report = check_text(&broken, &env);
    let errors = report.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    for expected in [
        "providers[2].api_version: is required for an azure provider",
        "providers[0].api_key_envs[1]: ANTHROPIC_KEY_1 is listed twice",
        "providers[0].unsupported_params: unknown value \"ignore\"; expected one of: drop, error",
        "providers[0].headers.bad header: a header name is letters, digits, '-' and '_'",
        "providers[1].headers.Authorization: is set by the gateway",
        "providers[1].responses: only an openai provider serves OpenAI's Responses API natively",
    ] {
        assert!(errors.contains(expected), "{expected}\n{errors}");
    }
    // An openai or azure provider has no public default.
    let report = check_text("[[providers]]\nname = \"x\"\nkind = \"azure\"\napi_version = \"v\"\n", &env);
    assert!(report.errors.iter().any(|e| e.to_string().contains("base_url: is required for an azure provider")));
}

#[test]
fn a_broken_config_reports_everything_at_once() {
    let text = r#"
[server]
listn = "127.0.0.1:8080"
max_body_bytes = 12

[[providers]]
name = "openai"
kind = "openai"
base_url = "api.openai.com/v1"
connect_timeout_ms = 0

[[providers]]
name = "openai"
kind = "grpc"

[[models]]
id = "gpt 4o"
provider = "openai"

[[models]]
id = "cheap"
provider = "openia"
categories = ["cod"]
context_window = 1000
max_output_tokens = 2000
quality = 1.5
input_price_per_mtok = -1
output_price_per_mtok = "0.5"
fallbacks = ["pricey"]

[[models]]
id = "pricey"
provider = "openai"
input_price_per_mtok = 15
output_price_per_mtok = 60
fallbacks = ["cheap", "ghost"]

[[routes]]
name = "cheap"
strategy = "cheapest-first"

[retry]
initial_backoff_ms = 5000
max_backoff_ms = 1000

[selector.weights]
cost = -2

[[budgets]]
scope = "provider:anthropic"
period = "hourly"
limit = "ten"

[metrics]
port = 65536
"#;
    let report = check_text(text, &HashMap::new());
    assert!(!report.is_valid());
    assert!(report.config.is_none());
    insta::assert_snapshot!("broken_config_report", report.to_string());
}

#[test]
fn ports_at_and_beyond_the_boundaries() {
    let port = |value: &str| check_text(&format!("[metrics]\nport = {value}\n"), &HashMap::new());
    for bad in ["0", "65536", "-1", "\"eighty\"", "8080.5"] {
        assert!(!port(bad).is_valid(), "port {bad} should be refused");
    }
    for good in ["1024", "65535", "\"8080\""] {
        let report = port(good);
        assert!(report.is_valid() && report.warnings.is_empty(), "port {good}: {report}");
    }
    assert_eq!(port("\"9100\"").config.unwrap().metrics.port, Some(9100), "a string port is converted");
    let privileged = port("80");
    assert!(privileged.is_valid());
    assert_eq!(privileged.warnings[0].message, "port 80 is privileged (below 1024): binding it usually needs root");
    assert_eq!(port("\"eighty\"").errors[0].message, "port \"eighty\" is not a number");
    assert_eq!(port("65536").errors[0].message, "port 65536 is outside 1..=65535");
}

#[test]
fn environment_variables() {
    let env =
        env_of(&[("PORT", "8080"), ("EMPTY", ""), ("BLANK", "  "), ("FLAG", "Yes"), ("OFF", "0"), ("BAD", "12x")]);
    let lookup = |name: &str| env.get(name).cloned();
    let int = EnvKind::Integer { min: 1, max: 65_535 };
    assert_eq!(env_var(&lookup, "PORT", true, None, int), Ok(EnvValue::Integer(8080)));
    assert_eq!(
        env_var(&lookup, "MISSING", true, None, EnvKind::Text),
        Err("environment variable MISSING is required but not set (or empty)".into())
    );
    assert_eq!(env_var(&lookup, "MISSING", false, Some("42"), int), Ok(EnvValue::Integer(42)));
    assert_eq!(env_var(&lookup, "MISSING", false, None, int), Ok(EnvValue::Absent));
    assert_eq!(
        env_var(&lookup, "MISSING", false, Some("0"), int),
        Err("default of MISSING=0 is outside 1..=65535".into())
    );
    assert!(env_var(&lookup, "EMPTY", true, None, EnvKind::Text).is_err(), "empty counts as missing");
    assert!(env_var(&lookup, "BLANK", true, None, EnvKind::Text).is_err(), "whitespace counts as missing");
    assert_eq!(env_var(&lookup, "BAD", true, None, int), Err("BAD=\"12x\" is not an integer".into()));
    assert_eq!(
        env_var(&lookup, "PORT", true, None, EnvKind::Integer { min: 1, max: 1_000 }),
        Err("PORT=8080 is outside 1..=1000".into())
    );
    assert_eq!(env_var(&lookup, "FLAG", true, None, EnvKind::Boolean), Ok(EnvValue::Boolean(true)));
    assert_eq!(env_var(&lookup, "OFF", true, None, EnvKind::Boolean), Ok(EnvValue::Boolean(false)));
    assert!(env_var(&lookup, "PORT", true, None, EnvKind::Boolean).is_err());
    for (text, expect) in [("1", true), ("true", true), ("YES", true), ("0", false), ("False", false), ("no", false)] {
        let one = env_of(&[("B", text)]);
        let lookup = |name: &str| one.get(name).cloned();
        assert_eq!(env_var(&lookup, "B", true, None, EnvKind::Boolean), Ok(EnvValue::Boolean(expect)), "{text}");
    }
}

#[test]
fn local_model_directories() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama");
    std::fs::create_dir(&model).unwrap();
    assert_eq!(
        model_dir_problems(&model, &MODEL_FILES),
        ["lacks config.json", "lacks tokenizer.json", "lacks model.safetensors"]
    );
    for f in MODEL_FILES {
        std::fs::write(model.join(f), b"{}").unwrap();
    }
    assert!(model_dir_problems(&model, &MODEL_FILES).is_empty());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    assert!(model_dir_problems(&link, &MODEL_FILES).is_empty(), "a symlink to a model directory is fine");
    assert_eq!(model_dir_problems(&dir.path().join("nope"), &MODEL_FILES), ["does not exist"]);
    assert_eq!(model_dir_problems(&model.join("config.json"), &MODEL_FILES), ["is not a directory"]);

    // Through the validator, with file checks on, relative to the file's directory.
    let text = "[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n[[models]]\nid = \"m\"\nprovider = \"sim\"\nlocal = true\npath = \"missing-model\"\n";
    let lookup = |_: &str| None;
    let options = Options {
        env: &lookup,
        check_files: true,
        check_ports: false,
        check_tools: false,
        base_dir: dir.path().to_owned(),
    };
    let report = validate(text, &options);
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].message.ends_with("missing-model: does not exist"), "{report}");
}

#[test]
fn ports_in_use_and_free_ports() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    assert!(port_in_use(addr));
    let free = find_free_port(addr.ip(), addr.port()..=addr.port().saturating_add(50)).unwrap();
    assert_ne!(free, addr.port());
    let text = format!("[server]\nlisten = \"{addr}\"\n");
    let lookup = |_: &str| None;
    let options =
        Options { env: &lookup, check_files: false, check_ports: true, check_tools: false, base_dir: ".".into() };
    let report = validate(&text, &options);
    assert_eq!(report.errors[0].message, format!("{addr} is already in use"));
}

#[test]
fn tools_and_versions() {
    assert_eq!(Version::find("git version 2.47.3 (Debian)"), Some(Version(vec![2, 47, 3])));
    assert_eq!(Version::find("v20.20.2"), Some(Version(vec![20, 20, 2])));
    assert_eq!(Version::find("no digits"), None);
    assert!(Version(vec![2, 10]) > Version(vec![2, 9, 9]));
    assert!(check_tool("git", "2.0").is_ok(), "git is on every machine of this project");
    let old = check_tool("git", "99.0").unwrap_err();
    assert!(old.starts_with("git ") && old.ends_with(" is older than the required 99.0"), "{old}");
    assert_eq!(
        check_tool("modelfleet-no-such-tool", "1.0").unwrap_err(),
        "modelfleet-no-such-tool is not installed or not runnable (entity not found)"
    );
    assert!(check_tool("git", "latest").unwrap_err().contains("is not a version"));
}

#[test]
fn invalid_toml_is_one_located_error() {
    let report = check_text("[server]\nlisten = \"127.0.0.1:8080\n", &HashMap::new());
    assert_eq!(report.errors.len(), 1);
    let e = &report.errors[0];
    assert!(e.message.starts_with("invalid TOML: "), "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn mutual_fallbacks_are_valid_and_a_dense_graph_is_checked_without_a_search() {
    // Fallback lists are not followed transitively, so a → b → a is no loop
    // at serving time. 40 models each listing all 39 others: a cycle search
    // over this graph would not end in any reasonable time; validation is
    // linear in the lists.
    let ids: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
    let mut text = String::from("[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n");
    for id in &ids {
        let others: Vec<String> = ids.iter().filter(|o| *o != id).map(|o| format!("{o:?}")).collect();
        let _ = write!(text, "[[models]]\nid = {id:?}\nprovider = \"sim\"\nfallbacks = [{}]\n", others.join(", "));
    }
    let config = config_of(&text);
    assert_eq!(config.model_fallbacks.len(), 40);
    assert!(config.model_fallbacks.values().all(|list| list.len() == 39));
    // A model is still never its own fallback.
    let own = "[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n[[models]]\nid = \"a\"\nprovider = \"sim\"\nfallbacks = [\"a\"]\n";
    assert_eq!(errors_of(own), ["models[0].fallbacks[0]: a model cannot be its own fallback (line 7, column 13)"]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let report = check_text(&text, &HashMap::new());
        prop_assert!(report.is_valid() || report.config.is_none());
    }

    #[test]
    fn arbitrary_toml_shaped_text_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                "\\[\\[?(server|models|providers|routes|budgets|retry|cooldown|circuit|fallback|cache|metrics)\\]\\]?",
                "[a-z_]{1,12} = (\"[a-z0-9.:/ -]{0,12}\"|-?[0-9]{1,6}|[0-9]\\.[0-9]|true|\\[\"[a-z]{1,5}\"\\])",
                "hedge_after = (\"p9[0-9]\"|-?[0-9]{1,7}|[0-9]\\.[0-9]|true)",
            ],
            0..30,
        )
    ) {
        let text = lines.join("\n");
        let _ = check_text(&text, &HashMap::new());
    }
}

#[test]
fn a_model_whose_cost_cannot_be_bounded_is_named_when_a_hard_budget_would_pay() {
    let models = "[[providers]]\nname = \"p\"\nkind = \"simulated\"\n\
        \n[[models]]\nid = \"unpriced\"\nprovider = \"p\"\ncontext_window = 8000\n\
        \n[[models]]\nid = \"limitless\"\nprovider = \"p\"\ninput_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\n\
        \n[[models]]\nid = \"bounded\"\nprovider = \"p\"\ncontext_window = 8000\ninput_price_per_mtok = \"1\"\n\
        output_price_per_mtok = \"2\"\n\
        \n[[models]]\nid = \"free\"\nprovider = \"p\"\ninput_price_per_mtok = \"0\"\noutput_price_per_mtok = \"0\"\n\
        \n[[models]]\nid = \"local\"\nprovider = \"p\"\nlocal = true\ncontext_window = 4096\nmemory_mb = 100\n\
        \n[[models]]\nid = \"local-open\"\nprovider = \"p\"\nlocal = true\nmemory_mb = 100\n";
    let warnings = |budgets: &str| -> Vec<String> {
        let report = check_text(&format!("{models}{budgets}"), &HashMap::new());
        assert!(report.is_valid(), "{report}");
        report.warnings.iter().map(|w| w.message.clone()).collect()
    };
    assert_eq!(warnings(""), Vec::<String>::new(), "no hard budget: nothing to bound");
    let soft = "\n[[budgets]]\nscope = \"global\"\nperiod = \"daily\"\nlimit = \"1\"\nenforcement = \"soft\"\n";
    assert_eq!(warnings(soft), Vec::<String>::new(), "a soft budget never refuses");
    let hard = "\n[[budgets]]\nscope = \"provider:p\"\nperiod = \"daily\"\nlimit = \"1\"\n";
    assert_eq!(
        warnings(hard),
        [
            "unpriced: its cost cannot be bounded (it has no price), so it never serves a request that hard budget \
             provider:p daily would pay for",
            "limitless: its cost cannot be bounded (it has neither max_output_tokens nor context_window), so it never \
             serves a request that hard budget provider:p daily would pay for",
        ]
    );
}

/// The typed configuration of a valid `text`, no environment needed.
fn config_of(text: &str) -> Config {
    let report = check_text(text, &HashMap::new());
    assert!(report.is_valid(), "{text}\n{report}");
    report.config.unwrap()
}

/// The errors of `text`, displayed.
fn errors_of(text: &str) -> Vec<String> {
    check_text(text, &HashMap::new()).errors.iter().map(ToString::to_string).collect()
}

#[test]
fn failure_handling_defaults_without_the_tables() {
    let config = config_of("");
    let r = &config.resilience;
    assert_eq!(r, &ResilienceSettings::default());
    assert_eq!(
        (r.cooldown_timeouts_to_eject, r.cooldown_request_specific_to_eject),
        (3, 3),
        "three in a row before an ejection"
    );
    assert_eq!((r.cooldown_multiplier_decay_ms, r.cooldown_streak_decay_ms), (30_000, 30_000));
    assert_eq!((r.cooldown_escalating_base_ms, r.cooldown_escalating_max_ms), (2_000, 60_000));
    assert_eq!(r.circuit_slow_call_ms, 60_000);
    assert!((r.circuit_slow_call_ratio - 1.0).abs() < f64::EPSILON);
    assert_eq!((r.max_attempts_per_request, r.max_ejected_percent, r.retry_budget_window_ms), (6, 50, 10_000));
    assert!((r.retry_budget_percent - 20.0).abs() < f64::EPSILON);
    assert!((r.retry_budget_min_per_sec - 1.0).abs() < f64::EPSILON);
    // Present but empty tables change nothing either.
    assert_eq!(config_of("[cooldown]\n[circuit]\n[fallback]\n").resilience, ResilienceSettings::default());
    assert_eq!(config.retry.deadline, Some(std::time::Duration::from_mins(2)), "the default deadline is 120 s");
}

/// `text` gives the default failure handling changed by `change`.
fn check_resilience(text: &str, change: impl FnOnce(&mut ResilienceSettings)) {
    let mut expected = ResilienceSettings::default();
    change(&mut expected);
    assert_eq!(config_of(text).resilience, expected, "{text}");
}

#[test]
fn failure_handling_settings_are_read() {
    check_resilience("[cooldown]\ntimeouts_to_eject = 7", |r| r.cooldown_timeouts_to_eject = 7);
    check_resilience("[cooldown]\nrequest_specific_to_eject = 1000", |r| r.cooldown_request_specific_to_eject = 1000);
    check_resilience("[cooldown]\nmultiplier_decay_ms = 60000", |r| r.cooldown_multiplier_decay_ms = 60_000);
    check_resilience("[cooldown]\nstreak_decay_ms = 1", |r| r.cooldown_streak_decay_ms = 1);
    check_resilience("[cooldown]\nescalating_base_ms = 1", |r| r.cooldown_escalating_base_ms = 1);
    check_resilience("[circuit]\nslow_call_ms = 2500", |r| r.circuit_slow_call_ms = 2_500);
    check_resilience("[circuit]\nslow_call_ratio = 0.25", |r| r.circuit_slow_call_ratio = 0.25);
    check_resilience("[fallback]\nmax_attempts_per_request = 100", |r| r.max_attempts_per_request = 100);
    check_resilience("[fallback]\nmax_ejected_percent = 0", |r| r.max_ejected_percent = 0);
    check_resilience("[fallback]\nretry_budget_percent = 250.5", |r| r.retry_budget_percent = 250.5);
    check_resilience("[fallback]\nretry_budget_percent = 0", |r| r.retry_budget_percent = 0.0);
    check_resilience("[fallback]\nretry_budget_min_per_sec = 0.5", |r| r.retry_budget_min_per_sec = 0.5);
    check_resilience("[fallback]\nretry_budget_window_ms = 3_600_000", |r| r.retry_budget_window_ms = 3_600_000);
}

#[test]
fn failure_handling_settings_out_of_range_are_refused_at_their_path() {
    for (text, error) in [
        ("[cooldown]\ntimeouts_to_eject = 0", "cooldown.timeouts_to_eject: 0 is outside 1..=1000 (line 2, column 21)"),
        (
            "[cooldown]\nrequest_specific_to_eject = 1001",
            "cooldown.request_specific_to_eject: 1001 is outside 1..=1000 (line 2, column 29)",
        ),
        (
            "[cooldown]\nmultiplier_decay_ms = 86400001",
            "cooldown.multiplier_decay_ms: 86400001 is outside 1..=86400000 (line 2, column 23)",
        ),
        ("[cooldown]\nstreak_decay_ms = 0", "cooldown.streak_decay_ms: 0 is outside 1..=86400000 (line 2, column 19)"),
        (
            "[cooldown]\nescalating_base_ms = 0",
            "cooldown.escalating_base_ms: 0 is outside 1..=3600000 (line 2, column 22)",
        ),
        (
            "[cooldown]\nescalating_max_ms = 0",
            "cooldown.escalating_max_ms: 0 is outside 1..=86400000 (line 2, column 21)",
        ),
        ("[circuit]\nslow_call_ms = 0", "circuit.slow_call_ms: 0 is outside 1..=3600000 (line 2, column 16)"),
        ("[circuit]\nslow_call_ratio = 1.5", "circuit.slow_call_ratio: 1.5 is outside 0.01..=1 (line 2, column 19)"),
        (
            "[circuit]\nslow_call_ratio = 0.001",
            "circuit.slow_call_ratio: 0.001 is outside 0.01..=1 (line 2, column 19)",
        ),
        (
            "[fallback]\nmax_attempts_per_request = 0",
            "fallback.max_attempts_per_request: 0 is outside 1..=100 (line 2, column 28)",
        ),
        (
            "[fallback]\nmax_ejected_percent = 101",
            "fallback.max_ejected_percent: 101 is outside 0..=100 (line 2, column 23)",
        ),
        (
            "[fallback]\nretry_budget_percent = -1",
            "fallback.retry_budget_percent: -1 is outside 0..=1000 (line 2, column 24)",
        ),
        (
            "[fallback]\nretry_budget_min_per_sec = 10000.5",
            "fallback.retry_budget_min_per_sec: 10000.5 is outside 0..=10000 (line 2, column 28)",
        ),
        (
            "[fallback]\nretry_budget_window_ms = 999",
            "fallback.retry_budget_window_ms: 999 is outside 1000..=3600000 (line 2, column 26)",
        ),
        (
            "[fallback]\nretry_budget_window_ms = true",
            "fallback.retry_budget_window_ms: expected an integer, found boolean (line 2, column 26)",
        ),
    ] {
        assert_eq!(errors_of(text), [error], "{text}");
    }
}

#[test]
fn the_escalating_cooldown_cannot_shrink() {
    assert_eq!(
        errors_of("[cooldown]\nescalating_base_ms = 5000\nescalating_max_ms = 4000\n"),
        ["cooldown.escalating_max_ms: 4000 is less than escalating_base_ms (5000) (line 3, column 21)"]
    );
    assert_eq!(
        errors_of("[cooldown]\nescalating_base_ms = 90000\n"),
        ["cooldown.escalating_max_ms: the default 60000 is less than escalating_base_ms (90000): set \
             escalating_max_ms too (line 2, column 22)"]
    );
    assert_eq!(
        errors_of("[cooldown]\nescalating_base_ms = 0\nescalating_max_ms = 1\n"),
        ["cooldown.escalating_base_ms: 0 is outside 1..=3600000 (line 2, column 22)"],
        "a value already wrong is not compared"
    );
    let equal = config_of("[cooldown]\nescalating_base_ms = 5000\nescalating_max_ms = 5000\n").resilience;
    assert_eq!((equal.cooldown_escalating_base_ms, equal.cooldown_escalating_max_ms), (5_000, 5_000));
}

#[test]
fn unknown_failure_handling_keys_are_named() {
    assert_eq!(
        errors_of("[fallback]\nmax_ejected_percnt = 10\n"),
        ["fallback.max_ejected_percnt: unknown key `max_ejected_percnt` (did you mean \"max_ejected_percent\"?); \
             known keys: max_attempts_per_request, max_ejected_percent, retry_budget_percent, \
             retry_budget_min_per_sec, retry_budget_window_ms (line 2, column 1)"]
    );
    let circuit = errors_of("[circuit]\nslow_call_ration = 0.5\n");
    assert!(
        circuit[0].starts_with(
            "circuit.slow_call_ration: unknown key `slow_call_ration` (did you mean \"slow_call_ratio\"?)"
        ),
        "{circuit:?}"
    );
    let cooldown = errors_of("[cooldown]\ntimeouts_to_ejekt = 2\n");
    assert!(
        cooldown[0].starts_with(
            "cooldown.timeouts_to_ejekt: unknown key `timeouts_to_ejekt` (did you mean \"timeouts_to_eject\"?)"
        ),
        "{cooldown:?}"
    );
    assert_eq!(
        errors_of("[fallbacks]\n")[0],
        "fallbacks: unknown key `fallbacks` (did you mean \"fallback\"?); known keys: server, store, providers, \
         models, routes, retry, cooldown, circuit, fallback, selector, budgets, ledger, cache, metrics, cluster (line 1, column 2)"
    );
}

const SIM: &str = "[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n[[models]]\nid = \"m\"\nprovider = \"sim\"\n";

#[test]
fn hedging_is_opt_in_per_route_and_per_model() {
    let route = |hedge: &str| format!("{SIM}[[routes]]\nname = \"r\"\n{hedge}\n");
    let model = |hedge: &str| format!("{SIM}{hedge}\n");

    let off = config_of(&route(""));
    assert_eq!(off.routes[0].hedge, None);
    assert!(off.model_hedges.is_empty());

    assert_eq!(
        config_of(&route("hedge_after = 250")).routes[0].hedge,
        Some(HedgeAfter::Fixed(std::time::Duration::from_millis(250)))
    );
    assert_eq!(
        config_of(&route("hedge_after = 600_000")).routes[0].hedge,
        Some(HedgeAfter::Fixed(std::time::Duration::from_mins(10)))
    );
    assert_eq!(config_of(&route("hedge_after = \"p95\"")).routes[0].hedge, Some(HedgeAfter::P95));
    assert_eq!(
        config_of(&model("hedge_after = 1")).model_hedges,
        BTreeMap::from([("m".to_owned(), HedgeAfter::Fixed(std::time::Duration::from_millis(1)))])
    );
    assert_eq!(config_of(&model("hedge_after = \"p95\"")).model_hedges["m"], HedgeAfter::P95);

    for (value, got) in [
        ("0", "0"),
        ("600001", "600001"),
        ("-5", "-5"),
        ("\"p99\"", "\"p99\" (did you mean \"p95\"?)"),
        ("\"fast\"", "\"fast\""),
        ("1.5", "1.5"),
        ("true", "a boolean"),
        ("[250]", "an array"),
        ("99999999999999999999", "an integer too large"),
    ] {
        let expected = format!("expected milliseconds (1 to 600000) or \"p95\", got {got}");
        assert_eq!(
            errors_of(&route(&format!("hedge_after = {value}"))),
            [format!("routes[0].hedge_after: {expected} (line 9, column 15)")],
        );
        assert_eq!(
            errors_of(&model(&format!("hedge_after = {value}"))),
            [format!("models[0].hedge_after: {expected} (line 7, column 15)")],
        );
    }
}

#[test]
fn simulated_providers_are_listed_by_name() {
    assert_eq!(config_of(SIM).simulated_providers(), ["sim"]);
    let report = check_text(EXAMPLE, &example_env());
    assert_eq!(report.config.unwrap().simulated_providers(), ["sim"], "not the two openai providers");
    assert!(config_of("").simulated_providers().is_empty());
}

#[test]
fn every_route_strategy_round_trips() {
    use modelfleet_selector::Strategy;
    let strategy = |lines: &str| config_of(&format!("{SIM}[[routes]]\nname = \"r\"\n{lines}\n")).routes[0].strategy;
    for (name, expected) in [
        ("weighted_score", Strategy::WeightedScore),
        ("cheapest", Strategy::Cheapest),
        ("fastest", Strategy::Fastest),
        ("highest_quality", Strategy::HighestQuality),
        ("priority_order", Strategy::PriorityOrder),
        ("weighted_random", Strategy::WeightedRandom { seed: 0 }),
    ] {
        assert_eq!(strategy(&format!("strategy = \"{name}\"")), expected, "{name}");
    }
    assert_eq!(strategy("strategy = \"weighted_random\"\nseed = 42"), Strategy::WeightedRandom { seed: 42 });
    assert_eq!(strategy(""), Strategy::WeightedScore, "the default");
}

#[test]
fn locality_is_set_only_when_written() {
    use modelfleet_selector::Locality;
    let locality = |line: &str| {
        config_of(&format!("{SIM}[[routes]]\nname = \"r\"\n[routes.requirements]\n{line}\n")).routes[0]
            .requirements
            .locality
    };
    assert_eq!(locality(""), None);
    assert_eq!(locality("locality = \"any\""), Some(Locality::Any));
    assert_eq!(locality("locality = \"local_only\""), Some(Locality::LocalOnly));
    assert_eq!(locality("locality = \"cloud_only\""), Some(Locality::CloudOnly));
    let example = check_text(EXAMPLE, &example_env()).config.unwrap();
    assert_eq!(example.routes[0].requirements.locality, Some(Locality::Any), "the example says any explicitly");
}

#[test]
fn the_retry_deadline_defaults_to_two_minutes() {
    let deadline = |text: &str| config_of(text).retry.deadline;
    let two_minutes = Some(std::time::Duration::from_mins(2));
    assert_eq!(deadline(""), two_minutes);
    assert_eq!(deadline("[retry]\nmax_attempts = 2\n"), two_minutes, "a [retry] table without deadline_ms");
    assert_eq!(deadline("[retry]\ndeadline_ms = 5000\n"), Some(std::time::Duration::from_secs(5)));
    assert_eq!(
        errors_of("[retry]\ndeadline_ms = 0\n"),
        ["retry.deadline_ms: 0 is outside 1..=600000 (line 2, column 15)"]
    );
}

#[test]
fn score_weights_are_read_and_checked() {
    let config = config_of("[selector.weights]\ncost = 7.5\nquality = 0\n");
    let weights = config.weights.values();
    assert_eq!((weights.cost, weights.quality, weights.reliability), (7.5, 0.0, 3.0));
    assert_eq!(
        errors_of("[selector.weights]\nspeed = -1\n"),
        ["selector.weights.speed: -1 is outside 0..=1000 (line 2, column 9)"]
    );
    let zero = "[selector.weights]\nquality = 0\nreliability = 0\nlanguage = 0\ncost = 0\nspeed = 0\nload = 0\ncategory = 0\npriority = 0\n";
    assert_eq!(
        errors_of(zero),
        [
            "selector.weights: every score weight is 0: the weighted score could not tell models apart (line 1, column 1)"
        ]
    );
}

#[test]
fn cors_origins_are_exact_origins_and_never_a_wildcard() {
    let config = config_of(
        "[server]\ncors_origins = [\"https://app.example.com\", \"http://localhost:3000\", \"http://[::1]:8080\"]\n",
    );
    assert_eq!(config.server.cors_origins, ["https://app.example.com", "http://localhost:3000", "http://[::1]:8080"]);
    assert!(config_of("").server.cors_origins.is_empty(), "none by default: no CORS");
    for (origin, error) in [
        ("*", "\"*\" would let any web page call this gateway, admin API included: list the origins that may"),
        ("app.example.com", "\"app.example.com\" is not an origin: it starts with http:// or https://"),
        (
            "https://app.example.com/",
            "\"https://app.example.com/\" is not an origin: scheme://host[:port], no path, no trailing slash",
        ),
        (
            "https://app.example.com:99999",
            "\"https://app.example.com:99999\" is not an origin: \":99999\" is not :port (no path, no trailing slash)",
        ),
        (
            "https://a.example.com/x",
            "\"https://a.example.com/x\" is not an origin: scheme://host[:port], no path, no trailing slash",
        ),
        ("https://", "\"https://\" is not an origin: scheme://host[:port], no path, no trailing slash"),
    ] {
        let text = format!("[server]\ncors_origins = [{origin:?}]\n");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{origin}: {errors:?}");
        assert!(errors[0].starts_with(&format!("server.cors_origins[0]: {error} (line 2")), "{origin}: {}", errors[0]);
    }
}

#[test]
fn api_keys_have_unique_names_and_are_long_enough() {
    let keys = |names: [&str; 2]| {
        format!(
            "[[server.api_keys]]\nname = {:?}\nkey_env = \"K1\"\nrole = \"client\"\n\
             [[server.api_keys]]\nname = {:?}\nkey_env = \"K2\"\nrole = \"admin\"\n",
            names[0], names[1]
        )
    };
    let env = env_of(&[("K1", "0123456789abcdef"), ("K2", "short-key")]);
    let errors: Vec<String> = check_text(&keys(["app", "app"]), &env).errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "server.api_keys[1].key_env: K2 holds a key of 9 characters: at least 16 are needed (a short key can be guessed) (line 7, column 11)",
            "server.api_keys[1].name: another key is already named \"app\" (line 6, column 8)",
        ]
    );
    assert!(errors.iter().all(|e| !e.contains("short-key")), "the value is never shown");
    let env = env_of(&[("K1", "0123456789abcdef"), ("K2", "fedcba9876543210")]);
    let report = check_text(&keys(["app", "ops"]), &env);
    assert!(report.is_valid(), "{report}");
}

#[test]
fn auth_lockout_is_remote_by_default_and_named_values_only() {
    assert_eq!(config_of("").server.auth_lockout, AuthLockout::Remote);
    assert_eq!(config_of("[server]\nauth_lockout = \"all\"\n").server.auth_lockout, AuthLockout::All);
    assert_eq!(config_of("[server]\nauth_lockout = \"off\"\n").server.auth_lockout, AuthLockout::Off);
    let errors = errors_of("[server]\nauth_lockout = true\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("server.auth_lockout: "), "{errors:?}");
}

#[test]
fn hardening_settings_have_defaults_and_bounds() {
    let config = config_of("[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\n");
    let server = &config.server;
    assert_eq!(
        (server.header_read_timeout_ms, server.body_read_timeout_ms, server.idle_timeout_ms, server.request_timeout_ms),
        (10_000, 30_000, 60_000, 600_000)
    );
    assert_eq!((server.max_connections, server.stream_send_timeout_ms), (4_096, 30_000));
    assert_eq!((server.drain_grace_ms, server.drain_timeout_ms), (2_000, 30_000));
    assert_eq!((server.memory_high_percent, server.memory_limit_bytes), (90, None));
    assert_eq!((config.store.retain_days, config.store.aggregate_retain_days), (30, 400));
    let provider = &config.providers[0];
    assert_eq!((provider.first_token_timeout_ms, provider.stream_idle_timeout_ms), (120_000, 60_000));
    assert!(provider.include_usage, "on by default for openai");

    let set = config_of(
        "[server]\ndrain_grace_ms = 0\ndrain_timeout_ms = 500\nmemory_limit_bytes = 67108864\nmemory_high_percent = 50\n\
         [store]\nretain_days = 0\naggregate_retain_days = 0\n\
         [[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\ninclude_usage = false\n",
    );
    assert_eq!((set.server.drain_grace_ms, set.server.drain_timeout_ms), (0, 500));
    assert_eq!((set.server.memory_high_percent, set.server.memory_limit_bytes), (50, Some(64 << 20)));
    assert_eq!((set.store.retain_days, set.store.aggregate_retain_days), (0, 0));
    // Unset, the aggregates outlive the raw rows: for ever with them, else at least as long.
    let kept = |text: &str| {
        let c = config_of(text);
        (c.store.retain_days, c.store.aggregate_retain_days)
    };
    assert_eq!(kept("[store]\nretain_days = 0\n"), (0, 0));
    assert_eq!(kept("[store]\nretain_days = 500\n"), (500, 500));
    assert_eq!(kept("[store]\nretain_days = 7\n"), (7, 400));
    assert_eq!(kept("[store]\nretain_days = 7\naggregate_retain_days = 7\n"), (7, 7));
    assert!(!set.providers[0].include_usage);

    for (text, key) in [
        ("[server]\nheader_read_timeout_ms = 0\n", "server.header_read_timeout_ms"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ("[server]\nmemory_high_percent = 101\n", "server.memory_high_percent"),
        ("[server]\nmemory_limit_bytes = 10\n", "server.memory_limit_bytes"),
        ("[store]\nretain_days = -1\n", "store.retain_days"),
        ("[store]\naggregate_retain_days = 36501\n", "store.aggregate_retain_days"),
        // Whole hours of a report come from the aggregates: never pruned before the raw rows.
        ("[store]\nretain_days = 30\naggregate_retain_days = 29\n", "store.aggregate_retain_days"),
        ("[store]\nretain_days = 0\naggregate_retain_days = 400\n", "store.aggregate_retain_days"),
    ] {
        let errors = errors_of(text);
        assert!(errors.iter().any(|e| e.starts_with(&format!("{key}: "))), "{text}: {errors:?}");
    }
}

// --- Arbitrary files through the file entry point ---------------------------

/// A file holding `bytes`, validated as `modelfleet config check` does
/// (`validate_file`), with the example's environment.
fn check_bytes(bytes: &[u8]) -> (Report, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("modelfleet.toml");
    std::fs::write(&path, bytes).expect("the file is written");
    let env = example_env();
    let lookup = |name: &str| env.get(name).cloned();
    let options = Options {
        env: &lookup,
        check_files: false,
        check_ports: false,
        check_tools: false,
        base_dir: dir.path().to_owned(),
    };
    (validate_file(&path, &options), path)
}

/// What every report of arbitrary bytes holds: a configuration only
/// without errors, and every error saying where — a dotted path or a line
/// in the file (a line and column that exist), or for a file that is not
/// UTF-8, the file and the offset of the first bad byte.
fn check_placed(bytes: &[u8], report: &Report, file: &std::path::Path) -> Result<(), TestCaseError> {
    prop_assert_eq!(report.is_valid(), report.config.is_some(), "{}", report);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            prop_assert_eq!(report.errors.len(), 1, "{}", report);
            let message = &report.errors[0].message;
            prop_assert!(message.contains(&file.display().to_string()), "{}", message);
            prop_assert!(message.contains(&format!("offset {}", e.valid_up_to())), "{}", message);
            return Ok(());
        }
    };
    let lines = text.split('\n').count();
    for e in &report.errors {
        prop_assert!(!e.message.trim().is_empty(), "{:?}", e);
        prop_assert!(!e.path.is_empty() || e.line.is_some(), "says neither path nor line: {:?}\n{}", e, text);
        if let Some(line) = e.line {
            prop_assert!((1..=lines).contains(&line), "line {} of {}: {}", line, lines, e);
            prop_assert!(e.column.is_some_and(|c| c >= 1), "{}", e);
        }
    }
    Ok(())
}

/// One change to a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Bits of one byte flipped (`mask` is not 0).
    Flip(prop::sample::Index, u8),
    /// The same in a line that is neither blank nor a comment: a table
    /// header, a key or a value.
    FlipInSetting(prop::sample::Index, prop::sample::Index, u8),
    /// Bytes inserted.
    Insert(prop::sample::Index, Vec<u8>),
    /// Up to this many bytes removed.
    Delete(prop::sample::Index, usize),
    /// Cut short.
    Truncate(prop::sample::Index),
    /// A whole line repeated (a duplicate key, table or entry).
    DuplicateLine(prop::sample::Index),
    /// A whole line removed (a required key, a table header).
    DropLine(prop::sample::Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    let insert = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..8),
        prop::sample::select(vec!["\"", "'", "[", "]", "=", "\n", "#", "\\", "é", "-1", "\"\"\"", "[["])
            .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop_oneof![
        1 => (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        // ASCII stays ASCII: the file stays text, the TOML parser sees it.
        2 => (any::<Index>(), 1..=0x7f_u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        4 => (any::<Index>(), any::<Index>(), 1..=0x7f_u8)
            .prop_map(|(line, at, mask)| Mutation::FlipInSetting(line, at, mask)),
        2 => (any::<Index>(), insert).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        2 => (any::<Index>(), 1..64_usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => any::<Index>().prop_map(Mutation::DuplicateLine),
        2 => any::<Index>().prop_map(Mutation::DropLine),
    ]
}

/// Where the line holding byte `at` starts and ends (its newline included).
fn line_around(bytes: &[u8], at: usize) -> std::ops::Range<usize> {
    let start = bytes[..at].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let end = bytes[at..].iter().position(|b| *b == b'\n').map_or(bytes.len(), |i| at + i + 1);
    start..end
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip(at, mask) => {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        Mutation::FlipInSetting(line, at, mask) => {
            let settings: Vec<std::ops::Range<usize>> = bytes
                .split_inclusive(|b| *b == b'\n')
                .scan(0, |start, line| {
                    let range = *start..*start + line.len();
                    *start = range.end;
                    Some(range)
                })
                .filter(|range| {
                    let text = String::from_utf8_lossy(&bytes[range.clone()]);
                    let text = text.trim();
                    !text.is_empty() && !text.starts_with('#')
                })
                .collect();
            if settings.is_empty() {
                return;
            }
            let line = &settings[line.index(settings.len())];
            let at = line.start + at.index(line.len());
            bytes[at] ^= mask;
        }
        Mutation::Insert(at, inserted) => {
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Delete(at, n) => {
            let at = at.index(bytes.len());
            bytes.drain(at..(at + n).min(bytes.len()));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Mutation::DuplicateLine(at) => {
            let line = line_around(bytes, at.index(bytes.len()));
            let copy = bytes[line.clone()].to_vec();
            bytes.splice(line.end..line.end, copy);
        }
        Mutation::DropLine(at) => {
            let line = line_around(bytes, at.index(bytes.len()));
            bytes.drain(line);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_in_a_file_are_refused_with_a_place(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            // TOML-shaped text with a byte that is not UTF-8 somewhere in it.
            ("[a-z_\\[\\]=\" \n0-9.]{0,64}", any::<prop::sample::Index>(), 0x80..=u8::MAX).prop_map(
                |(text, at, bad)| {
                    let mut bytes = text.into_bytes();
                    bytes.insert(at.index(bytes.len() + 1), bad);
                    bytes
                }
            ),
        ],
    ) {
        let (report, file) = check_bytes(&bytes);
        check_placed(&bytes, &report, &file)?;
    }

    #[test]
    fn the_example_file_mutated_is_valid_or_refused_with_a_place(
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
    ) {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        let (report, file) = check_bytes(&bytes);
        check_placed(&bytes, &report, &file)?;
        // The file entry point reads the text as the text entry point does.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let direct = check_text(text, &example_env());
            prop_assert_eq!(&report.errors, &direct.errors);
        }
    }
}

#[test]
fn embedding_models_fall_back_only_to_vectors_of_their_length() {
    let text = r#"
[[providers]]
name = "oai"
kind = "openai"
base_url = "https://api.openai.com/v1"

[[providers]]
name = "claude"
kind = "anthropic"

[[models]]
id = "small"
provider = "oai"
capabilities = ["embeddings"]
embedding_dimensions = 1536
input_price_per_mtok = "0.02"
output_price_per_mtok = "0"
fallbacks = ["small-2"]

[[models]]
id = "small-2"
provider = "oai"
capabilities = ["embeddings"]
embedding_dimensions = 1536

[[models]]
id = "chat"
provider = "oai"

[[routes]]
name = "vectors"
requirements = { capabilities = ["embeddings"], embedding_dimensions = 1536 }
"#;
    let config = config_of(text);
    let small = &config.models[0];
    assert!(small.capabilities.embeddings && !small.capabilities.streaming, "the list states them exactly");
    assert_eq!(small.embedding_dimensions, Some(1_536));
    assert!(!config.models[2].capabilities.embeddings);
    let route = &config.routes[0].requirements;
    assert_eq!(
        (route.capabilities.as_slice(), route.embedding_dimensions),
        (&[modelfleet_registry::Capability::Embeddings][..], Some(1_536))
    );

    // Each mistake named where it is.
    let broken = text
        .replace("fallbacks = [\"small-2\"]", "fallbacks = [\"small-2\", \"chat\"]")
        .replace("id = \"small-2\"\nprovider = \"oai\"\ncapabilities = [\"embeddings\"]\nembedding_dimensions = 1536",
                 "id = \"small-2\"\nprovider = \"oai\"\ncapabilities = [\"embeddings\"]\nembedding_dimensions = 3072")
        .replace("id = \"chat\"\nprovider = \"oai\"", "id = \"chat\"\nprovider = \"claude\"\ncapabilities = [\"embeddings\", \"tools\"]\nembedding_dimensions = 0");
    let errors = errors_of(&broken).join("\n");
    for expected in [
        "models[0].fallbacks[0]: \"small-2\" cannot stand in for \"small\": its vectors have 3072 dimensions, not 1536",
        "models[0].fallbacks[1]: \"chat\" cannot stand in for \"small\": both must state embedding_dimensions, and the same",
        "models[2].capabilities: an embedding model serves embeddings requests only: \"embeddings\" goes alone",
        "models[2].embedding_dimensions: 0 is outside 1..=65536",
        "models[2].capabilities: provider \"claude\" is of kind \"anthropic\", which has no embeddings API",
    ] {
        assert!(errors.contains(expected), "{expected}\n{errors}");
    }
    // A chat model's fallback that embeds.
    let chat_to_vectors =
        text.replace("id = \"chat\"\nprovider = \"oai\"", "id = \"chat\"\nprovider = \"oai\"\nfallbacks = [\"small\"]");
    assert!(
        errors_of(&chat_to_vectors).iter().any(|e| e
            .starts_with("models[2].fallbacks[0]: \"small\" cannot stand in for \"chat\": it is an embedding model")),
        "{:?}",
        errors_of(&chat_to_vectors)
    );
}

#[test]
fn the_cluster_table_takes_a_redis_url_for_ejections_and_never_prints_or_serializes_it() {
    let text = "[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url_env = \"FLEET_REDIS\"\nredis_prefix = \"prod:eu-1\"\n";
    let secret = "redis://:s3cret-passw0rd@cache.internal:6379/2";
    let report = check_text(text, &env_of(&[("FLEET_REDIS", secret)]));
    assert!(report.is_valid(), "{report}");
    let cluster = report.config.unwrap().cluster.unwrap();
    assert_eq!((cluster.redis_url.as_deref(), cluster.redis_prefix.as_str()), (Some(secret), "prod:eu-1"));
    assert!(!format!("{cluster:?}").contains("s3cret"), "never printed");
    let serialized = toml::to_string(&cluster).unwrap();
    assert!(!serialized.contains("s3cret") && serialized.contains("redis_prefix = \"prod:eu-1\""), "{serialized}");
    let inline = config_of("[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url = \"redis://127.0.0.1:6379\"\n");
    let cluster = inline.cluster.unwrap();
    assert_eq!(
        (cluster.redis_url.as_deref(), cluster.redis_prefix.as_str()),
        (Some("redis://127.0.0.1:6379"), "modelfleet")
    );
}

#[test]
fn the_cluster_table_takes_its_url_from_the_environment_and_never_prints_it() {
    let text = "[cluster]\npostgres_url_env = \"FLEET_PG\"\nschema = \"fleet_a\"\nreplica = \"gw-1\"\n";
    let secret = "postgres://fleet:s3cret-passw0rd@db.internal:5432/fleet";
    let report = check_text(text, &env_of(&[("FLEET_PG", secret)]));
    assert!(report.is_valid(), "{report}");
    let cluster = report.config.unwrap().cluster.unwrap();
    assert_eq!((cluster.postgres_url.as_str(), cluster.schema.as_str()), (secret, "fleet_a"));
    assert_eq!((cluster.replica.as_deref(), cluster.timeout_ms, cluster.hold_ttl_ms), (Some("gw-1"), 2_000, 3_600_000));
    assert_eq!((cluster.leases, cluster.lease_ttl_ms), (true, 10_000), "leases by default");
    assert_eq!(
        (cluster.redis_url.as_deref(), cluster.redis_prefix.as_str()),
        (None, "modelfleet"),
        "Redis is optional"
    );
    assert!(!format!("{cluster:?}").contains("s3cret"), "never printed");
    assert!(config_of("").cluster.is_none(), "without [cluster] nothing changes");

    for (text, expected) in [
        ("[cluster]\n", "cluster.postgres_url: is required (or postgres_url_env, when it holds a password)"),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\npostgres_url_env = \"FLEET_PG\"\n",
            "give postgres_url or postgres_url_env, not both",
        ),
        (
            "[cluster]\npostgres_url_env = \"UNSET_PG\"\n",
            "cluster.postgres_url_env: environment variable UNSET_PG is required",
        ),
        (
            "[cluster]\npostgres_url = \"mysql://a@b/c\"\n",
            "cluster.postgres_url: must start with postgres:// or postgresql://",
        ),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\nschema = \"Drop Table\"\n",
            "cluster.schema: \"Drop Table\": a lower-case identifier",
        ),
        ("[cluster]\npostgres_url = \"postgres://a@b/c\"\ntimeout_ms = 10\n", "cluster.timeout_ms"),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\ntimeout_ms = 5000\n",
            "cluster.lease_ttl_ms: 10000 ms is less than four times timeout_ms (5000 ms)",
        ),
        ("[cluster]\npostgres_url = \"postgres://a@b/c\"\nleases = \"yes\"\n", "cluster.leases"),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url = \"redis://a\"\nredis_url_env = \"FLEET_REDIS\"\n",
            "cluster.redis_url_env: give redis_url or redis_url_env, not both",
        ),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url_env = \"UNSET_REDIS\"\n",
            "cluster.redis_url_env: environment variable UNSET_REDIS is required",
        ),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url_env = \"FLEET_PG\"\n",
            "cluster.redis_url: must start with redis://, redis+unix:// or unix://",
        ),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url = \"rediss://:s3cret@cache:6380\"\n",
            "cluster.redis_url: rediss:// (TLS) is not supported",
        ),
        (
            "[cluster]\npostgres_url = \"postgres://a@b/c\"\nredis_url = \"redis://a\"\nredis_prefix = \"Fleet *\"\n",
            "cluster.redis_prefix: \"Fleet *\": 1 to 64 lower-case letters",
        ),
        ("[cluster]\nredis_url = \"redis://a\"\n", "cluster.postgres_url: is required"),
    ] {
        let errors = check_text(text, &env_of(&[("FLEET_PG", secret)]))
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(errors.contains(expected), "{text}: {errors}");
        assert!(!errors.contains("s3cret"), "{errors}");
    }
}
