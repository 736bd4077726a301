//! The `meshkv` command line (API.md §2): one function per subcommand.
//!
//! Owns: argument parsing (clap derive), exit codes (0 success, 1 the operation failed,
//! 2 bad usage), errors printed to stderr as one sentence, logging setup, signals.
//! Knows nothing of: how a node works inside (it calls [`crate::node`], [`crate::tools::client`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::node;
use crate::persist::{DirStorage, FsyncPolicy};
use crate::tools::client::{AccessToken, Ca, Client, ClientError, DEFAULT_TIMEOUT};
use crate::tools::demo;
use crate::tools::inspect::Source;

/// A multi-master, eventually consistent key-value store.
#[derive(Parser, Debug)]
#[command(name = "meshkv", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node (with no --cluster: a single node on 127.0.0.1:7001).
    Serve {
        /// The cluster file.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// This node's id in the cluster file (default: the first node).
        #[arg(long)]
        node: Option<String>,
        /// Keep the node's data in this directory (created if missing), so that it
        /// survives restarts. Without it the node is memory-only.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// When writes reach the disk: `always` (an fsync per write), `batch` (group
        /// commit: concurrent writes share an fsync) or `never` (left to the OS: a
        /// power cut may lose the last moments). Default: the cluster file's `fsync`,
        /// else `batch`. A write is acknowledged only once durable under this policy.
        #[arg(long, requires = "data_dir")]
        fsync: Option<FsyncPolicy>,
        /// Start even if the data directory is damaged: drop everything from the first
        /// bad record of a damaged segment, and report how much was dropped
        /// (anti-entropy then refills it from the peers).
        #[arg(long, requires = "data_dir")]
        repair: bool,
        /// Stop when the parent process dies (used by `meshkv demo`, so that its nodes
        /// never outlive it, even after `kill -9` of the demo).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Start a local cluster of N nodes in the foreground; Ctrl-C stops them all.
    Demo {
        /// Number of nodes (1 to 9).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Client port of the first node; node i listens on 127.0.0.1<i>:PORT+i-1 and
        /// on PORT+100+i-1 for its peers.
        #[arg(long, default_value_t = demo::HTTP_PORT)]
        port: u16,
        /// Run with TLS: a throwaway CA and a certificate per node are generated into
        /// the demo's directory; clients use HTTPS with that CA, nodes mutual TLS.
        #[arg(long)]
        secure: bool,
    },
    /// Read a key and write its value, byte for byte, to standard output (exit 1 if it
    /// is absent).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Write a value: the VALUE argument, a file (--file), or standard input (`-`).
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it from standard input.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file (any bytes).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Show every node of a cluster and its view of its peers.
    Status {
        #[command(flatten)]
        scope: Scope,
    },
    /// Exit 0 when every reachable node holds the same state, 1 otherwise.
    Check {
        #[command(flatten)]
        scope: Scope,
        /// Keep polling up to this long (e.g. 500ms, 10s, 2m) for convergence.
        #[arg(long, default_value = "0s", value_parser = crate::tools::inspect::parse_duration)]
        wait: Duration,
        /// Unreachable nodes fail the check too.
        #[arg(long)]
        all: bool,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print every change a node applies under PREFIX, one JSON line each, until Ctrl-C
    /// (exit 1 if the node cuts the watch off or the connection is lost).
    Watch {
        /// Only keys starting with this (default: every key).
        #[arg(default_value = "")]
        prefix: String,
        /// First print the entries newer than this version (a `version` from a reply
        /// or an earlier event), then the live changes.
        #[arg(long, value_name = "VERSION")]
        after: Option<String>,
        /// The node's URL, e.g. http://127.0.0.11:7001 (https://… with --ca).
        #[arg(long, conflicts_with = "cluster", value_name = "URL")]
        node: Option<String>,
        /// The CA that signed the cluster's certificates (PEM), to reach an https://
        /// node.
        #[arg(long, value_name = "FILE", requires = "node")]
        ca: Option<PathBuf>,
        /// A cluster file: the first node that answers is watched.
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Send the client token in FILE (API.md §3.6); without it, `$MESHKV_TOKEN` if
        /// set. Never a command-line value: it would show in process listings.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run a test suite against a cluster (docs/API.md §6).
    Test(crate::tools::suites::TestArgs),
    /// Write throwaway TLS material at the paths a cluster file names (a new CA at its
    /// tls_ca_file, each node's certificate and key): for benchmarks and trials only.
    #[command(hide = true)]
    GenCerts {
        /// The cluster file.
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
    },
}

/// Which node a client command talks to. Without `--node` or `--cluster`: the cluster
/// of a running `meshkv demo` if there is one, else the single node that `meshkv serve`
/// runs with no arguments (http://127.0.0.1:7001).
#[derive(Args, Debug)]
struct Target {
    /// The node's URL, e.g. http://127.0.0.11:7001 (https://… with --ca).
    #[arg(long, conflicts_with = "cluster", value_name = "URL")]
    node: Option<String>,
    /// The CA that signed the cluster's certificates (PEM), to reach an https:// node.
    /// With --cluster, the file's tls_ca_file is used.
    #[arg(long, value_name = "FILE", requires = "node")]
    ca: Option<PathBuf>,
    /// A cluster file: the first node that answers is used (over HTTPS if it has
    /// tls_ca_file).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Consistency level: one, live, quorum or all.
    #[arg(long)]
    consistency: Option<String>,
    /// Carry a session across commands (read-your-writes on any node): the token in
    /// FILE, if it exists, is sent, and the node's new token is written back to FILE.
    #[arg(long, value_name = "FILE")]
    session: Option<PathBuf>,
    /// Send the client token in FILE (API.md §3.6); without it, `$MESHKV_TOKEN` if
    /// set. Never a command-line value: it would show in process listings.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// Which cluster `status` and `check` look at. Without `--node` or `--cluster`: the
/// cluster of a running `meshkv demo` if there is one, else the single node on
/// http://127.0.0.1:7001.
#[derive(Args, Debug)]
struct Scope {
    /// The cluster file: every node in it is asked.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// One node's URL: that node is asked, and it asks the others (through
    /// `/v1/convergence?cluster=true`).
    #[arg(long, conflicts_with = "cluster", value_name = "URL")]
    node: Option<String>,
    /// Send the client token in FILE (API.md §3.6); without it, `$MESHKV_TOKEN` if
    /// set. Never a command-line value: it would show in process listings.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The CA that signed the cluster's certificates (PEM), to reach an https:// node.
    #[arg(long, value_name = "FILE", requires = "node")]
    ca: Option<PathBuf>,
}

impl Scope {
    fn source(&self) -> Result<Source, Failure> {
        let demo = demo::cluster_file();
        let token = token(self.token_file.as_deref())?;
        let cluster = |path: &Path| {
            let config = load(path)?;
            let ca = cluster_ca(&config)?;
            Ok(Source::Cluster(Box::new(config), ca, token.clone()))
        };
        match (&self.node, &self.cluster) {
            (Some(url), _) => Ok(Source::Node(
                node_client(url, self.ca.as_deref())?.with_token(token.clone()),
            )),
            (None, Some(path)) => cluster(path),
            (None, None) if demo.exists() => cluster(&demo),
            (None, None) => Ok(Source::Node(
                Client::new("http://127.0.0.1:7001", DEFAULT_TIMEOUT).with_token(token.clone()),
            )),
        }
    }
}

/// The client token of a command: `--token-file FILE`, else `$MESHKV_TOKEN`, else none.
fn token(file: Option<&Path>) -> Result<Option<AccessToken>, Failure> {
    AccessToken::resolve(file).map_err(|error| Failure::usage(error.to_string()))
}

/// A client of the node at `url` (`--node`): over HTTPS trusting `ca` (`--ca`) alone,
/// which an `https://` URL needs.
fn node_client(url: &str, ca: Option<&Path>) -> Result<Client, Failure> {
    match ca {
        None if url.starts_with("https://") => Err(Failure::usage(
            "an https:// node needs --ca FILE, the CA that signed the cluster's certificates",
        )),
        None => Ok(Client::new(url, DEFAULT_TIMEOUT)),
        Some(_) if url.starts_with("http://") => Err(Failure::usage(
            "--ca is for an https:// node; give https://… or leave --ca out",
        )),
        Some(path) => {
            let ca = Ca::load(path).map_err(Failure::usage)?;
            Ok(Client::new(url, DEFAULT_TIMEOUT).with_ca(Some(&ca)))
        }
    }
}

/// The CA of a cluster file with TLS (its `tls_ca_file`).
fn cluster_ca(config: &ClusterConfig) -> Result<Option<Ca>, Failure> {
    Ca::of_cluster(config).map_err(Failure::usage)
}

/// `client` carrying the session of `--session FILE`, if given: the token in the file
/// (none if the file does not exist yet).
fn session_client(client: Client, target: &Target) -> Result<Client, Failure> {
    let Some(path) = &target.session else {
        return Ok(client);
    };
    let token = match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(Failure::failed(format!(
                "cannot read the session file {}: {error}",
                path.display()
            )))
        }
    };
    Ok(client.with_session(token))
}

/// Writes the session's latest token back to `--session FILE`, if given.
fn save_session(client: &Client, target: &Target) -> Result<(), Failure> {
    let (Some(path), Some(token)) = (&target.session, client.session_token()) else {
        return Ok(());
    };
    std::fs::write(path, format!("{token}\n")).map_err(|error| {
        Failure::failed(format!(
            "cannot write the session file {}: {error}",
            path.display()
        ))
    })
}

/// A failure to report: the sentence and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error.status() {
            Some(400 | 413 | 414) => Failure::usage(error.to_string()),
            Some(401) => Failure::failed(format!(
                "{error} (give the client token in $MESHKV_TOKEN or --token-file FILE)"
            )),
            _ => Failure::failed(error.to_string()),
        }
    }
}

