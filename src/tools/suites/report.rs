//! Measurements, verdicts and reports of the suites.
//!
//! Owns: request samples ([`Sample`], [`Recorder`]), fault events ([`FaultEvent`]),
//! latency figures, the availability section (failed requests, slowest replies around
//! each fault), what a run expects of the store ([`Expect`]) and which expectation each
//! check belongs to ([`Rule`]), the human report (details, checks, a final table of
//! figures) and the JSON document ([`SuiteReport`]).
//! Knows nothing of: what a suite does; suites feed it figures, checks and samples.
//!
//! A suite *measures* the same figures under every `--expect`; the mode only decides
//! which of its checks fail the run. A check that does not hold under a mode that does
//! not promise it is `reported`: a property of the store, shown but not failed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::ValueEnum;
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

/// What a run expects of the store (`--expect`): which checks fail it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Expect {
    /// meshkv's promises: every node accepts writes in a partition, the sides may
    /// diverge, the later write wins after the heal, no acknowledged write is lost.
    #[default]
    Ap,
    /// Strong consistency: a minority may refuse (5xx); no read is ever stale and no
    /// acknowledged write is lost.
    Cp,
    /// Measure and report only: fail only when the suite itself could not run.
    Report,
}

impl Expect {
    /// Its name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Expect::Ap => "ap",
            Expect::Cp => "cp",
            Expect::Report => "report",
        }
    }
}

/// Which expectations a check belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The suite itself could run: a fault command worked and took effect, the cluster
    /// answered. Binds under every mode, `report` included.
    SuiteRan,
    /// Promised by `ap` and `cp` alike (a healthy cluster serves every request and
    /// reads fresh, nothing acknowledged is lost, the nodes converge).
    ApAndCp,
    /// Promised by `ap` only (available on both sides of a partition, the later write
    /// wins after the heal).
    Ap,
    /// Promised by `cp` only (no stale read, no lost or forked write, even while
    /// partitioned).
    Cp,
}

impl Rule {
    /// Whether a run under `expect` fails when this check does not hold.
    pub fn binds(self, expect: Expect) -> bool {
        match self {
            Rule::SuiteRan => true,
            Rule::ApAndCp => expect != Expect::Report,
            Rule::Ap => expect == Expect::Ap,
            Rule::Cp => expect == Expect::Cp,
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Rule::SuiteRan => "ran",
            Rule::ApAndCp => "ap+cp",
            Rule::Ap => "ap",
            Rule::Cp => "cp",
        }
    }
}

/// What a check means for the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It held.
    Held,
    /// It did not hold and the mode promises it: the run fails.
    Failed,
    /// It did not hold, but the mode does not promise it: a figure, not a failure.
    Reported,
}

impl Verdict {
    /// Its name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Held => "held",
            Verdict::Failed => "failed",
            Verdict::Reported => "reported",
        }
    }

    /// Its tag in the human report.
    fn tag(self) -> &'static str {
        match self {
            Verdict::Held => "[ ok ]",
            Verdict::Failed => "[FAIL]",
            Verdict::Reported => "[note]",
        }
    }
}

/// A rule of the suite and whether it held.
#[derive(Clone, Debug)]
pub struct Check {
    /// What must hold.
    pub what: String,
    /// Which expectations it belongs to.
    pub rule: Rule,
    /// Whether it held.
    pub held: bool,
    /// What was observed.
    pub detail: String,
}

/// The part of the figure table a figure belongs to (the seed's properties).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// What the suite did: sizes, keys, rates.
    Workload,
    /// Failed requests and how long replies took, around faults too.
    Availability,
    /// Violations, stale reads, lost acknowledged writes, by phase.
    Consistency,
    /// Divergence, time to converge, final values.
    Convergence,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Workload => "workload",
            Group::Availability => "availability",
            Group::Consistency => "consistency",
            Group::Convergence => "convergence",
        }
    }
}

/// One figure: JSON key, table label, value.
#[derive(Clone, Debug)]
struct Figure {
    group: Group,
    key: String,
    label: String,
    value: Value,
}

/// The result of one suite.
#[derive(Debug)]
pub struct SuiteReport {
    /// The suite's name.
    pub suite: String,
    /// The seed of its random choices.
    pub seed: u64,
    /// What the run expects of the store.
    pub expect: Expect,
    /// How long it ran.
    pub elapsed: Duration,
    /// Figures in display order (within their group).
    figures: Vec<Figure>,
    /// Rules and whether they held.
    pub checks: Vec<Check>,
    /// Readable details: title and lines.
    sections: Vec<(String, Vec<String>)>,
    /// Extra JSON members (lists of violations, failed requests...).
    details: Map<String, Value>,
}

impl SuiteReport {
    /// An empty report.
    pub fn new(suite: &str, seed: u64, expect: Expect) -> Self {
        Self {
            suite: suite.to_owned(),
            seed,
            expect,
            elapsed: Duration::ZERO,
            figures: Vec::new(),
            checks: Vec::new(),
            sections: Vec::new(),
            details: Map::new(),
        }
    }

