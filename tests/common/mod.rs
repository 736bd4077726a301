//! A harness that runs a real meshkv cluster: one `meshkv serve` process per node,
//! each on its own loopback IP, with fault injection (kill, restart, pause, network
//! partitions through nftables).
//!
//! Nodes are numbered from 1, like their ids: node `i` is `n<i>`, listens on
//! `127.<A>.<B>.<10+i>` (so n1 is `.11`), where `A` comes from the test process id
//! and `B` from a process-wide counter, so that clusters of parallel tests and of
//! parallel test binaries never share an address. 127.0.0.x is never used.
//!
//! Every child process is killed (SIGKILL) and reaped when the [`TestCluster`] is
//! dropped, including while a test panics, and the cluster's nft table is deleted.
//!
//! [`TestCluster::start_tls`] runs the cluster with TLS: a throwaway CA and a
//! certificate per node in `<dir>/tls/` (or, per node, a certificate of another CA or
//! naming another node, for the tests of refusals); its clients speak HTTPS.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use meshkv::tools::certs::{self, Authority};
use meshkv::tools::client::{AccessToken, Ca, Client};
use serde_json::Value;

/// How long a node may take to answer `/health` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval of every polling loop.
const POLL: Duration = Duration::from_millis(50);

/// Third octet of the next cluster's addresses.
static NEXT_CLUSTER: AtomicU8 = AtomicU8::new(1);

