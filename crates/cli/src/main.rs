//! The `modelfleet` binary: the demo (the main job), the gateway (`serve`),
//! the catalog, selection and explanations, reports over the stored history
//! and ratings, budgets, and config and database checks.
//!
//! Exit codes: 0 success; 1 a check failed (invalid config, unsound
//! database, no model matches); 2 bad usage; 3 an error (the message says
//! what and what to do).

mod budgets;
mod cluster;
mod demo;
mod output;
mod serve;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand};
use modelfleet::{
    Fleet, FleetOptions, ReportQuery, Request,
    registry::{Capability, Category, Money},
    selector::{Locality, Requirements},
    store::StoreConfig,
};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  a check failed: invalid config, unsound database, no model matches
  2  bad usage (unknown flag, missing argument)
  3  an error: the message says what went wrong and what to do

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=modelfleet=debug) for more.
The database defaults to $MODELFLEET_DB, else $XDG_DATA_HOME/modelfleet/fleet.db,
else ~/.local/share/modelfleet/fleet.db; --db overrides it.";

/// Run a fleet of AI models: pick the right model per request, survive
/// failures, know the cost, stay in budget.
#[derive(Parser, Debug)]
#[command(name = "modelfleet", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the default catalog on simulated providers and report: the main job.
    ///
    /// Sends mixed requests (categories, languages, context sizes) through
    /// the full stack in simulated time — local models are slower,
    /// deepseek-chat is flaky, claude-3-haiku is rate-limited — and prints
    /// per-model requests, success, latency percentiles, tokens, cost,
    /// fallbacks and circuits, the budget with its forecast, and
    /// recommendations. Results persist in the database: a second run shows
    /// the accumulated history.
    Demo {
        /// How many requests.
        #[arg(long, default_value_t = 2_000)]
        requests: u32,
        /// The seed of the requests and the simulated providers.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the OpenAI-compatible gateway (see the README and config/modelfleet.example.toml).
    ///
    /// Without --config: the default catalog on simulated providers, on
    /// 127.0.0.1:8080. Stops on Ctrl-C or SIGTERM after finishing the
    /// requests and streams in flight and flushing the database.
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen here instead (host:port; port 0 picks a free one).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The database file instead of the configured one.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Runtime worker threads (default: one per core; 1 runs everything on one thread).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// The model catalog.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// The model that would serve a request with these requirements.
    Select(SelectArgs),
    /// The ranking with score breakdowns, and every rejected model with why.
    Explain(SelectArgs),
    /// A report over any range of the history in the database: per group
    /// (requests, success, latency and time-to-first-token percentiles,
    /// tokens, exact cost, fallbacks, ratings), a ranking with its score,
    /// recommendations with alternatives, an overview, health and budgets.
    ///
    /// Times are RFC 3339 (2026-12-01T08:00:00Z), dates (2026-12-01, UTC)
    /// or Unix milliseconds; spans are 90m, 24h, 7d, 2w, 1h30m. Without a
    /// range: the last 24 hours. The gateway serves the same report at
    /// GET /v1/admin/report?from=&to=&last=&by=.
    Report {
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
        /// A replica's configuration with `[cluster]`: the report is the
        /// whole fleet's, read from its PostgreSQL (every replica's records).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The start of the range.
        #[arg(long, conflicts_with = "last")]
        from: Option<String>,
        /// The end of the range (default: now).
        #[arg(long, conflicts_with = "last")]
        to: Option<String>,
        /// The range: this long before now.
        #[arg(long)]
        last: Option<String>,
        /// Group by model, provider, category, language or key.
        #[arg(long, default_value = "model")]
        by: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Rate the answer to a request (by its x-request-id) from 1 to 5: the
    /// model's quality signal and the reports use ratings. A running
    /// gateway takes them at POST /v1/feedback.
    Rate {
        /// The request's id (the x-request-id of its response).
        request_id: String,
        /// 1 (bad) to 5 (excellent).
        #[arg(value_parser = clap::value_parser!(u8).range(1..=5))]
        score: u8,
        /// A comment kept with the rating.
        #[arg(long)]
        comment: Option<String>,
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Budgets: list, set, reset, remove (a stopped gateway's --db, or a running one's --gateway).
    Budgets {
        #[command(subcommand)]
        action: budgets::BudgetsAction,
    },
    /// Replicas sharing budgets ([cluster]): `cluster status`.
    Cluster {
        #[command(subcommand)]
        action: cluster::ClusterAction,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The database.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
}

#[derive(Subcommand, Debug)]
enum ModelsAction {
    /// Every model in the catalog.
    List {
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// One model, every field.
    Show {
        /// The model id.
        id: String,
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Add the models of a TOML file (`[[models]]` entries, catalog format).
    Add {
        /// The file.
        file: PathBuf,
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Remove a model.
    Remove {
        /// The model id.
        id: String,
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Validate a configuration file: every problem with its path, line and column.
    Check {
        /// The file.
        file: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Also check local model directories, the listen port and tools.
        #[arg(long)]
        deep: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DbAction {
    /// Integrity, schema version, sizes and row counts.
    Check {
        /// The database file.
        #[arg(long)]
        db: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Move an unusable database aside (kept as FILE.corrupt-TIME).
        #[arg(long)]
        repair: bool,
    },
}

/// A request's requirements, as flags.
#[allow(clippy::struct_excessive_bools)] // each bool is a command-line switch
#[derive(Args, Debug, Clone)]
struct SelectArgs {
    /// The kind of work: general, translation, vocabulary, grammar, conversation, code, reasoning, summarization, specialized.
    #[arg(long)]
    category: Option<String>,
    /// The request's language (ISO 639-1, e.g. en).
    #[arg(long)]
    language: Option<String>,
    /// Tokens in the prompt.
    #[arg(long, default_value_t = 0)]
    prompt_tokens: u32,
    /// Tokens the answer may take.
    #[arg(long, default_value_t = 0)]
    max_output_tokens: u32,
    /// A capability the model needs (repeat): streaming, tools, `json_mode`, vision.
    #[arg(long = "capability")]
    capabilities: Vec<String>,
    /// The most the request may cost, in dollars.
    #[arg(long)]
    max_cost: Option<String>,
    /// The lowest acceptable quality, 0 to 1.
    #[arg(long)]
    min_quality: Option<f64>,
    /// The highest acceptable latency, ms.
    #[arg(long)]
    max_latency_ms: Option<u32>,
    /// Only these providers (repeat).
    #[arg(long = "provider")]
    providers: Vec<String>,
    /// Local models only.
    #[arg(long, conflicts_with = "cloud_only")]
    local_only: bool,
    /// Cloud models only.
    #[arg(long)]
    cloud_only: bool,
    /// Rank free models first.
    #[arg(long)]
    prefer_free: bool,
    /// Rank local models first.
    #[arg(long)]
    prefer_local: bool,
    /// The database file.
    #[arg(long)]
    db: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl SelectArgs {
    fn requirements(&self) -> anyhow::Result<Requirements> {
        let category = match &self.category {
            None => None,
            Some(name) => Some(Category::ALL.into_iter().find(|c| c.as_str() == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown category {name:?}; use one of: {}",
                    Category::ALL.map(Category::as_str).join(", ")
                )
            })?),
        };
        let capabilities = self
            .capabilities
            .iter()
            .map(|c| {
                Capability::ALL.into_iter().find(|cap| cap.to_string() == *c).ok_or_else(|| {
                    anyhow::anyhow!("unknown capability {c:?}; use streaming, tools, json_mode, vision or embeddings")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let max_cost = self
            .max_cost
            .as_deref()
            .map(|text| text.parse::<Money>().map_err(|e| anyhow::anyhow!("--max-cost: {e}")))
            .transpose()?;
        let requirements = Requirements {
            category,
            language: self.language.clone(),
            prompt_tokens: self.prompt_tokens,
            max_output_tokens: self.max_output_tokens,
            capabilities,
            embedding_dimensions: None,
            unmeasured: false,
            max_cost,
            min_quality: self.min_quality,
            max_latency_ms: self.max_latency_ms,
            providers: self.providers.clone(),
            exclude_providers: Vec::new(),
            locality: if self.local_only {
                Some(Locality::LocalOnly)
            } else if self.cloud_only {
                Some(Locality::CloudOnly)
            } else {
                None
            },
            prefer_free: self.prefer_free,
            prefer_local: self.prefer_local,
            n: 1,
            available_memory_mb: None,
        };
        if let Err(modelfleet::selector::Error::InvalidRequirement { field, problem }) = requirements.check() {
            anyhow::bail!("--{} {problem}", field.replace('_', "-"));
        }
        Ok(requirements)
    }
}

/// An outcome that is not an error but a failed check (exit code 1).
pub(crate) struct CheckFailed;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Opens the fleet on `db` for a command that reads or rates (report,
/// rate, select…): it never prunes (retention 0): the file may be a
/// gateway's, kept longer than the defaults by its `[store]` settings.
async fn open(db: Option<PathBuf>) -> anyhow::Result<Fleet> {
    let store = StoreConfig { retain_days: 0, aggregate_retain_days: 0, ..StoreConfig::default() };
    Ok(Fleet::open(FleetOptions { db_path: db, store, ..FleetOptions::default() }).await?)
}

fn run(cli: Cli) -> anyhow::Result<Result<(), CheckFailed>> {
    match cli.command {
        Command::Demo { requests, seed, concurrency, db, json } => {
            demo::run(&demo::DemoArgs { requests, seed, concurrency: concurrency.max(1), db, json })?;
            Ok(Ok(()))
        }
        Command::Serve { config, listen, db, workers } => {
            serve::run(serve::ServeArgs { config, listen, db, workers: workers.map(usize::from) })
        }
        Command::Models { action } => models(action),
        Command::Select(args) => select(&args, false),
        Command::Explain(args) => select(&args, true),
        Command::Report { db, config, from, to, last, by, json } => {
            let now = modelfleet::registry::Clock::now_ms(&modelfleet::registry::SystemClock);
            let query = match ReportQuery::parse(from.as_deref(), to.as_deref(), last.as_deref(), Some(&by), now) {
                Ok(query) => query,
                // Bad usage: clap's message and exit code 2.
                Err(why) => Cli::command().error(clap::error::ErrorKind::ValueValidation, why).exit(),
            };
            runtime()?.block_on(async {
                let cluster = config.as_deref().map(cluster::cluster_settings).transpose()?;
                let fleet = open(db).await?;
                let report = match &cluster {
                    Some(settings) => fleet.cluster_report(&query, settings).await,
                    None => fleet.report(&query).await,
                };
                fleet.shutdown().await?;
                let report = report?;
                output::print(json, &report, || output::report(&report, None));
                Ok(Ok(()))
            })
        }
        Command::Rate { request_id, score, comment, db } => runtime()?.block_on(async {
            let fleet = open(db).await?;
            let rated = fleet.rate(&request_id, score, comment.as_deref(), ("cli", None)).await?;
            fleet.shutdown().await?;
            match rated {
                Some(rated) => {
                    println!("rated {} {}/5 ({} at {})", rated.request_id, rated.rating, rated.model, rated.provider);
                    Ok(Ok(()))
                }
                None => Err(anyhow::anyhow!(
                    "no answered request has id {request_id:?} in this database (unknown, failed, or pruned)"
                )),
            }
        }),
        Command::Budgets { action } => {
            // --gateway talks HTTP: this runtime has the I/O driver too.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(budgets::run(action))?;
            Ok(Ok(()))
        }
        Command::Cluster { action } => cluster::run(action).map(Ok),
        Command::Config { action: ConfigAction::Check { file, json, deep } } => Ok(config_check(&file, json, deep)),
        Command::Db { action: DbAction::Check { db, json, repair } } => db_check(db, json, repair),
    }
}

fn models(action: ModelsAction) -> anyhow::Result<Result<(), CheckFailed>> {
    runtime()?.block_on(async {
        match action {
            ModelsAction::List { db, json } => {
                let fleet = open(db).await?;
                let models: Vec<modelfleet::registry::ModelSpec> =
                    fleet.catalog().list().iter().map(|m| (**m).clone()).collect();
                fleet.shutdown().await?;
                output::print(json, &models, || output::models(&models));
            }
            ModelsAction::Show { id, db } => {
                let fleet = open(db).await?;
                let model = fleet.catalog().get(&id);
                fleet.shutdown().await?;
                match model {
                    Some(model) => println!("{}", serde_json::to_string_pretty(&*model)?),
                    None => anyhow::bail!("no model {id:?} in the catalog (see `modelfleet models list`)"),
                }
            }
            ModelsAction::Add { file, db } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                let specs = modelfleet::registry::parse_catalog(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let fleet = open(db).await?;
                for spec in specs {
                    let id = spec.id.clone();
                    fleet.catalog().add(spec)?;
                    println!("added {id}");
                }
                fleet.shutdown().await?;
            }
            ModelsAction::Remove { id, db } => {
                let fleet = open(db).await?;
                fleet.catalog().remove(&id)?;
                fleet.shutdown().await?;
                println!("removed {id}");
            }
        }
        Ok(Ok(()))
    })
}

fn select(args: &SelectArgs, explain: bool) -> anyhow::Result<Result<(), CheckFailed>> {
    let requirements = args.requirements()?;
    runtime()?.block_on(async {
        let fleet = open(args.db.clone()).await?;
        let request = Request { requirements, ..Request::default() };
        let result = if explain {
            let (text, json) = fleet.explain(&request)?;
            output::print(args.json, &json, || print!("{text}"));
            Ok(())
        } else {
            let ranked = fleet.rank(&request)?;
            if let Some((id, score)) = ranked.first() {
                let json = serde_json::json!({"model": id, "score": score});
                output::print(args.json, &json, || println!("{id} (score {score:.3})"));
                Ok(())
            } else {
                eprintln!("no model satisfies these requirements; `modelfleet explain` with the same flags says why");
                Err(CheckFailed)
            }
        };
        fleet.shutdown().await?;
        Ok(result)
    })
}

fn config_check(file: &std::path::Path, json: bool, deep: bool) -> Result<(), CheckFailed> {
    let env = |name: &str| std::env::var(name).ok();
    let base_dir = file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let options =
        modelfleet::config::Options { env: &env, check_files: deep, check_ports: deep, check_tools: deep, base_dir };
    let report = modelfleet::config::validate_file(file, &options);
    output::print(json, &report, || println!("{report}"));
    if report.is_valid() { Ok(()) } else { Err(CheckFailed) }
}

fn db_check(db: Option<PathBuf>, json: bool, repair: bool) -> anyhow::Result<Result<(), CheckFailed>> {
    let path = db.unwrap_or_else(modelfleet::default_db_path);
    match modelfleet::store::check(&path) {
        Ok(report) if report.problems.is_empty() && report.schema_version <= report.supported_version => {
            output::print(json, &report, || output::db(&path, &report));
            Ok(Ok(()))
        }
        Ok(report) => {
            output::print(json, &report, || output::db(&path, &report));
            quarantine_if(repair, &path)?;
            Ok(Err(CheckFailed))
        }
        Err(err @ (modelfleet::store::Error::NotSqlite { .. } | modelfleet::store::Error::Corrupt { .. })) => {
            eprintln!("{err}");
            quarantine_if(repair, &path)?;
            Ok(Err(CheckFailed))
        }
        Err(err @ modelfleet::store::Error::Foreign { .. }) => {
            // Somebody else's database: reported, never moved aside, `--repair` or not.
            eprintln!("{err}");
            Ok(Err(CheckFailed))
        }
        Err(err) => Err(err.into()),
    }
}

fn quarantine_if(repair: bool, path: &std::path::Path) -> anyhow::Result<()> {
    if repair {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let aside = modelfleet::store::quarantine(path, now)?;
        eprintln!("moved the database aside to {}; the next run starts a fresh one", aside.display());
    } else {
        eprintln!("run `modelfleet db check --repair` to move it aside (it is kept, not deleted) and start fresh");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The gateway says where it listens and how it is protected; other commands stay quiet.
    let default = if matches!(cli.command, Command::Serve { .. }) {
        "warn,modelfleet=info,modelfleet_gateway=info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(CheckFailed)) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(3)
        }
    }
}
