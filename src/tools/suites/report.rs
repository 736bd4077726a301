//! Measurements and reports of the suites.
//!
//! Owns: request samples ([`Sample`], [`Recorder`]), fault events ([`FaultEvent`]),
//! latency figures, the availability section (failed requests, slowest replies around
//! each fault), the progress line ([`Progress`]), the human summary and the JSON document
//! ([`SuiteReport`]).
//! Knows nothing of: what a suite does; suites feed it figures, checks and samples.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::tools::client::ClientError;

/// Failed requests and violations listed in full in the human report (all go to JSON,
/// up to [`JSON_LIST_LIMIT`]).
const TEXT_LIST_LIMIT: usize = 15;
/// Longest list written to the JSON document.
pub const JSON_LIST_LIMIT: usize = 10_000;
/// Replies listed around each fault.
const SLOWEST_AROUND_FAULT: usize = 5;
/// The window around a fault in which replies are examined.
const FAULT_WINDOW_BEFORE: Duration = Duration::from_secs(1);
const FAULT_WINDOW_AFTER: Duration = Duration::from_secs(10);

/// A client request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `GET /v1/kv/KEY`.
    Get,
    /// `PUT /v1/kv/KEY`.
    Put,
    /// `GET /v1/convergence`.
    Convergence,
}

impl Op {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Convergence => "convergence",
        }
    }
}

/// One client request.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, since the suite started.
    pub at: Duration,
    /// The node it went to.
    pub node: String,
    /// What it was.
    pub op: Op,
    /// How long the reply took.
    pub latency: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Collects the samples of one client.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    /// Samples in the order they were recorded.
    pub samples: Vec<Sample>,
}

impl Recorder {
    /// A recorder whose times are relative to `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            samples: Vec::new(),
        }
    }

    /// Records a request sent at `sent` that has just completed.
    pub fn record<T>(
        &mut self,
        node: &str,
        op: Op,
        sent: Instant,
        result: &Result<T, ClientError>,
    ) {
        self.samples.push(Sample {
            at: sent.saturating_duration_since(self.start),
            node: node.to_owned(),
            op,
            latency: sent.elapsed(),
            error: result.as_ref().err().map(ToString::to_string),
        });
    }
}

/// A fault command that was run.
#[derive(Clone, Debug)]
pub struct FaultEvent {
    /// What it did, e.g. `kill n4`.
    pub what: String,
    /// When it started, since the suite started.
    pub at: Duration,
    /// How long the command took.
    pub took: Duration,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// Latency percentiles of successful requests, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Requests measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// The latency of the successful samples among `samples`.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Self {
        let mut values: Vec<Duration> = samples
            .into_iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.latency)
            .collect();
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let percentile = |p: f64| {
            let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            ms(values[rank - 1])
        };
        let total: Duration = values.iter().sum();
        Self {
            count: values.len(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            max_ms: ms(values[values.len() - 1]),
            mean_ms: ms(total) / values.len() as f64,
        }
    }

    /// As JSON.
    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round(self.p50_ms),
            "p99_ms": round(self.p99_ms),
            "max_ms": round(self.max_ms),
            "mean_ms": round(self.mean_ms),
        })
    }

    /// `p50 1.20 ms, p99 3.40 ms, max 9.00 ms`.
    pub fn text(self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Rounds to two decimals for the JSON document.
pub fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Milliseconds with two decimals.
pub fn ms(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1000.0)
}

/// A rule of the suite and whether it held.
#[derive(Clone, Debug)]
pub struct Check {
    /// What must hold.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// What was observed.
    pub detail: String,
}

/// The result of one suite.
#[derive(Debug)]
pub struct SuiteReport {
    /// The suite's name.
    pub suite: String,
    /// The seed of its random choices.
    pub seed: u64,
    /// How long it ran.
    pub elapsed: Duration,
    /// Figures in display order: JSON key, label, value.
    figures: Vec<(String, String, Value)>,
    /// Rules and whether they held.
    pub checks: Vec<Check>,
    /// Readable details: title and lines.
    sections: Vec<(String, Vec<String>)>,
    /// Extra JSON members (lists of violations, failed requests...).
    details: Map<String, Value>,
}