/// Parses the arguments, runs the subcommand, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Demo { .. });
    init_logging(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshkv: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("meshkv: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve {
            cluster,
            node,
            data_dir,
            fsync,
            repair,
            exit_with_parent,
        } => {
            let storage = data_dir.map(|dir| StorageFlags { dir, fsync, repair });
            serve(
                cluster.as_deref(),
                node.as_deref(),
                storage,
                exit_with_parent,
            )
            .await
        }
        Command::Demo {
            nodes,
            port,
            secure,
        } => demo::run(nodes, port, secure, node::SHUTDOWN_GRACE, termination())
            .await
            .map_err(|error| match error {
                demo::DemoError::Usage(message) => Failure::usage(message),
                demo::DemoError::Failed(message) => Failure::failed(message),
            }),
        Command::Get { key, target } => {
            let client = session_client(pick(&target).await?, &target)?;
            let reply = client.get(&key, target.consistency.as_deref()).await;
            save_session(&client, &target)?;
            match reply? {
                Some(reply) => write_value(&reply.value),
                None => Err(Failure::failed(format!("key {key:?} not found"))),
            }
        }
        Command::Put {
            key,
            value,
            file,
            target,
        } => {
            let value = read_value(value, file).await?;
            let client = session_client(pick(&target).await?, &target)?;
            let reply = client
                .put(&key, &value, target.consistency.as_deref())
                .await;
            save_session(&client, &target)?;
            println!("{}", reply?.to_json());
            Ok(())
        }
        Command::Status { scope } => {
            print!("{}", crate::tools::inspect::status(&scope.source()?).await);
            Ok(())
        }
        Command::Check { scope, wait, all } => {
            if crate::tools::inspect::check(&scope.source()?, wait, all).await {
                Ok(())
            } else {
                Err(Failure::failed("the cluster has not converged"))
            }
        }
        Command::Del { key, target } => {
            let client = session_client(pick(&target).await?, &target)?;
            let reply = client.delete(&key, target.consistency.as_deref()).await;
            save_session(&client, &target)?;
            println!("{}", reply?.to_json());
            Ok(())
        }
        Command::Watch {
            prefix,
            after,
            node,
            ca,
            cluster,
            token_file,
        } => {
            let target = Target {
                node,
                ca,
                cluster,
                consistency: None,
                session: None,
                token_file,
            };
            let client = pick(&target).await?;
            tokio::select! {
                result = watch(&client, &prefix, after.as_deref()) => result,
                _ = termination() => Ok(()),
            }
        }
        Command::GenCerts { cluster } => {
            let config = load(&cluster)?;
            let written =
                crate::tools::certs::write_for_cluster(&config).map_err(Failure::failed)?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Test(args) => match crate::tools::suites::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::failed("the suite's checks failed")),
            Err(message) => Err(Failure::usage(message)),
        },
    }
}

