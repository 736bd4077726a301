//! `meshkv test` judges any store by what it promises, not by meshkv's design.
//!
//! Runs the real binary (`meshkv test all`) under each `--expect` against three
//! stand-in stores (tests/common/standins.rs) that serve only the key API, with no
//! `peer` addresses, and whose faults are `curl` calls to a control endpoint:
//!
//! | store | ap | cp | report |
//! | --- | --- | --- | --- |
//! | never replicates | fails | fails | exits 0; the figures carry violations, stale reads, lost writes |
//! | one shared map | passes, no divergence | passes | passes |
//! | refuses on the minority side | fails (refused writes, only `ap` checks) | passes | exits 0, refusals as notes |
//!
//! `report` exits 0 against the store that never replicates: it fails only when a suite
//! could not run (a fault command failed, the cluster never answered), which the last
//! tests show. Sizes are small so that each run takes seconds.

#[path = "common/standins.rs"]
mod standins;

use std::time::Duration;

use serde_json::Value;
use standins::{Kind, StandIn};

/// Small sizes and short bounds: each `meshkv test all` run takes seconds.
const SIZES: &[&str] = &[
    "--rounds",
    "24",
    "--keys",
    "4",
    "--ops",
    "40",
    "--clients",
    "3",
    "--converge-timeout",
    "1s",
    "--partition-hold",
    "300ms",
    "--seed",
    "7",
];

/// Longest one `meshkv test` run may take here.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The outcome of one `meshkv test` run.
struct Run {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON report of `suite` (a run of `all` holds one per suite).
    fn suite(&self, name: &str) -> &Value {
        match self.json.get("suites").and_then(Value::as_array) {
            Some(suites) => suites
                .iter()
                .find(|s| s["suite"] == name)
                .unwrap_or_else(|| panic!("no suite {name} in the report:\n{}", self.json)),
            None => &self.json,
        }
    }

    /// Figure `key` of `suite`.
    fn figure(&self, suite: &str, key: &str) -> &Value {
        let figures = &self.suite(suite)["figures"];
        figures
            .get(key)
            .unwrap_or_else(|| panic!("suite {suite} has no figure {key}:\n{figures}"))
    }

    /// Figure `key` of `suite` as a count.
    fn count(&self, suite: &str, key: &str) -> u64 {
        self.figure(suite, key)
            .as_u64()
            .unwrap_or_else(|| panic!("figure {key} of {suite} is not a count"))
    }

    /// The verdict of the check of `suite` whose text starts with `what`.
    fn verdict(&self, suite: &str, what: &str) -> String {
        let checks = self.suite(suite)["checks"].as_array().expect("checks");
        let check = checks
            .iter()
            .find(|c| c["check"].as_str().is_some_and(|t| t.starts_with(what)))
            .unwrap_or_else(|| panic!("no check {what:?} in {suite}: {checks:#?}"));
        check["verdict"].as_str().expect("verdict").to_owned()
    }

    /// Every check, of every suite, that failed the run: (suite, rule, text).
    fn failed_checks(&self) -> Vec<(String, String, String)> {
        let suites: Vec<&Value> = match self.json.get("suites").and_then(Value::as_array) {
            Some(suites) => suites.iter().collect(),
            None => vec![&self.json],
        };
        suites
            .iter()
            .flat_map(|suite| {
                suite["checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["verdict"] == "failed")
                    .map(|c| {
                        (
                            suite["suite"].as_str().unwrap_or("?").to_owned(),
                            c["rule"].as_str().unwrap_or("?").to_owned(),
                            c["check"].as_str().unwrap_or("?").to_owned(),
                        )
                    })
            })
            .collect()
    }

    /// For assertion messages.
    fn context(&self) -> String {
        format!(
            "exit code {}\n--- stdout\n{}\n--- stderr (last 40 lines)\n{}",
            self.code,
            self.stdout,
            self.stderr
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// Runs `meshkv test SUITE --expect EXPECT` against `store` with `extra` arguments
/// (the stand-in's fault commands unless `extra` replaces some).
async fn run(store: &StandIn, suite: &str, expect: &str, extra: &[&str]) -> Run {
    let json_path = store.dir().join(format!("{suite}-{expect}.json"));
    let _ = std::fs::remove_file(&json_path);
    // The stand-in's fault commands, less those that `extra` replaces.
    let fault_args: Vec<String> = store
        .fault_args()
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0].as_str()))
        .flatten()
        .cloned()
        .collect();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"));
    command
        .arg("test")
        .arg(suite)
        .arg("--cluster")
        .arg(store.cluster_file())
        .args(["--expect", expect, "--json"])
        .arg(&json_path)
        .args(SIZES)
        .args(fault_args)
        .args(extra)
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!("meshkv test {suite} --expect {expect} ran over {RUN_TIMEOUT:?}")
        })
        .expect("the meshkv binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().unwrap_or(-1);
    let json = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON report at {}:\n{stdout}\n{stderr}",
                json_path.display()
            )
        });
    Run {
        code,
        json,
        stdout,
        stderr,
    }
}