impl SuiteReport {
    /// An empty report.
    pub fn new(suite: &str, seed: u64) -> Self {
        Self {
            suite: suite.to_owned(),
            seed,
            elapsed: Duration::ZERO,
            figures: Vec::new(),
            checks: Vec::new(),
            sections: Vec::new(),
            details: Map::new(),
        }
    }

    /// Puts first the check that the cluster was settled when the suite started.
    pub fn with_settled(mut self, settled: &Result<Duration, String>) -> Self {
        self.checks.insert(
            0,
            Check {
                what: "at the start, every node answered and saw every peer alive".to_owned(),
                ok: settled.is_ok(),
                detail: match settled {
                    Ok(took) => format!("after {:.0} ms", ms(*took)),
                    Err(view) => view.clone(),
                },
            },
        );
        self
    }

    /// True when every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.ok)
    }

    /// Adds a figure (`key` in JSON, `label` in the table).
    pub fn figure(&mut self, key: &str, label: &str, value: impl Into<Value>) {
        self.figures
            .push((key.to_owned(), label.to_owned(), value.into()));
    }

    /// Adds a check.
    pub fn check(&mut self, what: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            what: what.to_owned(),
            ok,
            detail: detail.into(),
        });
    }

    /// Adds a readable section (long lists are cut in the text; JSON has them whole).
    pub fn section(&mut self, title: &str, lines: Vec<String>) {
        if !lines.is_empty() {
            self.sections.push((title.to_owned(), lines));
        }
    }

    /// Adds a JSON member.
    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.to_owned(), value);
    }

    /// Adds the request figures of `samples` (count, errors, latency) under `prefix`.
    pub fn add_latency(&mut self, prefix: &str, label: &str, samples: &[&Sample]) {
        let latency = Latency::of(samples.iter().copied());
        let errors = samples.iter().filter(|s| s.error.is_some()).count();
        self.figure(
            &format!("{prefix}requests"),
            &format!("{label}requests"),
            samples.len(),
        );
        self.figure(
            &format!("{prefix}errors"),
            &format!("{label}errors"),
            errors,
        );
        self.figure(
            &format!("{prefix}latency_p50_ms"),
            &format!("{label}latency p50 (ms)"),
            round(latency.p50_ms),
        );
        self.figure(
            &format!("{prefix}latency_p99_ms"),
            &format!("{label}latency p99 (ms)"),
            round(latency.p99_ms),
        );
        self.figure(
            &format!("{prefix}latency_max_ms"),
            &format!("{label}latency max (ms)"),
            round(latency.max_ms),
        );
    }

    /// Adds the availability part: every failed request and the slowest replies
    /// around each fault. Returns how many requests failed.
    pub fn add_availability(&mut self, samples: &[Sample], faults: &[FaultEvent]) -> usize {
        let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
        let failed_count = failed.len();
        self.figure("failed_requests", "failed requests", failed_count);
        self.section(
            "failed requests (time since start, node, op, error)",
            failed
                .iter()
                .map(|s| {
                    format!(
                        "{:>9.3} s  {:<6} {:<5} {}",
                        s.at.as_secs_f64(),
                        s.node,
                        s.op.name(),
                        s.error.as_deref().unwrap_or("")
                    )
                })
                .collect(),
        );
        self.detail(
            "failed_request_list",
            Value::Array(
                failed
                    .iter()
                    .take(JSON_LIST_LIMIT)
                    .map(|s| {
                        json!({
                            "at_ms": ms(s.at),
                            "node": s.node,
                            "op": s.op.name(),
                            "latency_ms": ms(s.latency),
                            "error": s.error,
                        })
                    })
                    .collect(),
            ),
        );

        let mut fault_json = Vec::new();
        let mut lines = Vec::new();
        for fault in faults {
            let slowest = slowest_around(samples, fault.at, SLOWEST_AROUND_FAULT);
            let failed_after = samples
                .iter()
                .filter(|s| s.error.is_some() && s.at >= fault.at)
                .filter(|s| s.at <= fault.at + FAULT_WINDOW_AFTER)
                .count();
            lines.push(format!(
                "{} at {:.3} s (command took {:.0} ms){}; {} failed requests in the next {} s",
                fault.what,
                fault.at.as_secs_f64(),
                ms(fault.took),
                match &fault.error {
                    Some(error) => format!(", FAILED: {error}"),
                    None => String::new(),
                },
                failed_after,
                FAULT_WINDOW_AFTER.as_secs()
            ));
            for (offset, sample) in &slowest {
                lines.push(format!(
                    "    {:>+9.0} ms  {:<6} {:<5} {:>9.2} ms{}",
                    offset,
                    sample.node,
                    sample.op.name(),
                    ms(sample.latency),
                    if sample.error.is_some() {
                        "  (failed)"
                    } else {
                        ""
                    }
                ));
            }
            fault_json.push(json!({
                "fault": fault.what,
                "at_ms": ms(fault.at),
                "command_ms": ms(fault.took),
                "error": fault.error,
                "failed_requests_within_10s": failed_after,
                "slowest_replies": slowest.iter().map(|(offset, s)| json!({
                    "offset_ms": round(*offset),
                    "node": s.node,
                    "op": s.op.name(),
                    "latency_ms": ms(s.latency),
                    "error": s.error,
                })).collect::<Vec<_>>(),
            }));
        }
        self.section(
            "slowest replies around each fault (sent at offset from the fault)",
            lines,
        );
        self.detail("faults", Value::Array(fault_json));
        failed_count
    }

    /// Prints the human report on stdout.
    pub fn print(&self) {
        let mut out = String::new();
        let passed = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "\n== meshkv test {}: {passed} in {:.1} s (seed {}) ==",
            self.suite,
            self.elapsed.as_secs_f64(),
            self.seed
        );
        let width = self
            .figures
            .iter()
            .map(|(_, label, _)| label.len())
            .max()
            .unwrap_or(0);
        for (_, label, value) in &self.figures {
            let shown = match value {
                Value::String(text) => text.clone(),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "  {label:<width$}  {shown}");
        }
        for (title, lines) in &self.sections {
            let _ = writeln!(out, "\n  {title}:");
            for line in lines.iter().take(TEXT_LIST_LIMIT) {
                let _ = writeln!(out, "    {line}");
            }
            if lines.len() > TEXT_LIST_LIMIT {
                let _ = writeln!(
                    out,
                    "    ... and {} more (see --json)",
                    lines.len() - TEXT_LIST_LIMIT
                );
            }
        }
        let _ = writeln!(out, "\n  checks:");
        for check in &self.checks {
            let _ = writeln!(
                out,
                "    [{}] {}: {}",
                if check.ok { " ok " } else { "FAIL" },
                check.what,
                check.detail
            );
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// The JSON document of the report.
    pub fn to_json(&self) -> Value {
        let mut document = Map::new();
        document.insert("suite".into(), json!(self.suite));
        document.insert("passed".into(), json!(self.passed()));
        document.insert("seed".into(), json!(self.seed));
        document.insert("elapsed_s".into(), json!(round(self.elapsed.as_secs_f64())));
        let mut figures = Map::new();
        for (key, _, value) in &self.figures {
            figures.insert(key.clone(), value.clone());
        }
        document.insert("figures".into(), Value::Object(figures));
        document.insert(
            "checks".into(),
            Value::Array(
                self.checks
                    .iter()
                    .map(|c| json!({"check": c.what, "ok": c.ok, "detail": c.detail}))
                    .collect(),
            ),
        );
        for (key, value) in &self.details {
            document.insert(key.clone(), value.clone());
        }
        Value::Object(document)
    }
}