/// Prints the watch's events as JSON lines until the node ends the stream.
async fn watch(client: &Client, prefix: &str, after: Option<&str>) -> Result<(), Failure> {
    use crate::tools::client::WatchEvent;
    use std::io::Write;
    let mut stream = client.watch(prefix, after).await?;
    while let Some(event) = stream.next().await? {
        match event {
            WatchEvent::Change(change) => {
                let mut stdout = std::io::stdout().lock();
                let written = writeln!(stdout, "{}", change.json).and_then(|()| stdout.flush());
                if let Err(error) = written {
                    // A closed pipe (`| head`) ends the watch quietly.
                    if error.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(Failure::failed(format!(
                        "cannot write to standard output: {error}"
                    )));
                }
            }
            WatchEvent::Overflow { reason } => {
                return Err(Failure::failed(format!(
                    "{} stopped the watch: {reason}",
                    client.url()
                )))
            }
        }
    }
    Ok(())
}

fn load(path: &Path) -> Result<ClusterConfig, Failure> {
    ClusterConfig::load(path).map_err(|error| Failure::usage(error.to_string()))
}

/// The value of `put`: the argument, standard input for `-`, or the file's bytes.
async fn read_value(value: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    use tokio::io::AsyncReadExt;
    match (value, file) {
        (_, Some(path)) => tokio::fs::read(&path)
            .await
            .map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display()))),
        (Some(dash), None) if dash == "-" => {
            let mut bytes = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| Failure::failed(format!("cannot read standard input: {e}")))?;
            Ok(bytes)
        }
        (Some(text), None) => Ok(text.into_bytes()),
        (None, None) => Err(Failure::usage("give a VALUE, `-` or --file PATH")),
    }
}

