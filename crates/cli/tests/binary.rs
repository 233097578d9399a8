//! The `tombstone` binary as a newcomer uses it: real processes, a real TCP port, config
//! files on disk, and the CLI run beside a serving server.
//!
//! Every test gets its own temporary directory; servers listen on `127.0.0.1:0` and are
//! killed when their guard drops, so a failing assertion never leaves a process behind.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::{Output, Server, Workspace, create_key, header, json_of, path_str, problem, run_bounded};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long a one-shot command may run before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

const SCHEMA: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[retention]
default = "7d"

[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku         = { type = "string", required = true, max_length = 32 }
name        = { type = "string", required = true }
price_cents = { type = "integer" }
"#;

// ---------------------------------------------------------------------------------------
// Harness

impl Workspace {
    fn config(&self) -> PathBuf {
        self.config_dir.join("tombstone.toml")
    }

    /// Runs a one-shot command in the working directory.
    fn run(&self, args: &[&str]) -> Output {
        run_bounded(Some(&self.cwd), args, COMMAND_TIMEOUT)
    }

    /// `tombstone keys create … --json`, asserting success; returns the printed object.
    fn create_key(&self, tenant: &str, scopes: &str) -> Value {
        let config = self.config();
        create_key(|args| self.run(args), path_str(&config), tenant, scopes)
    }

    /// `tombstone serve --config FILE --listen 127.0.0.1:0`.
    fn serve(&self) -> Server {
        let config = self.config();
        Server::start(&self.cwd, &["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"])
    }
}

impl Server {
    /// `tombstone ARGS…` in `cwd` with `TOMBSTONE_LOG=info`, once it is listening.
    fn start(cwd: &Path, args: &[&str]) -> Self {
        Server::spawn(cwd, args, Some("info"))
    }
}

// ---------------------------------------------------------------------------------------
// Configuration files

#[test]
fn relative_sqlite_path_resolves_against_the_config_directory() {
    let ws = Workspace::new();
    let config = ws.write_config(SCHEMA);
    ws.run(&["migrate", "--config", path_str(&config)]).assert_success();
    assert!(ws.config_dir.join("data/tombstone.db").is_file(), "the database belongs next to the config file");
    assert!(!ws.cwd.join("data").exists(), "nothing may be created relative to the working directory");

    // Without [storage], the default tombstone-data/ is relative to the config file too.
    let ws = Workspace::new();
    let config = ws.write_config("[collections.notes.fields]\ntext = { type = \"string\" }\n");
    let server = ws.serve();
    assert_eq!(server.http.get(server.url("/healthz")).send().expect("healthz").status(), StatusCode::OK);
    assert!(ws.config_dir.join("tombstone-data/tombstone.db").is_file());
    assert!(!ws.cwd.join("tombstone-data").exists());
    drop(server);
    assert!(config.is_file());
}

// ---------------------------------------------------------------------------------------
// Keys and the record lifecycle over a real port

#[test]
fn cli_key_drives_the_record_lifecycle_over_http() {
    let ws = Workspace::new();
    ws.write_config(SCHEMA);
    let key = ws.create_key("t1", "admin");
    let object = key.as_object().expect("keys create --json prints an object");
    let mut members: Vec<&str> = object.keys().map(String::as_str).collect();
    members.sort_unstable();
    assert_eq!(members, ["id", "name", "scopes", "secret", "tenant"], "{key}");
    assert_eq!(key["tenant"], "t1");
    assert_eq!(key["scopes"], json!(["admin"]));
    assert!(key["id"].as_str().is_some_and(|id| id.starts_with("key_")), "{key}");
    let secret = key["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("tsk_"), "{secret}");

    let server = ws.serve();

    let anonymous = server.http.get(server.url("/v1/products")).send().expect("GET");
    assert_eq!(header(&anonymous, "www-authenticate").as_deref(), Some("Bearer"));
    problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized");

    // create
    let created = server.post("/v1/products", &secret, &json!({"sku": "A-1", "name": "Mug", "price_cents": 450}));
    assert_eq!(header(&created, "etag").as_deref(), Some("\"v1\""));
    assert!(header(&created, "x-request-id").is_some_and(|r| !r.is_empty()));
    let location = header(&created, "location").expect("Location");
    let body = json_of(created, StatusCode::CREATED);
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/v1/products/{id}"));
    assert_eq!(body["version"], 1);
    assert_eq!(body["deleted"], false);
    assert_eq!(body["deleted_at"], Value::Null);
    assert_eq!(body["legal_hold"], false);

    // get
    let got = server.get(&location, &secret);
    assert_eq!(header(&got, "etag").as_deref(), Some("\"v1\""));
    let got = json_of(got, StatusCode::OK);
    assert_eq!(got, body);

    // delete
    let deleted = server
        .http
        .delete(server.url(&format!("{location}?reason=duplicate")))
        .bearer_auth(&secret)
        .send()
        .expect("DELETE");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let deletion_id = header(&deleted, "deletion-id").expect("Deletion-Id");
    assert!(deletion_id.starts_with("del_"), "{deletion_id}");
    assert_eq!(deleted.text().expect("body"), "");

    // gone for plain reads
    problem(server.get(&location, &secret), StatusCode::NOT_FOUND, "not-found");
    let list = json_of(server.get("/v1/products", &secret), StatusCode::OK);
    assert_eq!(list["items"], json!([]), "{list}");

    // visible with include=deleted
    let with_deleted = server.get(&format!("{location}?include=deleted"), &secret);
    assert_eq!(header(&with_deleted, "etag").as_deref(), Some("\"v2\""));
    let tomb = json_of(with_deleted, StatusCode::OK);
    assert_eq!(tomb["deleted"], true);
    assert_eq!(tomb["version"], 2);
    assert_eq!(tomb["delete_reason"], "duplicate");
    assert_eq!(tomb["deletion_id"], deletion_id.as_str());
    assert_eq!(tomb["deleted_by"], key["id"]);
    assert!(tomb["deleted_at"].is_string() && tomb["purge_at"].is_string(), "{tomb}");

    // restore
    let restored =
        server.http.post(server.url(&format!("{location}:restore"))).bearer_auth(&secret).send().expect("POST");
    assert_eq!(header(&restored, "etag").as_deref(), Some("\"v3\""));
    let restored = json_of(restored, StatusCode::OK);
    assert_eq!(restored["deleted"], false);
    assert_eq!(restored["version"], 3);
    assert_eq!(restored["deleted_at"], Value::Null);
    assert_eq!(restored["sku"], "A-1");
    assert_eq!(json_of(server.get(&location, &secret), StatusCode::OK)["version"], 3);
}

#[test]
fn key_created_while_serving_works_at_once_and_revocation_takes_effect_within_a_second() {
    let ws = Workspace::new();
    ws.write_config(SCHEMA);
    let server = ws.serve();

    let key = ws.create_key("t1", "read,write");
    let secret = key["secret"].as_str().expect("secret");
    let id = key["id"].as_str().expect("id");
    assert_eq!(key["scopes"], json!(["read", "write"]));
    json_of(server.post("/v1/products", secret, &json!({"sku": "B-1", "name": "Pen"})), StatusCode::CREATED);
    assert_eq!(server.get("/v1/products", secret).status(), StatusCode::OK);

    let config = ws.config();
    let revoked = ws.run(&["keys", "revoke", id, "--config", path_str(&config)]);
    revoked.assert_success();
    let revoked_at = Instant::now();
    let elapsed = loop {
        let status = server.get("/v1/products", secret).status();
        if status == StatusCode::UNAUTHORIZED {
            break revoked_at.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(revoked_at.elapsed() < Duration::from_secs(3), "the revoked key still works after 3 s");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(elapsed < Duration::from_millis(1500), "revocation took {elapsed:?}; the contract is 1 s");

    // Revoking it again names the key and fails.
    let again = ws.run(&["keys", "revoke", id, "--config", path_str(&config)]);
    let line = again.assert_one_line_failure();
    assert!(line.contains(id), "{line}");
}

#[test]
fn keys_list_never_shows_secrets() {
    let ws = Workspace::new();
    let config = ws.write_config(SCHEMA);
    let a = ws.create_key("t1", "admin");
    let b = ws.create_key("t2", "read,delete:products");

    let out = ws.run(&["keys", "list", "--config", path_str(&config), "--json"]);
    out.assert_success();
    let list: Value = serde_json::from_str(out.stdout.trim()).expect("keys list --json");
    let items = list.as_array().expect("an array of keys");
    assert_eq!(items.len(), 2, "{list}");
    for (item, created) in items.iter().zip([&a, &b]) {
        assert_eq!(item["id"], created["id"]);
        assert_eq!(item["tenant"], created["tenant"]);
        assert_eq!(item["scopes"], created["scopes"]);
        let object = item.as_object().expect("object");
        assert!(object.keys().all(|k| !k.contains("secret") && !k.contains("hash")), "{item}");
    }
    let human = ws.run(&["keys", "list", "--config", path_str(&config)]);
    human.assert_success();
    for out in [&out.stdout, &human.stdout] {
        assert!(!out.contains("tsk_"), "a secret leaked into `keys list`: {out}");
        assert!(!out.contains(a["secret"].as_str().unwrap()) && !out.contains(b["secret"].as_str().unwrap()));
    }
    assert!(human.stdout.contains(a["id"].as_str().unwrap()));
}

// ---------------------------------------------------------------------------------------
// Migrations

#[test]
fn migrate_is_idempotent_and_schema_changes_keep_records() {
    let ws = Workspace::new();
    let config = ws.write_config(SCHEMA);
    ws.run(&["migrate", "--config", path_str(&config)]).assert_success();
    ws.run(&["migrate", "--config", path_str(&config)]).assert_success();
    let secret = ws.create_key("t1", "admin")["secret"].as_str().expect("secret").to_string();

    let id = {
        let server = ws.serve();
        let created = json_of(
            server.post("/v1/products", &secret, &json!({"sku": "K-1", "name": "Kettle"})),
            StatusCode::CREATED,
        );
        created["id"].as_str().expect("id").to_string()
    };

    // A new field on an existing collection and a new collection.
    ws.write_config(&format!(
        "{SCHEMA}color = {{ type = \"string\" }}\n\n[collections.tags.fields]\nlabel = {{ type = \"string\", required = true }}\n"
    ));
    ws.run(&["migrate", "--config", path_str(&config)]).assert_success();
    ws.run(&["migrate", "--config", path_str(&config)]).assert_success();

    let server = ws.serve();
    let kept = json_of(server.get(&format!("/v1/products/{id}"), &secret), StatusCode::OK);
    assert_eq!(kept["sku"], "K-1");
    assert_eq!(kept["name"], "Kettle");
    assert_eq!(kept["version"], 1);
    assert_eq!(kept["color"], Value::Null, "the new field reads as null on old records: {kept}");
    let patched = server
        .http
        .patch(server.url(&format!("/v1/products/{id}")))
        .bearer_auth(&secret)
        .header("content-type", "application/merge-patch+json")
        .body(json!({"color": "blue"}).to_string())
        .send()
        .expect("PATCH");
    assert_eq!(json_of(patched, StatusCode::OK)["color"], "blue");
    json_of(server.post("/v1/tags", &secret, &json!({"label": "sale"})), StatusCode::CREATED);
    let list = json_of(server.get("/v1/products?count=true", &secret), StatusCode::OK);
    assert_eq!(list["total"], 1, "{list}");
}

// ---------------------------------------------------------------------------------------
// Bad input: one line on stderr, non-zero exit

/// Invalid configs: (what, document, the key the error must name, its line).
const INVALID_CONFIGS: &[(&str, &str, &str, Option<usize>)] = &[
    ("unknown key", "[server]\nlisten = \"127.0.0.1:0\"\nlisen = \"x\"\n", "lisen", Some(3)),
    (
        "unknown field type",
        "[collections.a.fields]\nx = { type = \"strng\" }\n",
        "collections.a.fields.x.type",
        Some(2),
    ),
    (
        "unique over an undeclared field",
        "[collections.a]\nunique = [[\"nope\"]]\n\n[collections.a.fields]\nx = { type = \"string\" }\n",
        "collections.a.unique[0]",
        Some(2),
    ),
    (
        "reserved field name",
        "[collections.a.fields]\nx = { type = \"string\" }\ndeleted_at = { type = \"timestamp\" }\n",
        "collections.a.fields.deleted_at",
        Some(3),
    ),
    ("bad duration", "[collections.a]\nretention = \"forever\"\n", "collections.a.retention", Some(2)),
];

#[test]
fn invalid_configs_are_refused_with_one_line_naming_the_key() {
    let ws = Workspace::new();
    for (what, toml, key, line) in INVALID_CONFIGS {
        let config = ws.write_config(toml);
        let config = path_str(&config);
        for args in [
            &["serve", "--config", config, "--listen", "127.0.0.1:0"][..],
            &["migrate", "--config", config],
            &["keys", "create", "--config", config, "--tenant", "t1", "--scopes", "admin"],
        ] {
            let out = ws.run(args);
            let error = out.assert_one_line_failure();
            assert!(error.contains(key), "{what} ({}): the error does not name `{key}`: {error}", args[0]);
            if let Some(line) = line {
                assert!(error.contains(&format!("line {line}")), "{what} ({}): no line {line}: {error}", args[0]);
            }
            assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
        }
    }
    assert!(!ws.config_dir.join("tombstone-data").exists(), "a refused config must not create a database");
    assert!(!ws.cwd.join("tombstone-data").exists());
}

#[test]
fn a_taken_port_fails_with_one_line_naming_the_address() {
    let ws = Workspace::new();
    let config = ws.write_config(SCHEMA);
    let server = ws.serve();
    let addr = server.base.trim_start_matches("http://").to_string();
    let out = ws.run(&["serve", "--config", path_str(&config), "--listen", &addr]);
    let line = out.assert_one_line_failure();
    assert!(line.contains(&addr), "{line}");
    // The running server is unharmed.
    assert_eq!(server.http.get(server.url("/readyz")).send().expect("readyz").status(), StatusCode::OK);
}

#[test]
fn unknown_flags_fail_with_one_line() {
    let ws = Workspace::new();
    let config = ws.write_config(SCHEMA);
    let config = path_str(&config);
    for args in [
        &["serve", "--config", config, "--frobnicate"][..],
        &["migrate", "--config", config, "--yes"],
        &["keys", "create", "--config", config, "--tenant", "t1", "--scopes", "admin", "--secret", "x"],
        &["keys", "list", "--config", config, "--all"],
        &["frobnicate"],
    ] {
        let line = ws.run(args).assert_one_line_failure();
        assert!(line.contains(args.last().unwrap()), "the error should name what was wrong: {line}");
    }
    assert!(!ws.config_dir.join("data").exists(), "a refused command must not touch the database");
}

#[test]
fn missing_required_arguments_are_named() {
    let ws = Workspace::new();
    let config = ws.write_config(SCHEMA);
    let line = ws.run(&["keys", "create", "--config", path_str(&config)]).assert_one_line_failure();
    assert!(line.contains("--tenant") && line.contains("--scopes"), "{line}");
    let line = ws.run(&["keys", "revoke", "--config", path_str(&config)]).assert_one_line_failure();
    assert!(line.contains("ID"), "{line}");
}

#[test]
fn unreadable_config_paths_fail_with_one_line() {
    let ws = Workspace::new();
    let missing = ws.config_dir.join("missing.toml");
    let missing = path_str(&missing);
    // A directory is a path that exists but cannot be read as a file.
    let directory = path_str(&ws.config_dir);
    for config in [missing, directory] {
        for args in [
            &["serve", "--config", config, "--listen", "127.0.0.1:0"][..],
            &["migrate", "--config", config],
            &["keys", "create", "--config", config, "--tenant", "t1", "--scopes", "admin"],
            &["keys", "list", "--config", config],
            &["keys", "revoke", "key_0", "--config", config],
        ] {
            let line = ws.run(args).assert_one_line_failure();
            assert!(line.contains(config), "the error should name the file: {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Demo mode

/// The first `tsk_…` token in some text.
fn secret_in(text: &str) -> Option<String> {
    let start = text.find("tsk_")?;
    Some(text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect())
}

#[test]
fn demo_prints_an_admin_key_once_and_later_says_how_to_make_one() {
    let ws = Workspace::new();
    let server = Server::start(&ws.cwd, &["serve", "--demo", "--listen", "127.0.0.1:0"]);
    assert!(ws.cwd.join("tombstone-data").is_dir(), "--demo keeps its data under ./tombstone-data");
    let first = server.stderr_text();
    let secret = secret_in(&first).unwrap_or_else(|| panic!("no admin key printed on first start:\n{first}"));

    let products = json_of(server.get("/v1/products", &secret), StatusCode::OK);
    let names: Vec<&str> =
        products["items"].as_array().expect("items").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names.len(), 6, "{products}");
    assert!(names.contains(&"Blue mug"), "{names:?}");
    assert!(products["next_cursor"].is_null());
    // The open orders carry an invoice PDF (§15), stored under ./tombstone-data/files.
    let orders = json_of(server.get("/v1/orders", &secret), StatusCode::OK);
    let with_invoice: Vec<&Value> =
        orders["items"].as_array().expect("items").iter().filter(|o| o["invoice"].is_object()).collect();
    assert_eq!(with_invoice.len(), 2, "{orders}");
    let id = with_invoice[0]["id"].as_str().unwrap();
    let pdf = server.get(&format!("/v1/orders/{id}/files/invoice"), &secret);
    assert_eq!(pdf.status(), StatusCode::OK);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let bytes = pdf.bytes().expect("invoice bytes");
    assert!(bytes.starts_with(b"%PDF-1.4") && bytes.ends_with(b"%%EOF\n"), "not a PDF");
    assert_eq!(bytes.len() as u64, with_invoice[0]["invoice"]["size"].as_u64().unwrap());
    drop(server);

    // A second start (here without --demo and without a config: the same thing) seeds
    // nothing twice and prints no secret, but says how to create a key.
    let server = Server::start(&ws.cwd, &["serve", "--listen", "127.0.0.1:0"]);
    let products = json_of(server.get("/v1/products", &secret), StatusCode::OK);
    assert_eq!(products["items"].as_array().map(Vec::len), Some(6), "demo data is seeded once: {products}");
    let second = server.stderr_text();
    assert!(!second.contains("tsk_"), "the admin key must be printed once only:\n{second}");
    assert!(second.contains("tombstone keys create"), "a later start says how to create a key:\n{second}");

    // Following that advice in the same directory (no --config: the demo) gives a working key.
    let out = ws.run(&["keys", "create", "--tenant", "demo", "--scopes", "read", "--json"]);
    out.assert_success();
    let key: Value = serde_json::from_str(out.stdout.trim()).expect("keys create --json");
    let products = json_of(server.get("/v1/products", key["secret"].as_str().unwrap()), StatusCode::OK);
    assert_eq!(products["items"].as_array().map(Vec::len), Some(6));
}

#[test]
fn a_nats_relay_needs_a_nats_url() {
    let ws = Workspace::new();
    let config = ws.write_config(&format!("[events]\nnats = \"http://127.0.0.1:4222\"\n{SCHEMA}"));
    let line = ws.run(&["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"]).assert_one_line_failure();
    assert!(line.contains("events.nats") && line.contains("nats://"), "{line}");
    let config =
        ws.write_config(&format!("[events]\nnats = \"nats://127.0.0.1:4222\"\nnats_stream = \"a.b\"\n{SCHEMA}"));
    let line = ws.run(&["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"]).assert_one_line_failure();
    assert!(line.contains("events.nats_stream"), "{line}");
}
