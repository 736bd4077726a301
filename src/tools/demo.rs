//! `meshkv demo`: a local cluster supervised in the foreground.
//!
//! Owns: the demo's cluster file and directory (`$TMPDIR/meshkv-demo`), with
//! `--secure` its throwaway secrets (TLS material in `tls/`, client tokens in `auth/`,
//! the cluster secret in `secret.key`), the check that every port is
//! free, starting each node as a `meshkv serve` child process with its
//! data directory, waiting until all answer `/health`, reporting nodes that exit, and
//! stopping them all on Ctrl-C (each node also exits with its parent, even on
//! `kill -9` of the demo).
//! Knows nothing of: the server's internals; it runs the binary and speaks HTTP, like
//! any client.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{ClusterConfig, NodeSpec};
use crate::tools::certs;
use crate::tools::client::{Ca, Client};

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Something failed (a port taken, a node that did not start).
    #[error("{0}")]
    Failed(String),
}

/// The cluster file `meshkv demo` writes, which client commands use by default.
pub fn cluster_file() -> PathBuf {
    std::env::temp_dir()
        .join("meshkv-demo")
        .join("cluster.toml")
}

/// First client port of the demo cluster; peers use `HTTP_PORT + 100 + i`.
pub const HTTP_PORT: u16 = 7001;

/// The client-token roles `--secure` makes one token of each.
const ROLES: [&str; 3] = ["read", "write", "admin"];

/// The lines `--secure` adds to the cluster file: the tokens file and the cluster
/// secret it writes (TLS is already in `local_file_with(.., true)`).
const SECURE_KEYS: &str = "client_tokens_file = \"auth/tokens\"\nsecret_file = \"secret.key\"\n";

/// What `--secure` set up, for the clients and the lines printed.
struct Secure {
    /// The CA file clients trust.
    ca_file: PathBuf,
    /// `auth/`: per role, `ROLE.token` (for `--token-file`) and `ROLE.header` (for
    /// `curl -H @FILE`), so that no token is ever on a command line.
    auth_dir: PathBuf,
}

impl Secure {
    /// Generates, into `dir` (every secret mode 0600): a CA and a certificate per node
    /// of `config` in `tls/`, one client token per role in `auth/tokens` (with a
    /// `.token` and a `.header` file per role beside it) and a cluster secret in
    /// `secret.key`. The cluster file names them all (`SECURE_KEYS`).
    fn generate(dir: &std::path::Path, config: &ClusterConfig) -> Result<Self, DemoError> {
        let nodes: Vec<(&str, std::net::IpAddr)> = config
            .nodes
            .iter()
            .map(|node| (node.id.as_str(), node.http.ip()))
            .collect();
        certs::write_cluster(dir, &nodes).map_err(DemoError::Failed)?;
        let auth_dir = dir.join("auth");
        create_private_dir(&auth_dir)?;
        let mut tokens = String::from("# meshkv demo --secure: throwaway client tokens\n");
        for role in ROLES {
            let token = format!("{role}-{}", random_hex()?);
            tokens.push_str(&format!("{role} {token}\n"));
            let write = |name: String, text: String| {
                certs::write_file(&auth_dir.join(name), &text, true).map_err(DemoError::Failed)
            };
            write(format!("{role}.token"), format!("{token}\n"))?;
            write(
                format!("{role}.header"),
                format!("Authorization: Bearer {token}\n"),
            )?;
        }
        certs::write_file(&auth_dir.join("tokens"), &tokens, true).map_err(DemoError::Failed)?;
        certs::write_file(&dir.join("secret.key"), &random_hex()?, true)
            .map_err(DemoError::Failed)?;
        Ok(Self {
            ca_file: dir.join("tls").join("ca.pem"),
            auth_dir,
        })
    }

    /// `ROLE.token` or `ROLE.header` of `auth/`.
    fn file(&self, role: &str, kind: &str) -> PathBuf {
        self.auth_dir.join(format!("{role}.{kind}"))
    }
}