/// One node of a [`TestCluster`].
struct Node {
    id: String,
    http: SocketAddr,
    peer: SocketAddr,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Extra `serve` arguments for this node's next start (e.g. `--repair`).
    extra_args: Vec<String>,
    /// Extra environment of the process (e.g. libfaketime's `LD_PRELOAD`).
    env: Vec<(String, String)>,
    /// With TLS: the client configuration that trusts the CA of this node's
    /// certificate, for the health checks.
    health_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The certificate a node of a TLS test cluster gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeCert {
    /// From the cluster's CA, naming the node's id and IP.
    Good,
    /// From another CA (a stranger), naming the node's id and IP.
    ForeignCa,
    /// From the cluster's CA, naming this DNS name (not the node's id) and the IP.
    Names(&'static str),
}

/// A TLS test cluster's CA, as the clients use it.
struct ClusterTls {
    ca: Ca,
    ca_file: PathBuf,
}

/// A client configuration that trusts `ca_pem` alone (the health checks).
fn health_config(ca_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("the CA is PEM"))
            .expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A running cluster of real `meshkv serve` processes.
pub struct TestCluster {
    dir: PathBuf,
    cluster_file: PathBuf,
    nodes: Vec<Node>,
    nft_table: String,
    nft_active: bool,
    /// `Some(policy)`: every node runs with `--data-dir <dir>/data/<id> --fsync policy`.
    fsync: Option<String>,
    /// With client tokens on: the token the harness's own requests carry (admin).
    token: Option<AccessToken>,
    /// With TLS: the CA the clients trust.
    tls: Option<ClusterTls>,
}

/// A free port on `ip`: bind port 0, read the port the OS chose, release it.
fn free_port(ip: IpAddr, taken: &[u16]) -> u16 {
    // Hold every listener until a port not yet handed out is found.
    let mut held = Vec::new();
    for _ in 0..32 {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"));
        let port = listener.local_addr().expect("bound listener").port();
        if !taken.contains(&port) {
            return port;
        }
        held.push(listener);
    }
    panic!("no free port found on {ip}");
}

/// `GET /health` with a plain blocking socket (usable outside any async runtime), over
/// TLS with `tls`.
fn health_ok(address: SocketAddr, tls: Option<&std::sync::Arc<rustls::ClientConfig>>) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let request =
            format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        let mut response = Vec::new();
        match tls {
            None => {
                let mut stream = stream;
                stream.write_all(request.as_bytes())?;
                stream.read_to_end(&mut response)?;
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
                let connection = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(connection, stream);
                stream.write_all(request.as_bytes())?;
                // The server may close without a close_notify once it has answered.
                if let Err(error) = stream.read_to_end(&mut response) {
                    if response.is_empty() {
                        return Err(error);
                    }
                }
            }
        }
        let response = String::from_utf8_lossy(&response);
        let ok_status =
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200");
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body);
        Ok(ok_status && body == Some("ok"))
    };
    attempt().unwrap_or(false)
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<no log: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl TestCluster {
    /// Starts `n` nodes; `extra_toml` holds optional top-level keys of the cluster file
    /// (e.g. `"live_timeout_ms = 300\n"`). Returns once every node answers `/health`.
    pub fn start(n: usize, extra_toml: &str) -> TestCluster {
        Self::start_inner(
            n,
            extra_toml,
            None,
            |_| Vec::new(),
            None::<fn(usize) -> NodeCert>,
            None,
        )
    }

    /// [`TestCluster::start`] with TLS (`tls_ca_file` and every node's certificate and
    /// key under `<dir>/tls/`): node `i` gets the certificate `cert(i)` describes. Waits
    /// until every node answers `/health` over HTTPS (checked against the CA that
    /// issued its certificate).
    pub fn start_tls(n: usize, extra_toml: &str, cert: impl Fn(usize) -> NodeCert) -> TestCluster {
        Self::start_inner(n, extra_toml, None, |_| Vec::new(), Some(cert), None)
    }

    /// [`TestCluster::start_tls`] with durable nodes (as [`TestCluster::start_durable`]).
    pub fn start_tls_durable(n: usize, extra_toml: &str, fsync: &str) -> TestCluster {
        Self::start_inner(
            n,
            extra_toml,
            Some(fsync.to_owned()),
            |_| Vec::new(),
            Some(|_| NodeCert::Good),
            None,
        )
    }

    /// [`TestCluster::start_tls_durable`] with client tokens on (as [`TestCluster::start_with_tokens`]: `admin` goes with
    /// the harness's own requests).
    pub fn start_secure_durable(n: usize, fsync: &str, tokens: &str, admin: &str) -> TestCluster {
        let token = AccessToken::new(admin, "the test").expect("a well-formed admin token");
        Self::start_inner(
            n,
            "client_tokens_file = \"tokens\"\n",
            Some(fsync.to_owned()),
            |_| Vec::new(),
            Some(|_| NodeCert::Good),
            Some((tokens, token)),
        )
    }

    /// [`TestCluster::start`] with durable nodes: node `i` keeps its data in
    /// [`TestCluster::data_dir`]`(i)` with `--fsync fsync`, and keeps it across
    /// [`TestCluster::restart`].
    pub fn start_durable(n: usize, extra_toml: &str, fsync: &str) -> TestCluster {
        Self::start_inner(
            n,
            extra_toml,
            Some(fsync.to_owned()),
            |_| Vec::new(),
            None::<fn(usize) -> NodeCert>,
            None,
        )
    }

    /// As [`TestCluster::start`], with extra environment variables for node `i`'s
    /// process (kept across restarts): `env(i)`.
    pub fn start_with_env(
        n: usize,
        extra_toml: &str,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> TestCluster {
        Self::start_inner(
            n,
            extra_toml,
            None,
            env,
            None::<fn(usize) -> NodeCert>,
            None,
        )
    }

    /// [`TestCluster::start`] with client tokens on: `tokens` is written to the file
    /// `tokens` beside the cluster file (mode 0600), which names it in
    /// `client_tokens_file`. `admin` (one of them) goes with the harness's own requests
    /// ([`TestCluster::client`], the waits).
    pub fn start_with_tokens(n: usize, extra_toml: &str, tokens: &str, admin: &str) -> TestCluster {
        let extra = format!("client_tokens_file = \"tokens\"\n{extra_toml}");
        let token = AccessToken::new(admin, "the test").expect("a well-formed admin token");
        Self::start_inner(
            n,
            &extra,
            None,
            |_| Vec::new(),
            None::<fn(usize) -> NodeCert>,
            Some((tokens, token)),
        )
    }

    /// What every constructor above comes to: `fsync` (`Some`: durable nodes), `env`
    /// per node, `certs` (`Some`: TLS) and `tokens` (`Some`: the tokens file's text and
    /// the harness's own token).
    fn start_inner(
        n: usize,
        extra_toml: &str,
        fsync: Option<String>,
        env: impl Fn(usize) -> Vec<(String, String)>,
        certs: Option<impl Fn(usize) -> NodeCert>,
        tokens: Option<(&str, AccessToken)>,
    ) -> TestCluster {
        assert!((1..=200).contains(&n), "a test cluster has 1 to 200 nodes");
        let pid = std::process::id();
        let a = (20 + pid % 200) as u8;
        let b = NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst);
        assert!(b != 0, "too many clusters in one test process");
        let dir = std::env::temp_dir().join(format!("meshkv-test-{pid}-{b}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));

        let mut nodes = Vec::new();
        let mut toml = String::new();
        if !extra_toml.trim().is_empty() {
            toml.push_str(extra_toml.trim_end());
            toml.push_str("\n\n");
        }
        // With TLS: the cluster's CA, and a stranger's for `NodeCert::ForeignCa`.
        let authorities = certs.as_ref().map(|_| {
            let tls_dir = dir.join("tls");
            std::fs::create_dir_all(&tls_dir).expect("create the tls directory");
            let ours = Authority::generate("meshkv test CA").expect("a CA");
            let theirs = Authority::generate("a stranger's CA").expect("a CA");
            certs::write_file(&tls_dir.join("ca.pem"), ours.pem(), false).expect("write the CA");
            certs::write_file(&tls_dir.join("foreign-ca.pem"), theirs.pem(), false)
                .expect("write the other CA");
            toml.insert_str(0, "tls_ca_file = \"tls/ca.pem\"\n");
            (ours, theirs)
        });
        for i in 1..=n {
            let ip = IpAddr::V4(Ipv4Addr::new(127, a, b, (10 + i) as u8));
            let http_port = free_port(ip, &[]);
            let peer_port = free_port(ip, &[http_port]);
            let mut node = Node {
                id: format!("n{i}"),
                http: SocketAddr::new(ip, http_port),
                peer: SocketAddr::new(ip, peer_port),
                log_path: dir.join(format!("n{i}.log")),
                child: None,
                paused: false,
                extra_args: Vec::new(),
                env: env(i),
                health_tls: None,
            };
            toml.push_str(&format!(
                "[[nodes]]\nid = \"{}\"\nhttp = \"{}\"\npeer = \"{}\"\n",
                node.id, node.http, node.peer
            ));
            if let (Some(cert), Some((ours, theirs))) = (&certs, &authorities) {
                let (ca, name) = match cert(i) {
                    NodeCert::Good => (ours, node.id.as_str()),
                    NodeCert::ForeignCa => (theirs, node.id.as_str()),
                    NodeCert::Names(name) => (ours, name),
                };
                let issued = ca.issue(&[name], &[ip]).expect("a node certificate");
                let (cert_file, key_file) = (format!("tls/n{i}.pem"), format!("tls/n{i}.key"));
                certs::write_file(&dir.join(&cert_file), &issued.cert_pem, false).unwrap();
                certs::write_file(&dir.join(&key_file), &issued.key_pem, true).unwrap();
                toml.push_str(&format!(
                    "tls_cert_file = \"{cert_file}\"\ntls_key_file = \"{key_file}\"\n"
                ));
                node.health_tls = Some(health_config(ca.pem()));
            }
            toml.push('\n');
            nodes.push(node);
        }
        let cluster_file = dir.join("cluster.toml");
        std::fs::write(&cluster_file, toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", cluster_file.display()));
        let token = tokens.map(|(text, admin)| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let path = dir.join("tokens");
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
            file.write_all(text.as_bytes())
                .expect("write the tokens file");
            admin
        });

        let tls = authorities.map(|_| {
            let ca_file = dir.join("tls").join("ca.pem");
            ClusterTls {
                ca: Ca::load(&ca_file).expect("the CA file loads"),
                ca_file,
            }
        });
        // The struct exists before any process does, so a panic below still kills them.
        let mut cluster = TestCluster {
            dir,
            cluster_file,
            nodes,
            nft_table: format!("meshkv_t{pid}_{b}"),
            nft_active: false,
            fsync,
            token,
            tls,
        };
        for i in 1..=n {
            cluster.spawn(i);
        }
        for i in 1..=n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "node {i} does not exist (nodes are numbered 1..={})",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let count = self.nodes.len();
        assert!(
            (1..=count).contains(&i),
            "node {i} does not exist (nodes are numbered 1..={count})"
        );
        &mut self.nodes[i - 1]
    }

    /// The `serve` command of node `i`, with its data directory if durable.
    fn serve_command(&self, i: usize) -> Command {
        let node = self.node(i);
        // MESHKV_BIN runs the nodes from another build (a benchmark's "before").
        let binary =
            std::env::var_os("MESHKV_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_meshkv").into());
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--cluster")
            .arg(&self.cluster_file)
            .arg("--node")
            .arg(&node.id);
        if let Some(fsync) = &self.fsync {
            command
                .arg("--data-dir")
                .arg(self.data_dir(i))
                .arg("--fsync")
                .arg(fsync);
        }
        command
            .args(&node.extra_args)
            .env("RUST_LOG", "info")
            .envs(node.env.iter().map(|(key, value)| (key, value)));
        command
    }

    fn spawn(&mut self, i: usize) {
        let mut command = self.serve_command(i);
        let node = self.node_mut(i);
        assert!(node.child.is_none(), "node {} is already running", node.id);
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", node.log_path.display()));
        let log_err = log.try_clone().expect("clone a log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {}: {e}", node.id));
        node.child = Some(child);
        node.paused = false;
    }

    /// Polls `/health` of node `i` until it answers `ok`; panics with the log's tail if
    /// the process exits first or the deadline passes.
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let node = self.node_mut(i);
            if health_ok(node.http, node.health_tls.as_ref()) {
                return;
            }
            let child = node.child.as_mut().expect("node was started");
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                panic!(
                    "node {} exited ({status}) before answering /health; log {}:\n{}",
                    node.id,
                    node.log_path.display(),
                    tail(&node.log_path, 30)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "node {} did not answer /health within {:?}; log {}:\n{}",
                    node.id,
                    START_TIMEOUT,
                    node.log_path.display(),
                    tail(&node.log_path, 30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Node `i`'s data directory (used when the cluster is durable).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(self.id(i))
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.node(i).log_path).unwrap_or_default()
    }

    /// Extra `serve` arguments for node `i`'s next starts (replacing earlier ones).
    pub fn set_extra_args(&mut self, i: usize, args: &[&str]) {
        self.node_mut(i).extra_args = args.iter().map(|arg| arg.to_string()).collect();
    }

    /// SIGTERMs node `i` and waits (bounded) for it to exit; returns its exit status.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        self.signal(i, "-TERM");
        let node = self.node_mut(i);
        let mut child = node.child.take().expect("node was started");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} did not stop within {START_TIMEOUT:?} of SIGTERM",
                    node.id
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs one more `serve` of node `i` (its data directory, plus `extra`) in the
    /// foreground and returns its exit status and output, if it exits within
    /// `START_TIMEOUT`; panics (after killing it) if it keeps running.
    pub fn serve_and_expect_exit(
        &self,
        i: usize,
        extra: &[&str],
    ) -> (std::process::ExitStatus, String) {
        let mut child = self
            .serve_command(i)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start meshkv serve");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let output = child.wait_with_output().expect("collect the output");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                return (output.status, text);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "meshkv serve for {} kept running; it was expected to exit",
                    self.id(i)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Number of nodes in the cluster file.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The directory holding the cluster file and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster file.
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }

    /// A client of node `i` (5 s timeout; HTTPS with the CA if the cluster has TLS).
    pub fn client(&self, i: usize) -> Client {
        self.client_with_timeout(i, Duration::from_secs(5))
    }

    /// A client of node `i` with `timeout`.
    pub fn client_with_timeout(&self, i: usize, timeout: Duration) -> Client {
        Client::new(&self.http_addr(i).to_string(), timeout)
            .with_ca(self.tls.as_ref().map(|tls| &tls.ca))
            .with_token(self.token.clone())
    }

    /// A client of node `i` that trusts the CA in `ca_file` alone (e.g. the other CA
    /// of [`NodeCert::ForeignCa`], `<dir>/tls/foreign-ca.pem`).
    pub fn client_with_ca(&self, i: usize, ca_file: &Path) -> Client {
        let ca = Ca::load(ca_file).expect("the CA file loads");
        Client::new(&self.http_addr(i).to_string(), Duration::from_secs(5)).with_ca(Some(&ca))
    }

    /// The CA file of a TLS cluster.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_file.as_path())
    }

    /// Node `i`'s client HTTP address.
    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.node(i).http
    }

    /// Node `i`'s base URL, `http://ip:port` (`https://` if the cluster has TLS).
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr(i))
    }

    /// Node `i`'s IP (shared by its HTTP and peer addresses).
    pub fn ip(&self, i: usize) -> IpAddr {
        self.node(i).http.ip()
    }

    /// Node `i`'s id, `n<i>`.
    pub fn id(&self, i: usize) -> &str {
        &self.node(i).id
    }

    /// Node `i`'s process id; panics if it is not running.
    pub fn pid(&self, i: usize) -> u32 {
        let node = self.node(i);
        node.child
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", node.id))
            .id()
    }

    /// Whether node `i`'s process was started and not killed.
    pub fn is_running(&self, i: usize) -> bool {
        self.node(i).child.is_some()
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        let node = self.node_mut(i);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", node.id));
        let _ = child.kill();
        child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap node {}: {e}", node.id));
        node.paused = false;
    }

    /// Starts node `i` again (same cluster file and addresses; it starts empty, or
    /// with its data directory if the cluster is durable) and waits until it answers
    /// `/health`.
    pub fn restart(&mut self, i: usize) {
        self.restart_without_waiting(i);
        self.wait_healthy(i);
    }

    /// Starts node `i` again (killing it first if it runs) and returns at once,
    /// without waiting for `/health`.
    pub fn restart_without_waiting(&mut self, i: usize) {
        if self.node(i).child.is_some() {
            self.kill(i);
        }
        self.spawn(i);
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.pid(i);
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {signal} {pid}: {e}"));
        assert!(status.success(), "kill {signal} {pid} failed: {status}");
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.node_mut(i).paused = true;
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.node_mut(i).paused = false;
    }

    /// Cuts the network between the groups (node numbers): every packet between two
    /// nodes of different groups is dropped. Replaces any earlier partition.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        assert!(nft_available(), "partition() needs root and nft");
        let mut rules = String::new();
        for (g, group) in groups.iter().enumerate() {
            for other in &groups[g + 1..] {
                for &x in group.iter() {
                    for &y in other.iter() {
                        let (ip_x, ip_y) = (self.ip(x), self.ip(y));
                        rules.push_str(&format!(
                            "    ip saddr {ip_x} ip daddr {ip_y} drop\n    ip saddr {ip_y} ip daddr {ip_x} drop\n"
                        ));
                    }
                }
            }
        }
        // One atomic transaction: create the table if missing, delete it (and any
        // earlier partition with it), define it anew.
        let table = &self.nft_table;
        let ruleset = format!(
            "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        // Mark first: if nft half-succeeds, Drop still tries to delete the table.
        self.nft_active = true;
        run_nft_script(&ruleset).unwrap_or_else(|e| panic!("nft -f - failed: {e}\n{ruleset}"));
    }

    /// Removes the partition (deletes this cluster's nft table).
    pub fn heal(&mut self) {
        if self.nft_active {
            let status = Command::new("nft")
                .args(["delete", "table", "inet", &self.nft_table])
                .stderr(Stdio::null())
                .status();
            // A table that does not exist (nft half-failed earlier) is fine.
            let _ = status;
            self.nft_active = false;
        }
    }

    /// The sum of the samples of node `i`'s `/metrics` whose line starts with
    /// `prefix` (0 if none), read with [`TestCluster::client`] (HTTPS and the token
    /// when the cluster has them).
    pub async fn metric(&self, i: usize, prefix: &str) -> f64 {
        let text = self
            .client(i)
            .get_text("/metrics")
            .await
            .unwrap_or_else(|e| panic!("node {i}'s /metrics: {e}"));
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `GET /v1/convergence` of node `i`.
    pub async fn convergence(&self, i: usize) -> Value {
        self.client(i)
            .get_json("/v1/convergence")
            .await
            .unwrap_or_else(|e| panic!("GET /v1/convergence on {}: {e}", self.id(i)))
    }

    /// `GET /v1/cluster` of node `i`.
    pub async fn cluster_view(&self, i: usize) -> Value {
        self.client(i)
            .get_json("/v1/cluster")
            .await
            .unwrap_or_else(|e| panic!("GET /v1/cluster on {}: {e}", self.id(i)))
    }

    /// The state (`alive`, `suspect`, `down`) in which node `i` holds peer `j`, if it
    /// answers.
    pub async fn peer_state(&self, i: usize, j: usize) -> Option<String> {
        let client = self.client_with_timeout(i, Duration::from_secs(1));
        let view = client.get_json("/v1/cluster").await.ok()?;
        let peer_id = self.id(j);
        view["peers"]
            .as_array()?
            .iter()
            .find(|peer| peer["id"] == peer_id)
            .and_then(|peer| peer["state"].as_str())
            .map(str::to_owned)
    }

    /// Waits (bounded) until every running node sees every other running node alive.
    pub async fn wait_mesh(&self, timeout: Duration) {
        let running: Vec<usize> = (1..=self.len())
            .filter(|&i| self.is_running(i) && !self.node(i).paused)
            .collect();
        eventually(timeout, "every running node sees the others alive", || {
            let running = running.clone();
            async move {
                for &i in &running {
                    for &j in &running {
                        if i != j && self.peer_state(i, j).await.as_deref() != Some("alive") {
                            return None;
                        }
                    }
                }
                Some(())
            }
        })
        .await
    }

    /// Polls until every running (not killed, not paused) node reports the same
    /// `digest`. Returns the time it took, or an error listing each node's digest.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            // (id, digest, description for the error message)
            let mut digests: Vec<(String, Option<String>, String)> = Vec::new();
            for i in 1..=self.len() {
                let node = self.node(i);
                if node.child.is_none() || node.paused {
                    continue;
                }
                let client = self.client_with_timeout(i, Duration::from_secs(2));
                let entry = match client.get_json("/v1/convergence").await {
                    Ok(json) => {
                        let digest = json["digest"].as_str().map(str::to_owned);
                        let text = format!(
                            "{} (keys {}, tombstones {})",
                            json["digest"], json["keys"], json["tombstones"]
                        );
                        (node.id.clone(), digest, text)
                    }
                    Err(e) => (node.id.clone(), None, format!("<error: {e}>")),
                };
                digests.push(entry);
            }
            let all_equal = digests
                .iter()
                .all(|(_, digest, _)| digest.is_some() && *digest == digests[0].1);
            if all_equal {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let listing: Vec<String> = digests
                    .iter()
                    .map(|(id, _, text)| format!("{id}: {text}"))
                    .collect();
                return Err(format!(
                    "not converged after {timeout:?}: {}",
                    listing.join("; ")
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SIGKILL also ends a SIGSTOPped process.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.heal();
        if std::thread::panicking() {
            eprintln!(
                "meshkv test cluster: logs kept in {} for inspection",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run_nft_script(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| format!("cannot write to nft: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("nft failed: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether partitions can be made: running as root and `nft list tables` works.
pub fn nft_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("nft")
        .args(["list", "tables"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// `true` if the test may use partitions. Otherwise prints a loud SKIPPED line and
/// returns `false` — unless `MESHKV_REQUIRE_NFT=1`, where it panics, so that CI can
/// never silently pass a partition test.
pub fn require_nft(test_name: &str) -> bool {
    if nft_available() {
        return true;
    }
    let why = "needs root and nft (nftables) to cut links between node IPs";
    if std::env::var("MESHKV_REQUIRE_NFT").as_deref() == Ok("1") {
        panic!("{test_name}: {why}, and MESHKV_REQUIRE_NFT=1 forbids skipping");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of
    // passing tests, and a skip must not go unnoticed.
    let _ = writeln!(
        std::io::stderr(),
        "\n***** SKIPPED {test_name}: {why} (set MESHKV_REQUIRE_NFT=1 to fail instead) *****\n"
    );
    false
}

/// Retries `f` every 50 ms until it returns `Some`, for at most `timeout`; panics with
/// `what` when the deadline passes.
pub async fn eventually<F, Fut, T>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where Debian's `faketime` package puts the preload library.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// The environment that shifts a process's wall clock by `offset` (libfaketime syntax,
/// e.g. `"+3s"`; with `Some(file)`, the offset is read from that file on every clock
/// reading instead, so a test can change it), leaving its monotonic clock alone; `None` if libfaketime is missing,
/// after a loud SKIPPED line — unless `MESHKV_REQUIRE_FAKETIME=1` (set by `.ci/run`),
/// where it panics, so that CI never silently passes a clock test.
pub fn faketime_env(
    test_name: &str,
    offset: &str,
    file: Option<&Path>,
) -> Option<Vec<(String, String)>> {
    let Some(library) = LIBFAKETIME.iter().find(|path| Path::new(path).exists()) else {
        let why = "needs libfaketime (Debian package faketime) to shift a node's clock";
        if std::env::var("MESHKV_REQUIRE_FAKETIME").as_deref() == Ok("1") {
            panic!("{test_name}: {why}, and MESHKV_REQUIRE_FAKETIME=1 forbids skipping");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n***** SKIPPED {test_name}: {why} (set MESHKV_REQUIRE_FAKETIME=1 to fail instead) *****\n"
        );
        return None;
    };
    let mut env = vec![
        ("LD_PRELOAD".into(), (*library).into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    match file {
        None => env.push(("FAKETIME".into(), offset.into())),
        Some(file) => {
            std::fs::write(file, offset).expect("faketime file written");
            env.push(("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()));
            env.push(("FAKETIME_NO_CACHE".into(), "1".into()));
        }
    }
    Some(env)
}
