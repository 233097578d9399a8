//! The `tombstone` command: wires the config, the store and the server together.

mod demo;
mod purge;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tombstone_domain::config::{Config, StorageConfig};
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::{Clock, SystemClock};
use tombstone_server::keys::{create_key, valid_tenant};
use tombstone_server::search::SearchIndex;
use tombstone_server::{AppState, Workers, serve};
use tombstone_store::{MemoryCache, PgStore, SqliteStore, Store};

/// Tombstone: a data API server in which delete is safe by default.
#[derive(Parser)]
#[command(name = "tombstone", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The config file (TOML). Without it, the demo schema under ./tombstone-data.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the background workers.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Address to listen on (overrides [server].listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Use the demo shop schema under ./tombstone-data, seed it once, print an admin key.
        #[arg(long)]
        demo: bool,
        /// Log format; default: text on a terminal, JSON otherwise.
        #[arg(long, value_parser = ["json", "text"])]
        log_format: Option<String>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run one purge pass now: hard-delete records past their recovery window.
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        /// Print what would be purged, per collection, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Compare the database with the search index, the outbox consumers and the files
    /// store; print drift (files: stored objects nothing references, records whose object
    /// is missing, uploads left behind).
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
        /// Fix what differs (needs the index to itself: stop the server first; a running
        /// server repairs on its own every 10 minutes): also removes orphaned objects and
        /// stale uploads from the files store.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the search index from the database (with the server stopped).
    Reindex {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Apply schema changes for the configured collections.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain (read-only; safe beside a running server). Exit 0 and a
    /// count when intact, exit 1 naming the first broken entry.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Comma-separated scopes, e.g. read,write,delete:products.
        #[arg(long)]
        scopes: String,
        /// A name to recognise the key by.
        #[arg(long)]
        name: Option<String>,
        /// Print {"id","secret","tenant","scopes","name"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it is deleted at once.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The key id (key_…).
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message runs until its first blank line (a missing-arguments error
            // lists them on the following lines); keep all of it, on one line.
            let text = e.render().to_string();
            let message: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let message = if message.is_empty() { "invalid arguments".to_string() } else { message.join(" ") };
            eprintln!("{message} (see tombstone --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

/// Reads the config file, or the demo schema rooted at the working directory.
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
            let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Config::parse(&text, base).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
        }
        None => demo::config(Path::new(".")),
    }
}

/// Opens the configured store and brings its schema up to date.
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match &config.storage {
        StorageConfig::Sqlite { path } => match config.cache.url.as_str() {
            "memory" => {
                let cache = Arc::new(MemoryCache::new(config.cache.capacity, config.cache.ttl));
                Arc::new(SqliteStore::open(path)?.with_cache(cache)?)
            }
            "none" => Arc::new(SqliteStore::open(path)?),
            _ => bail!(
                "cache.url: a shared cache (redis://) serves several replicas, which need storage.url = \"postgres://…\"; \
                 with SQLite (one process) use \"memory\" or \"none\""
            ),
        },
        StorageConfig::Postgres { url, pool_size } => {
            let store = PgStore::connect(url, *pool_size as usize).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            match config.cache.url.as_str() {
                "memory" => {
                    let cache = Arc::new(MemoryCache::new(config.cache.capacity, config.cache.ttl));
                    Arc::new(store.with_cache(cache).await?)
                }
                "none" => Arc::new(store),
                url => Arc::new(store.with_redis(url, config.cache.ttl).await?),
            }
        }
    };
    store.migrate(&config.schema).await?;
    Ok(store)
}

/// The files store (`[files]`), when a collection has a file field.
fn open_files(config: &Config) -> anyhow::Result<Option<Arc<tombstone_server::files::Files>>> {
    if !config.schema.collections.values().any(|c| c.has_files()) {
        return Ok(None);
    }
    let files = tombstone_server::files::Files::open(&config.files).context("opening the files store ([files] url)")?;
    Ok(Some(Arc::new(files)))
}