    /// What `check` means under this run's expectation.
    pub fn verdict(&self, check: &Check) -> Verdict {
        if check.held {
            Verdict::Held
        } else if check.rule.binds(self.expect) {
            Verdict::Failed
        } else {
            Verdict::Reported
        }
    }

    /// True when no check failed under this run's expectation.
    pub fn passed(&self) -> bool {
        self.checks
            .iter()
            .all(|check| self.verdict(check) != Verdict::Failed)
    }

    /// Adds a figure (`key` in JSON, `label` in the table).
    pub fn figure(&mut self, group: Group, key: &str, label: &str, value: impl Into<Value>) {
        self.figures.push(Figure {
            group,
            key: key.to_owned(),
            label: label.to_owned(),
            value: value.into(),
        });
    }

    /// The value of figure `key`, if the suite reported it.
    pub fn figure_value(&self, key: &str) -> Option<&Value> {
        self.figures
            .iter()
            .find(|figure| figure.key == key)
            .map(|figure| &figure.value)
    }

    /// Adds a check.
    pub fn check(&mut self, rule: Rule, what: &str, held: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            what: what.to_owned(),
            rule,
            held,
            detail: detail.into(),
        });
    }

    /// Puts `checks` first (those made before the suite started).
    pub fn with_first_checks(mut self, checks: Vec<Check>) -> Self {
        let rest = std::mem::take(&mut self.checks);
        self.checks = checks;
        self.checks.extend(rest);
        self
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
        let group = Group::Availability;
        self.figure(
            group,
            &format!("{prefix}requests"),
            &format!("{label}requests"),
            samples.len(),
        );
        self.figure(
            group,
            &format!("{prefix}errors"),
            &format!("{label}errors"),
            errors,
        );
        self.figure(
            group,
            &format!("{prefix}latency_p50_ms"),
            &format!("{label}latency p50 (ms)"),
            round(latency.p50_ms),
        );
        self.figure(
            group,
            &format!("{prefix}latency_p99_ms"),
            &format!("{label}latency p99 (ms)"),
            round(latency.p99_ms),
        );
        self.figure(
            group,
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
        self.figure(
            Group::Availability,
            "failed_requests",
            "failed requests",
            failed_count,
        );
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
        let mut slowest_overall: Option<f64> = None;
        for fault in faults {
            let slowest = slowest_around(samples, fault.at, SLOWEST_AROUND_FAULT);
            if let Some((_, sample)) = slowest.first() {
                let latency = ms(sample.latency);
                slowest_overall = Some(slowest_overall.map_or(latency, |s| s.max(latency)));
            }
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
        if !faults.is_empty() {
            self.figure(
                Group::Availability,
                "slowest_reply_around_faults_ms",
                "slowest reply from 1 s before to 10 s after a fault (ms)",
                slowest_overall.map_or(Value::Null, |v| json!(v)),
            );
        }
        self.section(
            "slowest replies around each fault (sent at offset from the fault)",
            lines,
        );
        self.detail("faults", Value::Array(fault_json));
        failed_count
    }

    /// Prints the human report on stdout: details, checks, then the table of figures.
    pub fn print(&self) {
        let mut out = String::new();
        let passed = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "\n== meshkv test {} (--expect {}): {passed} in {:.1} s (seed {}) ==",
            self.suite,
            self.expect.name(),
            self.elapsed.as_secs_f64(),
            self.seed
        );
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
        let _ = writeln!(
            out,
            "\n  checks ([FAIL] fails --expect {}; [note] is a figure under it):",
            self.expect.name()
        );
        for check in &self.checks {
            let _ = writeln!(
                out,
                "    {} {:<5}  {}: {}",
                self.verdict(check).tag(),
                check.rule.name(),
                check.what,
                check.detail
            );
        }
        let _ = writeln!(out, "\n  figures:");
        out.push_str(&self.figure_table());
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// The figures as a table: group, label, value.
    fn figure_table(&self) -> String {
        let mut figures: Vec<&Figure> = self.figures.iter().collect();
        // Stable: figures keep their order within a group.
        figures.sort_by_key(|figure| figure.group);
        let width = figures.iter().map(|f| f.label.len()).max().unwrap_or(0);
        let mut out = String::new();
        let mut last_group = None;
        for figure in figures {
            let group = if last_group == Some(figure.group) {
                ""
            } else {
                figure.group.name()
            };
            last_group = Some(figure.group);
            let _ = writeln!(
                out,
                "    {group:<12}  {:<width$}  {}",
                figure.label,
                shown(&figure.value)
            );
        }
        out
    }

    /// The JSON document of the report.
    pub fn to_json(&self) -> Value {
        let mut document = Map::new();
        document.insert("suite".into(), json!(self.suite));
        document.insert("expect".into(), json!(self.expect.name()));
        document.insert("passed".into(), json!(self.passed()));
        document.insert("seed".into(), json!(self.seed));
        document.insert("elapsed_s".into(), json!(round(self.elapsed.as_secs_f64())));
        let mut figures = Map::new();
        for figure in &self.figures {
            figures.insert(figure.key.clone(), figure.value.clone());
        }
        document.insert("figures".into(), Value::Object(figures));
        document.insert(
            "checks".into(),
            Value::Array(
                self.checks
                    .iter()
                    .map(|c| {
                        json!({
                            "check": c.what,
                            "rule": c.rule.name(),
                            "held": c.held,
                            "verdict": self.verdict(c).name(),
                            "detail": c.detail,
                        })
                    })
                    .collect(),
            ),
        );
        for (key, value) in &self.details {
            document.insert(key.clone(), value.clone());
        }
        Value::Object(document)
    }
}

/// A figure's value as shown in a table (`-` for none).
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The columns of the final table of `meshkv test all`: heading and the figures that
/// fill it, first found wins.
const SUMMARY_COLUMNS: &[(&str, &[&str])] = &[
    ("failed req.", &["failed_requests"]),
    ("violations", &["violations"]),
    ("stale reads", &["stale_reads"]),
    ("lost writes", &["lost_values"]),
    ("diverged", &["diverged"]),
    // After the last write (stress-partition writes on after its heal), after the
    // restart (failure), after the heal (partition).
    (
        "converged (ms)",
        &[
            "rejoined_converged_after_ms",
            "converged_after_ms",
            "converged_after_heal_ms",
        ],
    ),
    ("ops/s", &["ops_per_s", "writes_per_s"]),
];

/// The final table of a run of several suites: one row per suite, its verdict and
/// the headline figures of the seed (availability, consistency, divergence,
/// convergence).
pub fn summary_table(reports: &[SuiteReport]) -> String {
    let mut rows: Vec<Vec<String>> = vec![std::iter::once("suite")
        .chain(std::iter::once("verdict"))
        .chain(std::iter::once("failed checks"))
        .chain(SUMMARY_COLUMNS.iter().map(|(heading, _)| *heading))
        .map(str::to_owned)
        .collect()];
    for report in reports {
        let failed = report
            .checks
            .iter()
            .filter(|c| report.verdict(c) == Verdict::Failed)
            .count();
        let reported = report
            .checks
            .iter()
            .filter(|c| report.verdict(c) == Verdict::Reported)
            .count();
        let mut row = vec![
            report.suite.clone(),
            if report.passed() { "passed" } else { "FAILED" }.to_owned(),
            if reported > 0 {
                format!("{failed} (+{reported} notes)")
            } else {
                failed.to_string()
            },
        ];
        for (_, keys) in SUMMARY_COLUMNS {
            let value = keys.iter().find_map(|key| report.figure_value(key));
            row.push(value.map_or_else(|| "-".to_owned(), shown));
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    out
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
        let mut report = SuiteReport::new("x", 1, Expect::Ap);
        report.check(Rule::ApAndCp, "a", true, "");
        assert!(report.passed());
        report.check(Rule::ApAndCp, "b", false, "no");
        assert!(!report.passed());
        report.figure(Group::Workload, "ops_per_s", "ops/s", 12.5);
        let json = report.to_json();
        assert_eq!(json["figures"]["ops_per_s"], 12.5);
        assert_eq!(json["passed"], false);
        assert_eq!(json["expect"], "ap");
        assert_eq!(json["checks"][1]["verdict"], "failed");
        assert_eq!(json["checks"][1]["rule"], "ap+cp");
    }

    #[test]
    fn each_mode_fails_only_on_the_rules_it_promises() {
        let table = [
            // rule, [binds under ap, cp, report]
            (Rule::SuiteRan, [true, true, true]),
            (Rule::ApAndCp, [true, true, false]),
            (Rule::Ap, [true, false, false]),
            (Rule::Cp, [false, true, false]),
        ];
        for (rule, binds) in table {
            for (expect, binds) in [Expect::Ap, Expect::Cp, Expect::Report]
                .into_iter()
                .zip(binds)
            {
                let mut report = SuiteReport::new("x", 1, expect);
                report.check(rule, "it", false, "no");
                assert_eq!(report.passed(), !binds, "{rule:?} under {expect:?}");
                let verdict = report.verdict(&report.checks[0]);
                let expected = if binds {
                    Verdict::Failed
                } else {
                    Verdict::Reported
                };
                assert_eq!(verdict, expected, "{rule:?} under {expect:?}");
                report.checks[0].held = true;
                assert!(report.passed());
                assert_eq!(report.verdict(&report.checks[0]), Verdict::Held);
            }
        }
    }

    #[test]
    fn the_summary_table_shows_verdicts_and_headline_figures() {
        let mut ap = SuiteReport::new("partition", 1, Expect::Report);
        ap.check(Rule::Ap, "both sides accepted their write", false, "503");
        ap.figure(Group::Convergence, "diverged", "diverged", false);
        ap.figure(Group::Availability, "failed_requests", "failed", 2);
        let table = summary_table(&[ap]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(
            lines[1].contains("passed") && lines[1].contains("0 (+1 notes)"),
            "{table}"
        );
        assert!(
            lines[1].contains("false") && lines[1].contains(" 2 "),
            "{table}"
        );
    }
}
