//! Config validation tests: the shipped example, seed 002's checks, cross
//! references, the full report of a broken file, and arbitrary input.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

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
    env_of(&[("MODELFLEET_KEY_TEAM_A", "k1"), ("MODELFLEET_KEY_OPS", "k2"), ("OPENAI_API_KEY", "sk-test")])
}

const EXAMPLE: &str = include_str!("../../../config/modelfleet.example.toml");

const QUICKSTART: &str = include_str!("../../../config/gateway.quickstart.toml");

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
    let missing_key = check_text(text, &env_of(&[("LOCAL_API_KEY", "   ")]));
    assert_eq!(
        missing_key.errors[0].to_string(),
        "providers[0].api_key_env: environment variable LOCAL_API_KEY is required but not set (or empty) (line 8, column 15)"
    );
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
fn fallback_cycles_are_found_with_their_path() {
    let text = r#"
[[providers]]
name = "sim"
kind = "simulated"
[[models]]
id = "a"
provider = "sim"
fallbacks = ["b"]
[[models]]
id = "b"
provider = "sim"
fallbacks = ["c"]
[[models]]
id = "c"
provider = "sim"
fallbacks = ["a"]
[[models]]
id = "d"
provider = "sim"
fallbacks = ["a"]
"#;
    let report = check_text(text, &HashMap::new());
    let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages, ["models[0].fallbacks: fallback cycle: a → b → c → a (line 8, column 13)"]);
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
                "\\[\\[?(server|models|providers|routes|budgets|retry|cache|metrics)\\]\\]?",
                "[a-z_]{1,12} = (\"[a-z0-9.:/ -]{0,12}\"|-?[0-9]{1,6}|[0-9]\\.[0-9]|true|\\[\"[a-z]{1,5}\"\\])",
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
