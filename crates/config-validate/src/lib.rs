//! The modelfleet configuration file: TOML parsed into typed settings and
//! validated with every problem reported at its path, line and column.
//!
//! [`validate`] walks the whole file and collects **every** error, each as a
//! [`Diagnostic`] with a dotted path (`models[2].provider`), a message
//! (`unknown provider "openia" (did you mean "openai"?)`) and the line and
//! column, plus warnings that do not stop the configuration (a privileged
//! port, an expensive model no budget covers, a public address without API
//! keys). Unknown keys are errors with a suggestion, never ignored. When
//! there is no error, [`Report::config`] holds the typed [`Config`].
//!
//! Checks: ports (1..=65535; a port written as a string is converted;
//! below 1024 warns); environment variables through [`env_var`] (required or
//! optional with a default, typed integer with a range or boolean, empty
//! counts as missing — the environment is passed in, never read or changed);
//! local model directories ([`model_dir_problems`]: exists, is a directory,
//! readable, holds `config.json`, `tokenizer.json`, `model.safetensors`);
//! whether the listen port is in use ([`port_in_use`], [`find_free_port`]);
//! tools a provider needs with minimum versions ([`check_tool`]); and
//! cross-references: every model's provider exists, fallbacks exist and
//! are not the model itself (fallback lists are not followed transitively:
//! a fallback's own fallbacks are never tried, so mutual fallbacks are valid
//! and checking them is linear), budgets name real providers and models,
//! weights are non-negative, timeouts, failure-handling settings
//! (`[cooldown]`, `[circuit]`, `[fallback]`) and `hedge_after` are within
//! limits, and the escalating cooldown's maximum is not below its base.
//!
//! The fully commented example is `config/modelfleet.example.toml` at the
//! repository root.
//!
//! ```
//! use modelfleet_config_validate::{validate, Options};
//!
//! let text = r#"
//! [[providers]]
//! name = "openai"
//! kind = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//!
//! [[models]]
//! id = "gpt-4o-mini"
//! provider = "openia"
//! context_window = 128000
//! "#;
//! let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-test".to_owned());
//! let options = Options { env: &env, check_files: false, check_ports: false, check_tools: false, base_dir: ".".into() };
//! let report = validate(text, &options);
//! assert_eq!(
//!     report.errors[0].to_string(),
//!     r#"models[0].provider: unknown provider "openia" (did you mean "openai"?) (line 10, column 12)"#
//! );
//! assert!(report.config.is_none());
//! ```

mod checks;
mod config;
mod validate;

pub use crate::{
    checks::{
        EnvKind, EnvValue, MODEL_FILES, Version, check_tool, env_var, find_free_port, model_dir_problems, port_in_use,
    },
    config::{
        ApiKey, AuthLockout, CacheSettings, ClusterSettings, Config, HedgeAfter, MetricsSettings, Provider,
        ProviderKind, ResilienceSettings, Role, Route, ServerSettings, StoreSettings, ToolRequirement, Unsupported,
    },
    validate::{Diagnostic, MIN_API_KEY_CHARS, Options, Report, validate, validate_file},
};

#[cfg(test)]
mod tests;