fn init_logging(format: Option<&str>) {
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stderr().is_terminal(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOMBSTONE_LOG")
        // tantivy reports every commit at info; its warnings are what an operator needs.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tantivy=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve { config, listen, demo, log_format } => {
            init_logging(log_format.as_deref());
            let demo = demo || config.config.is_none();
            let config = if demo && config.config.is_none() {
                demo::config(Path::new("."))?
            } else {
                load_config(config.config.as_deref())?
            };
            let store = open_store(&config).await?;
            let addr = listen.unwrap_or(config.server.listen);
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            let files = open_files(&config)?;
            if demo {
                demo::prepare(&config, &store, files.as_deref(), clock.as_ref(), local).await?;
            }
            let search = Arc::new(SearchIndex::open(&config.search.path, true)?);
            let mut state = AppState::new(config.schema.clone(), store, clock)
                .with_search(search)
                .with_limits(config.server.limits)
                .with_events(config.events.clone());
            if let Some(files) = files {
                state = state.with_files(files);
            }
            let workers = Workers::new(&state, &config.webhooks, config.purge.clone(), config.events.retention)?;
            workers.relay.register().await?;
            if let (Some(url), Some(relay)) = (&config.events.nats, &workers.nats) {
                // The relay connects by itself (and again after an outage): a NATS server
                // that is down at start delays events, it does not stop the API.
                eprintln!(
                    "relaying events to NATS JetStream at {url}, stream {} (replica {})",
                    config.events.nats_stream,
                    relay.holder()
                );
            }
            eprintln!("listening on http://{local}");
            serve(state, workers, listener, shutdown_signal()).await.context("server failed")?;
            Ok(())
        }
        Command::Migrate { config } => {
            let config = load_config(config.config.as_deref())?;
            open_store(&config).await?;
            println!("schema up to date: {} collections", config.schema.collections.len());
            Ok(())
        }
        Command::Keys { command } => keys(command, clock).await,
        Command::Reconcile { config, repair, json } => {
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            let index = SearchIndex::open(&config.search.path, repair)?;
            let drift = tombstone_server::search::reconcile(&index, store.as_ref(), &config.schema, repair).await?;
            let files = match open_files(&config)? {
                Some(files) => Some(
                    tombstone_server::files::reconcile(store.as_ref(), &files, clock.now(), repair)
                        .await
                        .with_context(|| format!("comparing the files store {} with the database", files.location))?,
                ),
                None => None,
            };
            if json {
                let mut report = serde_json::to_value(&drift)?;
                report["files"] = serde_json::to_value(&files)?;
                println!("{report}");
            } else {
                println!(
                    "search: {} stale documents, {} missing documents",
                    drift.stale_documents.len(),
                    drift.missing_documents.len()
                );
                for (t, c, i) in drift.stale_documents.iter().take(20) {
                    println!("  stale   {t}/{c}/{i}");
                }
                for (t, c, i) in drift.missing_documents.iter().take(20) {
                    println!("  missing {t}/{c}/{i}");
                }
                println!("search indexer: {} events behind", drift.index_lag.max(0));
                println!("webhooks: {} deliveries pending", drift.webhook_backlog);
                if let Some(f) = &files {
                    println!(
                        "files: {} stored, {} references, {} orphaned, {} missing, {} stale uploads",
                        f.stored,
                        f.references,
                        f.orphans.len(),
                        f.missing.len(),
                        f.stale_uploads.len()
                    );
                    for o in f.orphans.iter().take(20) {
                        println!("  orphaned {}/{} ({} bytes)", o.tenant, o.sha256, o.size);
                    }
                    for m in f.missing.iter().take(20) {
                        println!("  missing  {}/{}/{} (sha256 {})", m.tenant, m.collection, m.id, m.sha256);
                    }
                    if repair {
                        println!("files: removed {} orphaned objects and stale uploads", f.removed);
                    }
                }
                if repair {
                    println!("repaired");
                }
            }
            Ok(())
        }
        Command::Reindex { config } => {
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            let index = SearchIndex::open(&config.search.path, true)?;
            let bar = if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} indexing {msg:<16} {pos} records  {per_sec}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                Some(bar)
            } else {
                None
            };
            let progress = |collection: &str, n: u64| {
                if let Some(bar) = &bar {
                    bar.set_message(collection.to_string());
                    bar.inc(n);
                }
            };
            let n = index.rebuild(store.as_ref(), &config.schema, &progress).await?;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            println!("indexed {n} records");
            Ok(())
        }
        Command::Purge { config, dry_run, collection, json } => {
            let config = load_config(config.config.as_deref())?;
            purge::run(&config, clock, dry_run, collection.as_deref(), json).await
        }
        Command::Audit { command: AuditCommand::Verify { config } } => {
            let config = load_config(config.config.as_deref())?;
            let store: Arc<dyn Store> = match &config.storage {
                StorageConfig::Sqlite { path } => Arc::new(SqliteStore::open_read_only(path)?),
                // Reads only, in one snapshot (see `verify_audit`).
                StorageConfig::Postgres { url, .. } => {
                    Arc::new(PgStore::connect(url, 2).await.map_err(|e| anyhow::anyhow!("{e}"))?)
                }
            };
            match store.verify_audit().await? {
                Ok(n) => {
                    println!("{n} entries verified");
                    Ok(())
                }
                Err(broken) => {
                    eprintln!("audit chain broken: {broken}");
                    std::process::exit(1);
                }
            }
        }
    }
}

async fn keys(command: KeysCommand, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { config, tenant, scopes, name, json } => {
            let config = load_config(config.config.as_deref())?;
            if !valid_tenant(&tenant) {
                bail!("--tenant {tenant:?}: must be 1-64 of A-Z a-z 0-9 _ -");
            }
            let scopes = parse_scopes(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            for s in &scopes {
                if let Some(c) = &s.collection
                    && config.schema.collection(c).is_none()
                {
                    bail!("--scopes: {s} names unknown collection {c:?}");
                }
            }
            let store = open_store(&config).await?;
            let created = create_key(store.as_ref(), &tenant, scopes, name, clock.now()).await?;
            let scopes: Vec<String> = created.key.scopes.iter().map(ToString::to_string).collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": created.key.id, "secret": created.secret, "tenant": created.key.tenant, "scopes": scopes, "name": created.key.name})
                );
            } else {
                println!(
                    "created {} for tenant {} with scopes {}",
                    created.key.id,
                    created.key.tenant,
                    scopes.join(",")
                );
                println!("secret (shown once): {}", created.secret);
            }
            Ok(())
        }
        KeysCommand::List { config, json } => {
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            let keys = store.list_keys().await?;
            if json {
                let items: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({"id": k.id, "tenant": k.tenant, "name": k.name, "scopes": k.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(), "created_at": k.created_at.to_rfc3339()})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                println!("{:<38} {:<16} {:<28} {:<20} CREATED", "ID", "TENANT", "SCOPES", "NAME");
                for k in keys {
                    let scopes: Vec<String> = k.scopes.iter().map(ToString::to_string).collect();
                    println!(
                        "{:<38} {:<16} {:<28} {:<20} {}",
                        k.id,
                        k.tenant,
                        scopes.join(","),
                        k.name.unwrap_or_default(),
                        k.created_at
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { config, id } => {
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            if store.revoke_key(&id, &tombstone_server::keys::cli_actor("-"), clock.now()).await? {
                println!("revoked {id}");
                Ok(())
            } else {
                bail!("no key {id}")
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
