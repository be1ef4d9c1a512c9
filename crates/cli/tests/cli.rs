//! The `modelfleet` binary run as a subprocess: the demo, the catalog,
//! selection, config and database checks, exit codes.

use std::{path::Path, process::Command};

fn modelfleet(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelfleet"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("MODELFLEET_KEY_TEAM_A", "team-a-key-0123456789")
        .env("MODELFLEET_KEY_OPS", "ops-key-0123456789ab")
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn db(dir: &tempfile::TempDir) -> String {
    dir.path().join("fleet.db").display().to_string()
}

#[test]
fn the_demo_runs_reports_json_and_accumulates_history() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = modelfleet(&["demo", "--requests", "200", "--json", "--db", &db(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("the demo prints JSON");
    let summary = &json["summary"];
    assert_eq!(summary["requests"], 200);
    assert_eq!(summary["served"].as_u64().unwrap() + summary["failed"].as_u64().unwrap(), 200);
    assert!(summary["served"].as_u64().unwrap() >= 180, "{summary}");
    let models = json["report"]["groups"].as_array().unwrap();
    assert!(models.len() >= 4, "traffic spread over the catalog: {models:?}");
    let requests: u64 = models.iter().map(|m| m["requests"].as_u64().unwrap()).sum();
    // Requests no model can meet make no attempt; every served one made at least one.
    assert!(requests >= summary["served"].as_u64().unwrap(), "every attempt is recorded");
    assert_eq!(json["report"]["totals"]["requests"].as_u64().unwrap(), requests);
    assert!(json["report"]["overview"]["budgets"][0]["spent"].as_str().unwrap() != "0");
    // The demo's report is `modelfleet report` over the run: the same code, the same figures.
    let from = json["report"]["from"].as_str().unwrap();
    let (code, stdout, stderr) = modelfleet(&["report", "--json", "--from", from, "--db", &db(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["groups"], json["report"]["groups"], "the demo and `modelfleet report` agree");
    assert_eq!(report["ranking"], json["report"]["ranking"]);

    // A second run adds to the history in the same database.
    let (code, stdout, _) = modelfleet(&["demo", "--requests", "200", "--json", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["report"]["totals"]["requests"].as_u64().unwrap(), requests, "same seed, same traffic");
    let (code, stdout, _) = modelfleet(&["report", "--json", "--last", "1h", "--by", "provider", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["totals"]["requests"].as_u64().unwrap(), 2 * requests, "both runs are in the last hour");
    assert_eq!(report["by"], "provider");

    // The human report reads well and names the parts the demo promises.
    let (code, stdout, _) = modelfleet(&["demo", "--requests", "100", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    for needle in [
        "modelfleet demo: 100 requests",
        "Report from ",
        "P95 ms",
        "TTFT p50",
        "Ranking (score: 60% success rate, 25% speed, 15% user rating):",
        "Overview:",
        "top performers: ",
        "Health now: ",
        "Budget global",
        "Recommendations",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
    // A bad range is bad usage (exit 2), naming the flag.
    let (code, _, stderr) = modelfleet(&["report", "--last", "3 days", "--db", &db(&dir)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("last: \"3 days\" is not a span"), "{stderr}");
}

#[test]
fn config_check_exit_codes_and_report() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/modelfleet.example.toml");
    let (code, stdout, _) = modelfleet(&["config", "check", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.ends_with("0 error(s), 0 warning(s)\n"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[server]\nlisten = \"0.0.0.0:80\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n[[models]]\nid = \"gpt-4o\"\nprovider = \"openia\"\ncontext_windw = 128000\n",
    )
    .unwrap();
    let (code, stdout, _) = modelfleet(&["config", "check", broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    insta::assert_snapshot!("config_check_broken", stdout);
    let (code, stdout, _) = modelfleet(&["config", "check", broken.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["errors"].as_array().unwrap().len(), 2);

    let (code, stdout, _) = modelfleet(&["config", "check", "/nonexistent/modelfleet.toml"]);
    assert_eq!(code, 1);
    assert!(stdout.starts_with("error: cannot read /nonexistent/modelfleet.toml"), "{stdout}");
}

#[test]
fn the_catalog_selection_and_explanations() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = modelfleet(&["models", "list", "--json", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap().as_array().unwrap().len() >= 9);
    let (code, stdout, _) =
        modelfleet(&["select", "--category", "code", "--language", "en", "--min-quality", "0.85", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    assert!(stdout.contains("(score "), "{stdout}");
    let (code, stdout, _) = modelfleet(&["explain", "--prompt-tokens", "100000", "--local-only", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    assert!(stdout.contains("rejected: context window 4096 < 100001 tokens needed"), "{stdout}");
    // Every ranked model shows its score's terms with their weights.
    let (code, stdout, _) = modelfleet(&["explain", "--category", "code", "--language", "en", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    let ranked = stdout.lines().filter(|l| l.contains(" score ")).count();
    let terms =
        stdout.lines().filter(|l| l.trim_start().starts_with("quality ") && l.contains(" + reliability ")).count();
    let more = stdout.lines().filter(|l| l.trim_start().starts_with("+ speed ") && l.contains(" + priority ")).count();
    assert!(ranked >= 5 && terms == ranked && more == ranked, "{stdout}");
    assert!(stdout.contains(" + reliability 0.900×3 + language 1.000×1 + cost "), "{stdout}");
    let (code, _, stderr) = modelfleet(&["select", "--max-cost=-1", "--db", &db(&dir)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--max-cost must be >= 0, got $-1"), "{stderr}");
    let (code, _, stderr) = modelfleet(&["select", "--prompt-tokens", "5000000", "--db", &db(&dir)]);
    assert_eq!(code, 1, "no model matches");
    assert!(stderr.contains("no model satisfies these requirements"), "{stderr}");

    let spec = dir.path().join("extra.toml");
    std::fs::write(&spec, "[[models]]\nid = \"my-model\"\nprovider = \"local\"\nlocal = true\ncontext_window = 8192\n")
        .unwrap();
    assert_eq!(modelfleet(&["models", "add", spec.to_str().unwrap(), "--db", &db(&dir)]).0, 0);
    let (code, stdout, _) = modelfleet(&["models", "show", "my-model", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"context_window\": 8192"), "{stdout}");
    assert_eq!(modelfleet(&["models", "remove", "my-model", "--db", &db(&dir)]).0, 0);
    let (code, _, stderr) = modelfleet(&["models", "show", "my-model", "--db", &db(&dir)]);
    assert_eq!(code, 3);
    assert!(stderr.contains("no model \"my-model\" in the catalog"), "{stderr}");
}

#[test]
fn db_check_finds_a_broken_file_and_repairs_on_request() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(modelfleet(&["models", "list", "--db", &db(&dir)]).0, 0);
    let (code, stdout, _) = modelfleet(&["db", "check", "--db", &db(&dir)]);
    assert_eq!(code, 0);
    assert!(stdout.contains("integrity     ok"), "{stdout}");
    std::fs::write(dir.path().join("fleet.db"), b"definitely not a database, just some bytes").unwrap();
    std::fs::remove_file(dir.path().join("fleet.db-wal")).ok();
    let (code, _, stderr) = modelfleet(&["db", "check", "--db", &db(&dir)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not an SQLite database; it was left untouched"), "{stderr}");
    let (code, _, stderr) = modelfleet(&["models", "list", "--db", &db(&dir)]);
    assert_eq!(code, 3, "an unusable database stops the command with a clear error");
    assert!(stderr.starts_with("error: modelfleet could not start:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, _, stderr) = modelfleet(&["db", "check", "--repair", "--db", &db(&dir)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("moved the database aside to"), "{stderr}");
    assert_eq!(modelfleet(&["models", "list", "--db", &db(&dir)]).0, 0, "a fresh database starts");
}

#[test]
fn bad_usage_exits_2_with_help() {
    let (code, _, stderr) = modelfleet(&["demo", "--requests", "lots"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid value 'lots'"), "{stderr}");
    let (code, stdout, _) = modelfleet(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Exit codes:"), "{stdout}");
}

/// One HTTP/1.1 request over a plain socket; the status line and the body.
fn http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// `modelfleet serve` on a free loopback port with `args`: the child, its
/// stderr (read up to the line saying where it listens) and that address.
fn serve(args: &[&str]) -> (std::process::Child, std::io::BufReader<std::process::ChildStderr>, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelfleet"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited before listening");
        if let Some(rest) = line.split("modelfleet gateway on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, stderr, addr)
}

#[test]
fn serve_answers_on_embedded_defaults_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut stderr, addr) = serve(&["--db", &db(&dir)]);
    let body = r#"{"model":"auto","messages":[{"role":"user","content":"hello"}]}"#;
    let answer = http(
        &addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: cli-rated-1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-modelfleet-model:") && answer.contains("\"chat.completion\""), "{answer}");
    // Without a config every provider is simulated: said in every answer, and loudly at startup.
    assert!(answer.contains("x-modelfleet-simulated: true"), "{answer}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert_eq!(child.wait().unwrap().code(), Some(0), "{rest}");
    assert!(rest.contains("the store is flushed"), "{rest}");
    assert!(rest.contains("EVERY PROVIDER IS SIMULATED"), "{rest}");
    // The request was recorded in the database the gateway flushed.
    let (code, stdout, stderr) = modelfleet(&["report", "--json", "--db", &db(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["totals"]["requests"], 1, "{report}");
    assert!(answer.contains("x-request-id: cli-rated-1"), "{answer}");

    // modelfleet rate: by the answer's id, into the same database.
    let (code, stdout, stderr) = modelfleet(&["rate", "cli-rated-1", "4", "--comment", "fine", "--db", &db(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("rated cli-rated-1 4/5 ("), "{stdout}");
    let (_, stdout, _) = modelfleet(&["report", "--json", "--db", &db(&dir)]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&report["totals"]["ratings"], &report["totals"]["mean_rating"]),
        (&serde_json::json!(1), &serde_json::json!(4.0))
    );
    // An unknown id is an error saying so (exit 3); a score out of range is bad usage (exit 2).
    let (code, _, stderr) = modelfleet(&["rate", "nobody", "4", "--db", &db(&dir)]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no answered request has id \"nobody\""), "{stderr}");
    let (code, _, stderr) = modelfleet(&["rate", "cli-rated-1", "6", "--db", &db(&dir)]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn spend_the_clients_were_told_of_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n\n[[models]]\nid = \"paid\"\n\
             provider = \"sim\"\ncontext_window = 8192\nmax_output_tokens = 200\ninput_price_per_mtok = \"3\"\n\
             output_price_per_mtok = \"15\"\ntypical_latency_ms = 2\nquality = 0.8\n\n[[budgets]]\nscope = \"global\"\n\
             period = \"monthly\"\nlimit = \"1000\"\nenforcement = \"hard\"\n",
            db(&dir)
        ),
    )
    .unwrap();
    let (mut child, _stderr, addr) = serve(&["--config", &config.display().to_string()]);
    // A burst from 8 clients at once; each answer's x-modelfleet-cost is what the client was told.
    let told: Vec<i64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let addr = addr.clone();
                s.spawn(move || {
                    (0..6)
                        .map(|j| {
                            let body = format!(
                                r#"{{"model":"paid","max_tokens":5,"messages":[{{"role":"user","content":"burst {i}.{j}"}}]}}"#
                            );
                            let answer = http(
                                &addr,
                                &format!(
                                    "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
                                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                                    body.len()
                                ),
                            );
                            // Served, or refused after a simulated failure: either way the answer says its cost.
                            let cost = answer
                                .lines()
                                .find_map(|l| l.strip_prefix("x-modelfleet-cost: "))
                                .unwrap_or_else(|| panic!("no cost header: {answer}"));
                            cost.trim().parse::<modelfleet::registry::Money>().unwrap().nanos()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    // Killed at once: no drain, no flush. Every answer above returned after its commit.
    let status = Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let _ = child.wait();
    let store =
        modelfleet::store::Store::open(dir.path().join("fleet.db"), modelfleet::store::StoreConfig::default()).unwrap();
    let stored: i64 = store.spend().unwrap().iter().map(|r| r.spent.nanos()).sum();
    assert_eq!(told.len(), 48);
    assert!(told.iter().filter(|c| **c > 0).count() >= 40, "most were served and paid: {told:?}");
    assert_eq!(stored, told.iter().sum::<i64>(), "every dollar a client was told of is in the database");
}

#[test]
fn budgets_are_set_listed_reset_and_removed_in_a_stopped_gateways_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir);
    let run = |args: &[&str]| {
        let mut all = vec!["budgets"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--db", &db]);
        modelfleet(&all)
    };
    // A gateway that died left its address behind: nobody answers there.
    std::fs::write(format!("{db}.serving"), r#"{"url":"http://127.0.0.1:1","pid":1}"#).unwrap();
    let (code, stdout, stderr) = run(&["set", "key:team-a", "daily", "2.50"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "key:team-a daily: added, limit $2.5");
    assert!(stderr.contains("no gateway answers at http://127.0.0.1:1"), "{stderr}");
    let (code, stdout, _) = run(&["set", "key:team-a", "daily", "4"]);
    assert_eq!((code, stdout.trim()), (0, "key:team-a daily: limit $4"));
    let (code, stdout, _) = run(&["list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["limit"], "4", "{listed}");
    assert_eq!(listed[0]["source"], "api", "{listed}");
    let (code, stdout, _) = run(&["reset", "key:team-a", "daily"]);
    assert_eq!((code, stdout.trim()), (0, "key:team-a daily: reset (it had spent $0)"));
    let (code, _, stderr) = run(&["reset", "key:nobody", "weekly"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("no weekly budget for key:nobody"), "{stderr}");
    let (code, _, stderr) = run(&["set", "team:x", "daily", "1"]);
    assert_eq!(code, 2, "a scope that does not parse is bad usage");
    assert!(stderr.contains("expected global, key:NAME, provider:NAME or model:NAME"), "{stderr}");
    let (code, stdout, _) = run(&["remove", "key:team-a", "daily"]);
    assert_eq!((code, stdout.trim()), (0, "key:team-a daily: removed"));
    let (code, stdout, _) = run(&["list"]);
    assert_eq!((code, stdout.trim()), (0, "no budgets"));
}

#[test]
fn budgets_go_through_a_running_gateway_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir);
    let (mut child, _stderr, addr) = serve(&["--db", &db]);
    // The gateway keeps budgets in memory: the CLI finds it beside the
    // database and changes them through its admin API, so they apply at once.
    let (code, stdout, stderr) = modelfleet(&["budgets", "set", "global", "daily", "3", "--db", &db]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("global") && stdout.contains("daily"), "{stdout}");
    let answer = http(&addr, "GET /v1/admin/budgets HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"limit\":\"3\""), "{answer}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Stopped: the file is gone, the database is edited, the budget is there.
    let (code, stdout, stderr) = modelfleet(&["budgets", "list", "--json", "--db", &db]);
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["limit"], "3", "{listed}");
}

/// The human report over the stored history, as `modelfleet report`
/// prints it after a seeded demo run: pinned whole (the range's times
/// replaced, live health left out: it depends on the seconds between the
/// run and the report).
#[test]
fn the_report_after_a_seeded_demo_reads_as_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = modelfleet(&["demo", "--requests", "300", "--json", "--db", &db(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let from = json["report"]["from"].as_str().unwrap().to_owned();
    let (code, stdout, stderr) = modelfleet(&["report", "--from", &from, "--db", &db(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    let mut pinned = Vec::new();
    let mut in_health = false;
    for line in stdout.lines() {
        if line.starts_with("Health now:") {
            in_health = true;
        } else if in_health && line.is_empty() {
            in_health = false;
            continue;
        }
        if in_health {
            continue;
        }
        if line.starts_with("Report from ") {
            pinned.push("Report from FROM to TO, by model:".to_owned());
        } else if let Some((figures, _health)) = line.strip_prefix("  provider ").and_then(|l| l.rsplit_once("  ")) {
            // A provider's health now is live, like the section left out.
            pinned.push(format!("  provider {figures}  HEALTH"));
        } else {
            pinned.push(line.to_owned());
        }
    }
    insta::assert_snapshot!("report_after_seeded_demo", pinned.join("\n"));
}

/// A child process killed when the test ends, passed or failed.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cluster_status_shows_the_replicas_the_catalog_and_the_budgets() {
    let Some(url) = modelfleet_test_support::postgres_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let schema = modelfleet_test_support::Schema::new(&url, "cli_status");
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n\n[[models]]\nid = \"paid\"\n\
             provider = \"sim\"\ncontext_window = 8192\nmax_output_tokens = 200\ninput_price_per_mtok = \"3\"\n\
             output_price_per_mtok = \"15\"\n\n[[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"7\"\n\
             enforcement = \"hard\"\n\n[cluster]\npostgres_url = \"{url}\"\nschema = \"{}\"\nreplica = \"cli-1\"\n",
            db(&dir),
            schema.name
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    // Before any replica made the schema: a clear error, nothing created.
    let (code, _, stderr) = modelfleet(&["cluster", "status", "--config", &config]);
    assert_ne!(code, 0);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (child, _stderr, _addr) = serve(&["--config", &config]);
    let child = Killed(child);
    // The replica's first heartbeat goes out within a second of its start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let (code, stdout, stderr) = modelfleet(&["cluster", "status", "--config", &config, "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        if status["replicas"].as_array().is_some_and(|r| !r.is_empty()) || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status["replicas"][0]["name"], "cli-1", "{status}");
    assert_eq!(status["budgets"][0]["limit"], "$7", "{status}");
    assert_eq!((&status["catalog"]["models"], &status["catalog"]["from_config"]), (&1.into(), &1.into()), "{status}");
    assert!(status["catalog"]["revision"].as_u64().unwrap_or(0) > 0, "{status}");
    let (code, text, stderr) = modelfleet(&["cluster", "status", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("catalog: revision "), "{text}");
    assert!(text.contains(", 1 models (1 from the configuration, 0 through the admin API)"), "{text}");
    assert!(text.contains("cli-1") && !text.contains(&url), "{text}");
    drop(child);
    drop(schema);
}