/// The slowest replies to requests sent around `fault_at`, with their offset in ms.
fn slowest_around(samples: &[Sample], fault_at: Duration, count: usize) -> Vec<(f64, &Sample)> {
    let from = fault_at.saturating_sub(FAULT_WINDOW_BEFORE);
    let to = fault_at + FAULT_WINDOW_AFTER;
    let mut around: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .collect();
    around.sort_by_key(|s| std::cmp::Reverse(s.latency));
    around
        .into_iter()
        .take(count)
        .map(|s| {
            let offset = s.at.as_secs_f64() * 1000.0 - fault_at.as_secs_f64() * 1000.0;
            (offset, s)
        })
        .collect()
}

/// Prints a line on stderr, above the progress line if there is one.
pub fn say(message: &str) {
    let mut stderr = std::io::stderr().lock();
    if std::io::stderr().is_terminal() {
        let _ = write!(stderr, "\r\x1b[2K");
    }
    let _ = writeln!(stderr, "{message}");
}

/// A progress line on stderr: `\r`-updated on a terminal, a plain line every few
/// seconds otherwise.
pub struct Progress {
    done: Arc<AtomicU64>,
    phase: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts the line: `label`, `total` units of work.
    pub fn start(label: &str, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let phase = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let terminal = std::io::stderr().is_terminal();
        let ticker = {
            let (done, phase, stop, label) =
                (done.clone(), phase.clone(), stop.clone(), label.to_owned());
            tokio::spawn(async move {
                let started = Instant::now();
                let every = if terminal {
                    Duration::from_millis(250)
                } else {
                    Duration::from_secs(5)
                };
                // Bounded: the owner stops it; a day of ticks is the hard limit.
                for _ in 0..(86_400_000 / every.as_millis() as u64) {
                    tokio::time::sleep(every).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let count = done.load(Ordering::Relaxed);
                    let elapsed = started.elapsed().as_secs_f64().max(0.001);
                    let phase = phase.lock().map(|p| p.clone()).unwrap_or_default();
                    let line = format!(
                        "{label}: {count}/{total} ({:.0}%), {:.0}/s, {:.0} s{}{}",
                        count as f64 * 100.0 / total.max(1) as f64,
                        count as f64 / elapsed,
                        elapsed,
                        if phase.is_empty() { "" } else { ", " },
                        phase
                    );
                    let mut stderr = std::io::stderr().lock();
                    if terminal {
                        let _ = write!(stderr, "\r\x1b[2K{line}");
                        let _ = stderr.flush();
                    } else {
                        let _ = writeln!(stderr, "{line}");
                    }
                }
            })
        };
        Self {
            done,
            phase,
            stop,
            ticker: Some(ticker),
        }
    }