/// 32 random bytes in hex.
fn random_hex() -> Result<String, DemoError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| DemoError::Failed(format!("no randomness for the secrets: {error}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Creates `dir` readable by its owner only (or narrows an existing one to that).
fn create_private_dir(dir: &std::path::Path) -> Result<(), DemoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|error| DemoError::Failed(format!("cannot create {}: {error}", dir.display())))
}

/// The start of a curl command line that reaches the demo's nodes, with the token of
/// `role` when the demo is secure.
fn curl(secure: Option<&Secure>, role: &str) -> String {
    match secure {
        None => "curl".to_owned(),
        Some(secure) => format!(
            "curl --cacert {} -H @{}",
            secure.ca_file.display(),
            secure.file(role, "header").display()
        ),
    }
}

/// Runs `count` nodes on ports `port`, `port + 1`, … (peers 100 above) until `stop`
/// resolves, then stops them, each within `grace` (then killed). With `secure`, the
/// cluster has TLS: HTTPS for clients and mutual TLS between the nodes, with a
/// throwaway CA.
pub async fn run(
    count: usize,
    port: u16,
    secure: bool,
    grace: Duration,
    stop: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    if !(1..=9).contains(&count) {
        return Err(DemoError::Usage("--nodes must be between 1 and 9".into()));
    }
    if port.checked_add(100 + count as u16).is_none() {
        return Err(DemoError::Usage("--port is too high".into()));
    }
    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Failed(format!("cannot find the meshkv binary: {e}")))?;
    // A fixed place, so that the cluster file has a name people can type; a second
    // demo at the same time would collide on the ports anyway.
    let cluster_file = cluster_file();
    let dir = cluster_file
        .parent()
        .expect("the demo file is inside a directory")
        .to_owned();
    let mut text = ClusterConfig::local_file_with(count, port, port + 100, secure);
    if secure {
        text.insert_str(0, SECURE_KEYS);
    }
    let config = ClusterConfig::parse(&text).map_err(|e| DemoError::Failed(e.to_string()))?;
    // Every address must be free: otherwise the nodes would fail one by one, and a
    // client could quietly talk to whatever already listens there (an older demo).
    // Checked before anything is written, so a running demo's files stay as they are.
    for spec in &config.nodes {
        for address in std::iter::once(spec.http).chain(spec.peer) {
            if let Err(error) = std::net::TcpListener::bind(address) {
                return Err(DemoError::Failed(format!(
                    "cannot start the demo: {address} is not free ({error}); is another demo or node running?"
                )));
            }
        }
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| DemoError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    std::fs::write(&cluster_file, text)
        .map_err(|e| DemoError::Failed(format!("cannot write {}: {e}", cluster_file.display())))?;
    let secure = match secure {
        true => Some(Secure::generate(&dir, &config)?),
        false => None,
    };
    let ca = match &secure {
        Some(secure) => Some(Ca::load(&secure.ca_file).map_err(DemoError::Failed)?),
        None => None,
    };
    let scheme = if secure.is_some() { "https" } else { "http" };

    let mut children = Vec::new();
    for spec in &config.nodes {
        let log_path = dir.join(format!("{}.log", spec.id));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| DemoError::Failed(format!("cannot create {}: {e}", log_path.display())))?;
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .arg("--cluster")
            .arg(&cluster_file)
            .arg("--node")
            .arg(spec.id.as_str())
            .arg("--data-dir")
            .arg(dir.join("data").join(spec.id.as_str()))
            .arg("--exit-with-parent")
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| DemoError::Failed(e.to_string()))?,
            )
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DemoError::Failed(format!("cannot start node {}: {e}", spec.id)))?;
        children.push((spec.clone(), child, log_path));
    }

    // Wait (bounded) until every node answers /health.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (spec, child, log_path) in &mut children {
        let client =
            Client::new(&spec.http.to_string(), Duration::from_millis(500)).with_ca(ca.as_ref());
        loop {
            if client.healthy().await {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Returning drops `children`, which kills the nodes already started.
                let log = std::fs::read_to_string(&*log_path).unwrap_or_default();
                return Err(DemoError::Failed(format!(
                    "node {} exited ({status}) before serving: {}",
                    spec.id,
                    log.lines().last().unwrap_or("no log")
                )));
            }
            if Instant::now() > deadline {
                return Err(DemoError::Failed(format!(
                    "node {} did not answer within 10 s; see {}",
                    spec.id,
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!(
        "meshkv demo: {count} nodes running (logs, data directories and cluster file in {})",
        dir.display()
    );
    match &secure {
        Some(secure) => println!(
            "secure: HTTPS for clients and mutual TLS between nodes (throwaway CA {}),\n\
             client tokens of roles read, write and admin in {}, peer frames authenticated \
             with {}\n",
            secure.ca_file.display(),
            secure.auth_dir.display(),
            dir.join("secret.key").display()
        ),
        None => println!(),
    }
    println!("  {:<4} {:<27} {:<22} pid", "node", "client HTTP", "peer");
    for (spec, child, _) in &children {
        println!(
            "  {:<4} {:<27} {:<22} {}",
            spec.id,
            format!("{scheme}://{}", spec.http),
            spec.peer
                .map_or_else(|| "-".to_owned(), |peer| peer.to_string()),
            child.id().map_or_else(|| "?".into(), |pid| pid.to_string())
        );
    }
    let first = &config.nodes[0].http;
    let last = &config.nodes[count - 1].http;
    let secure = secure.as_ref();
    let node_flags = secure
        .map(|secure| {
            format!(
                " --ca {} --token-file {}",
                secure.ca_file.display(),
                secure.file("read", "token").display()
            )
        })
        .unwrap_or_default();
    let cluster_flags = secure
        .map(|secure| format!(" --token-file {}", secure.file("read", "token").display()))
        .unwrap_or_default();
    println!("\nTry:");
    println!(
        "  {} -X PUT --data 'hello' {scheme}://{first}/v1/kv/greeting",
        curl(secure, "write")
    );
    println!(
        "  {} {scheme}://{last}/v1/kv/greeting",
        curl(secure, "read")
    );
    println!(
        "  {} get greeting --node {scheme}://{last}{node_flags}",
        exe.display()
    );
    println!(
        "  {} get greeting --cluster {}{cluster_flags}",
        exe.display(),
        cluster_file.display()
    );
    println!(
        "  {} {scheme}://{first}/v1/convergence",
        curl(secure, "read")
    );
    if secure.is_some() {
        println!(
            "  {} -X PUT --data 'no' {scheme}://{first}/v1/kv/greeting   # 403: a read token",
            curl(secure, "read")
        );
    }
    println!("  kill -9 <pid>   # the others keep serving");
    println!("\nPress Ctrl-C to stop every node.");

    tokio::select! {
        _ = stop => {}
        exited = watch_children(&mut children) => {
            eprintln!("meshkv demo: {exited}; stopping the others");
        }
    }
    for (_, child, _) in &mut children {
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
    for (spec, child, _) in &mut children {
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            eprintln!(
                "meshkv demo: node {} did not stop in time; killing it",
                spec.id
            );
            let _ = child.kill().await;
        }
    }
    println!("meshkv demo: all nodes stopped");
    Ok(())
}

type DemoChild = (NodeSpec, tokio::process::Child, PathBuf);

/// Reports demo nodes that exit on their own (killed by the user, or crashed); the
/// demo keeps going. Resolves only when every node has exited.
async fn watch_children(children: &mut [DemoChild]) -> String {
    let mut reported = vec![false; children.len()];
    loop {
        for ((spec, child, _), reported) in children.iter_mut().zip(reported.iter_mut()) {
            if let (Ok(Some(status)), false) = (child.try_wait(), *reported) {
                println!("meshkv demo: node {} exited ({status})", spec.id);
                *reported = true;
            }
        }
        if reported.iter().all(|done| *done) {
            return "every node has exited".to_owned();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
