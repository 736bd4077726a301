//! `meshkv demo`: it refuses to start over ports already taken (and leaves a running
//! demo's files alone), its nodes never outlive it, even after `kill -9`, and a
//! restarted demo still has the data of the previous one (each node has a data
//! directory under the demo's run directory).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A client port on 127.0.0.11 that is free, with its peer port (+100) free too.
fn free_demo_port() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.11:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        if port < 60_000 && TcpListener::bind(("127.0.0.11", port + 100)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.11");
}

fn demo(port: u16, tmp: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshkv"));
    command
        .args(["demo", "--nodes", "2", "--port", &port.to_string()])
        // The demo keeps its files under the temporary directory: use the test's own.
        .env("TMPDIR", tmp)
        .stdin(Stdio::null());
    command
}

fn alive(pid: u32) -> bool {
    // /proc/<pid>/stat's third field: Z for a zombie, which no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.split(' ').nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

#[test]
fn a_demo_over_taken_ports_fails_loudly_and_its_nodes_die_with_it() {
    let tmp = std::env::temp_dir().join(format!("meshkv-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let port = free_demo_port();

    // 1. The first node's port is taken: the demo exits 1 and says which address.
    let squatter = TcpListener::bind(("127.0.0.11", port)).unwrap();
    let out = demo(port, &tmp).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.11:{port}")), "{stderr}");
    assert!(
        !tmp.join("meshkv-demo/cluster.toml").exists(),
        "nothing written"
    );
    drop(squatter);

    // 2. A demo that starts, then is killed with SIGKILL: its nodes stop too.
    let mut child = demo(port, &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.len() < 2 && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        // The table rows: "  n1   http://…   127.0.0.11:…   <pid>"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() == 4 && fields[0].starts_with('n') && fields[1].starts_with("http://") {
            pids.push(fields[3].parse::<u32>().unwrap());
        }
    }
    assert_eq!(pids.len(), 2, "the demo printed its two nodes");
    assert!(pids.iter().all(|pid| alive(*pid)));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let orphans: Vec<_> = pids.iter().filter(|pid| alive(**pid)).collect();
    for pid in &orphans {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    assert!(orphans.is_empty(), "nodes {orphans:?} outlived the demo");

    // 3. Data written to a demo is still there after it is stopped and started again.
    let mut child = demo(port, &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_table(&mut child);
    let node = format!("127.0.0.11:{port}");
    let reply = http(&node, "PUT", "/v1/kv/kept", "across restarts");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the demo stops cleanly on SIGTERM: {status}"
    );
    let mut child = demo(port, &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_table(&mut child);
    let reply = http(&node, "GET", "/v1/kv/kept", "");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("across restarts"),
        "{reply}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Reads the demo's output until its table of nodes has been printed.
fn wait_for_table(child: &mut std::process::Child) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut rows = 0;
    while rows < 2 {
        let Some(Ok(line)) = lines.next() else {
            panic!("the demo ended before printing its nodes");
        };
        if line.trim_start().starts_with('n') && line.contains("http://") {
            rows += 1;
        }
    }
    // Keep draining, so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
}

/// One HTTP/1.1 request; the whole response as text.
fn http(address: &str, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