fn curl_is_installed() {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "these tests need curl (the stand-ins' fault commands use it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_replicates_is_caught_under_every_mode() {
    curl_is_installed();
    let store = StandIn::start(Kind::Isolated, 4).await;
    for expect in ["ap", "cp", "report"] {
        let run = run(&store, "all", expect, &[]).await;
        let context = run.context();
        assert_eq!(run.json["expect"], expect, "{context}");
        // The same figures under every mode: every fault is found.
        assert!(run.count("consistency", "violations") > 0, "{context}");
        assert!(run.count("consistency", "stale_reads") > 0, "{context}");
        assert!(run.count("consistency", "lost_values") > 0, "{context}");
        assert!(run.count("failure", "violations") > 0, "{context}");
        assert!(
            run.count("failure", "restarted_stale_reads") > 0,
            "{context}"
        );
        assert!(
            run.count("stress-partition", "violations_before_partition") > 0,
            "{context}"
        );
        assert!(
            run.count("stress-partition", "lost_values") > 0,
            "{context}"
        );
        assert!(
            run.count("stress-partition", "final_value_mismatches") > 0,
            "{context}"
        );
        assert_eq!(
            run.figure("partition", "converged_after_heal_ms"),
            &Value::Null,
            "{context}"
        );
        assert_eq!(
            run.figure("partition", "digests_equal_after_heal_ms"),
            "not offered",
            "{context}"
        );
        // The faults themselves worked: only the store is to blame.
        for suite in ["failure", "partition", "stress-partition"] {
            assert_eq!(
                run.verdict(suite, "every fault command succeeded"),
                "held",
                "{context}"
            );
        }
        let failed = run.failed_checks();
        if expect == "report" {
            assert_eq!(
                run.code, 0,
                "report fails only when a suite cannot run\n{context}"
            );
            assert_eq!(run.json["passed"], true, "{context}");
            assert!(failed.is_empty(), "{failed:?}\n{context}");
            assert_eq!(
                run.verdict("consistency", "every PUT's previous and every read"),
                "reported",
                "{context}"
            );
        } else {
            assert_eq!(run.code, 1, "{context}");
            assert_eq!(run.json["passed"], false, "{context}");
            // Caught by consistency rules both modes promise, not only by availability.
            assert!(
                failed
                    .iter()
                    .any(|(suite, rule, _)| suite == "consistency" && rule == "ap+cp"),
                "{failed:?}\n{context}"
            );
            assert!(run.stdout.contains("[FAIL]"), "{context}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_consistent_through_partitions_passes_ap_and_cp() {
    curl_is_installed();
    let store = StandIn::start(Kind::Shared, 4).await;
    for expect in ["ap", "cp", "report"] {
        let run = run(&store, "all", expect, &[]).await;
        let context = run.context();
        assert_eq!(run.code, 0, "{:?}\n{context}", run.failed_checks());
        assert_eq!(run.json["passed"], true, "{context}");
        // Divergence-free, and nothing judged stale or lost.
        assert_eq!(run.figure("partition", "diverged"), false, "{context}");
        assert_eq!(
            run.figure("partition", "later_write_won"),
            true,
            "{context}"
        );
        assert_eq!(
            run.figure("stress-partition", "diverged"),
            false,
            "{context}"
        );
        for suite in ["consistency", "failure", "stress-partition"] {
            for figure in [
                "violations",
                "stale_reads",
                "lost_values",
                "failed_requests",
            ] {
                assert_eq!(run.count(suite, figure), 0, "{suite} {figure}\n{context}");
            }
        }
        // It offers /v1/convergence but no /v1/cluster view.
        assert!(
            run.figure("consistency", "digests_equal_after_ms")
                .is_number(),
            "{context}"
        );
        assert_eq!(
            run.figure("partition", "partition_seen_after_ms"),
            "not offered",
            "{context}"
        );
        assert_eq!(
            run.verdict("partition", "partition n1,n2|n3,n4 took effect"),
            "held",
            "{context}"
        );
        assert!(run.stdout.contains("== meshkv test all"), "{context}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_minority_writes_passes_cp_and_fails_only_availability_under_ap() {
    curl_is_installed();
    // Three front ends: the partition n1 | n2,n3 leaves a majority side that serves.
    let store = StandIn::start(Kind::MajorityOnly, 3).await;
    for expect in ["cp", "report", "ap"] {
        let run = run(&store, "all", expect, &[]).await;
        let context = run.context();
        // The same figures under every mode: the minority refused, the majority served.
        assert_eq!(
            run.figure("partition", "side_a_accepted"),
            false,
            "{context}"
        );
        assert_eq!(
            run.figure("partition", "side_b_accepted"),
            true,
            "{context}"
        );
        assert_eq!(run.figure("partition", "diverged"), false, "{context}");
        assert!(
            run.count("partition", "reads_refused_during_partition") > 0,
            "{context}"
        );
        assert_eq!(run.count("partition", "stale_reads"), 0, "{context}");
        let value_b = run.figure("partition", "value_side_b").clone();
        assert_eq!(
            run.figure("partition", "final_value"),
            &value_b,
            "{context}"
        );
        assert!(
            run.count("stress-partition", "failed_requests_during_partition") > 0,
            "{context}"
        );
        assert_eq!(
            run.count("stress-partition", "failed_requests_before_partition"),
            0,
            "{context}"
        );
        for figure in ["violations", "stale_reads", "lost_values"] {
            assert_eq!(
                run.count("stress-partition", figure),
                0,
                "{figure}\n{context}"
            );
        }
        // Its /v1/cluster view showed the cut: a fault-level signal, not divergence.
        assert!(
            run.figure("partition", "partition_seen_after_ms")
                .is_number(),
            "{context}"
        );
        let refused = run.verdict("partition", "both sides accepted their write");
        match expect {
            "cp" | "report" => {
                assert_eq!(run.code, 0, "{:?}\n{context}", run.failed_checks());
                assert_eq!(refused, "reported", "{context}");
            }
            _ => {
                assert_eq!(run.code, 1, "{context}");
                assert_eq!(refused, "failed", "{context}");
                // It fails ap for refusing, and for nothing that cp would also fault.
                let failed = run.failed_checks();
                assert!(
                    failed.iter().all(|(_, rule, _)| rule == "ap"),
                    "{failed:?}\n{context}"
                );
                assert!(
                    failed
                        .iter()
                        .any(|(suite, _, what)| suite == "stress-partition"
                            && what.starts_with("every request was served")),
                    "{failed:?}\n{context}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_fails_when_a_fault_command_fails() {
    curl_is_installed();
    let store = StandIn::start(Kind::Shared, 4).await;
    let run = run(
        &store,
        "partition",
        "report",
        &["--partition-cmd", "exit 3"],
    )
    .await;
    let context = run.context();
    assert_eq!(run.code, 1, "{context}");
    assert_eq!(
        run.verdict("partition", "every fault command succeeded"),
        "failed",
        "{context}"
    );
    assert_eq!(run.json["expect"], "report", "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_fails_when_the_cluster_never_answers() {
    // A cluster file whose only node listens nowhere (a port bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("meshkv-silent-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        format!("[[nodes]]\nid = \"n1\"\nhttp = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let json = dir.join("out.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args([
            "test",
            "consistency",
            "--expect",
            "report",
            "--rounds",
            "2",
            "--cluster",
        ])
        .arg(&cluster)
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["checks"][0]["verdict"], "failed", "{report}");
    assert_eq!(report["checks"][0]["rule"], "ran", "{report}");
}

#[test]
fn serving_a_node_without_a_peer_address_is_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("meshkv-nopeer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        "[[nodes]]\nid = \"n1\"\nhttp = \"127.0.0.1:1\"\n\n[[nodes]]\nid = \"n2\"\nhttp = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["serve", "--node", "n1", "--cluster"])
        .arg(&cluster)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("node n1 has no peer address"), "{stderr}");
}