    /// The shared counter of completed work.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// One more unit done.
    pub fn inc(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Shows what is going on (e.g. `partitioned`).
    pub fn phase(&self, text: &str) {
        if let Ok(mut phase) = self.phase.lock() {
            *phase = text.to_owned();
        }
    }

    /// Stops the line.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            let _ = ticker.await;
        }
        if std::io::stderr().is_terminal() {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, latency_ms: u64, error: bool) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            node: "n1".into(),
            op: Op::Put,
            latency: Duration::from_millis(latency_ms),
            error: error.then(|| "boom".to_owned()),
        }
    }

    #[test]
    fn percentiles_ignore_failed_requests() {
        let mut samples: Vec<Sample> = (1..=100).map(|i| sample(i, i, false)).collect();
        samples.push(sample(0, 10_000, true));
        let latency = Latency::of(&samples);
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.max_ms, 100.0);
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    #[test]
    fn the_slowest_replies_around_a_fault_are_listed_with_offsets() {
        let samples = vec![
            sample(100, 1, false),
            sample(4_900, 3, false),
            sample(5_100, 500, false),
            sample(20_000, 900, false),
        ];
        let slowest = slowest_around(&samples, Duration::from_secs(5), 2);
        assert_eq!(slowest.len(), 2);
        assert_eq!(slowest[0].0, 100.0);
        assert_eq!(slowest[0].1.latency, Duration::from_millis(500));
        assert_eq!(slowest[1].0, -100.0);
    }

    #[test]
    fn a_report_fails_when_a_check_fails() {
        let mut report = SuiteReport::new("x", 1);
        report.check("a", true, "");
        assert!(report.passed());
        report.check("b", false, "no");
        assert!(!report.passed());
        report.figure("ops_per_s", "ops/s", 12.5);
        let json = report.to_json();
        assert_eq!(json["figures"]["ops_per_s"], 12.5);
        assert_eq!(json["passed"], false);
    }
}