/// Writes a value to standard output exactly; on a terminal, a text value that does not
/// end with a newline gets one, so the prompt starts on its own line.
fn write_value(value: &[u8]) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let mut stdout = std::io::stdout().lock();
    let newline = stdout.is_terminal() && !value.ends_with(b"\n");
    stdout
        .write_all(value)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::failed(format!("cannot write to standard output: {e}")))
}

/// The client of the node a command should talk to.
async fn pick(target: &Target) -> Result<Client, Failure> {
    let demo = demo::cluster_file();
    let token = token(target.token_file.as_deref())?;
    let path = match (&target.node, &target.cluster) {
        (Some(url), _) => return Ok(node_client(url, target.ca.as_deref())?.with_token(token)),
        (None, Some(path)) => path.clone(),
        (None, None) if demo.exists() => demo,
        (None, None) => {
            return Ok(Client::new("http://127.0.0.1:7001", DEFAULT_TIMEOUT).with_token(token))
        }
    };
    let path = &path;
    let config = load(path)?;
    let ca = cluster_ca(&config)?;
    for node in &config.nodes {
        let client = Client::new(&node.http.to_string(), DEFAULT_TIMEOUT)
            .with_ca(ca.as_ref())
            .with_token(token.clone());
        if client.healthy().await {
            return Ok(client);
        }
    }
    Err(Failure::failed(format!(
        "no node of {} answers",
        path.display()
    )))
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(stream) => { stream.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Resolves when this process's parent has died (the process was re-parented).
async fn parent_died() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// `serve --data-dir DIR [--fsync P] [--repair]`.
struct StorageFlags {
    dir: PathBuf,
    fsync: Option<FsyncPolicy>,
    repair: bool,
}

async fn serve(
    cluster: Option<&Path>,
    node: Option<&str>,
    storage: Option<StorageFlags>,
    exit_with_parent: bool,
) -> Result<(), Failure> {
    let config = match cluster {
        Some(path) => load(path)?,
        None => ClusterConfig::single_node(),
    };
    let id = match node {
        Some(id) => id.to_owned(),
        None if config.nodes.len() == 1 => config.nodes[0].id.to_string(),
        None => {
            return Err(Failure::usage(
                "--node is required when the cluster has several nodes",
            ))
        }
    };
    let shutdown = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = termination() => tracing::info!("signal received, shutting down"),
            _ = parent_died(), if exit_with_parent => {
                tracing::warn!("the parent process died; shutting down");
            }
        }
        signal_shutdown.cancel();
    });
    let mut env = node::NodeEnv::production();
    if let Some(flags) = storage {
        env.storage = Arc::new(DirStorage {
            dir: flags.dir,
            fsync: flags.fsync.unwrap_or(config.tuning.fsync),
            repair: flags.repair,
            clock: env.clock.clone(),
        });
        env.repair = flags.repair;
    }
    node::run_with(&config, &id, env, shutdown)
        .await
        .map_err(|error| match error {
            node::NodeError::Config(error) => Failure::usage(error.to_string()),
            other => Failure::failed(other.to_string()),
        })
}
