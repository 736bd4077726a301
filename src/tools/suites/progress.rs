//! What the suites show while they run: one progress bar per phase on a terminal
//! (indicatif), plain lines otherwise, and narration lines ([`say`]) above the bars.
//!
//! Owns: [`Phase`] (a named stretch of work with a count and a rate: `writes while
//! partitioned`, `waiting for convergence`) and the choice between bars and lines.
//! Knows nothing of: what the work is; suites start phases and count units.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Interval between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(5);
/// Redraw interval of a bar, so that spinners and rates move while a request hangs.
const TICK_INTERVAL: Duration = Duration::from_millis(120);

/// The bars' shared screen region, when both stdout and stderr are terminals: the
/// report goes to stdout and the bars to stderr, so a run piped into a file or `tee`
/// gets plain lines instead of cursor movements.
fn bars() -> Option<&'static MultiProgress> {
    static BARS: OnceLock<Option<MultiProgress>> = OnceLock::new();
    BARS.get_or_init(|| {
        (std::io::stdout().is_terminal() && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
    })
    .as_ref()
}

/// Prints a line on stderr, above the progress bar if there is one.
pub fn say(message: &str) {
    match bars() {
        Some(bars) => {
            // A bar region that cannot print falls back to a plain line.
            if bars.println(message).is_err() {
                eprintln!("{message}");
            }
        }
        None => eprintln!("{message}"),
    }
}

/// One phase of a suite: a bar (or a spinner when the amount of work is unknown) on a
/// terminal; otherwise a line when it starts, one every 5 s, one when
/// it ends. Ends when dropped.
pub struct Phase {
    bar: ProgressBar,
    label: String,
    unit: &'static str,
    /// Whether the amount of work was known (a rate then means something).
    bounded: bool,
    started: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Phase {
    /// Starts phase `name` of `suite`: `total` units of `unit` (`None`: unknown).
    pub fn start(suite: &str, name: &str, total: Option<u64>, unit: &'static str) -> Self {
        let label = format!("{suite} [{name}]");
        let bar = match bars() {
            Some(region) => {
                let bar = match total {
                    Some(total) => ProgressBar::new(total).with_style(bar_style()),
                    None => ProgressBar::new_spinner().with_style(spinner_style()),
                };
                let bar = region.add(bar.with_prefix(label.clone()));
                bar.enable_steady_tick(TICK_INTERVAL);
                bar
            }
            None => {
                let bar = ProgressBar::hidden();
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar
            }
        };
        let ticker = match bars() {
            Some(_) => None,
            None => {
                say(&format!(
                    "{label}: started{}",
                    total.map_or_else(String::new, |t| format!(", {t} {unit}"))
                ));
                Some(spawn_lines(bar.clone(), label.clone(), unit))
            }
        };
        Self {
            bar,
            label,
            unit,
            bounded: total.is_some(),
            started: Instant::now(),
            ticker,
        }
    }

    /// One more unit done.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// The counter, for tasks that count their own units.
    pub fn counter(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Shows what is going on now (e.g. `3 of 40 keys agree`).
    pub fn message(&self, text: &str) {
        self.bar.set_message(text.to_owned());
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let done = self.bar.position();
        let took = self.started.elapsed().as_secs_f64();
        let message = self.bar.message();
        self.bar.finish_and_clear();
        let units = match (done, self.bounded) {
            (0, _) => String::new(),
            (_, true) => format!(
                ", {done} {} ({:.0}/s)",
                self.unit,
                done as f64 / took.max(1e-3)
            ),
            (_, false) => format!(", {done} {}", self.unit),
        };
        let last = if message.is_empty() {
            String::new()
        } else {
            format!("; {message}")
        };
        say(&format!("{}: done in {took:.1} s{units}{last}", self.label));
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} {rate:>7} {elapsed:>4} {msg}")
        .map(|style| {
            style.with_key(
                "rate",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {spinner} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// The plain-line ticker of a phase that has no bar.
fn spawn_lines(bar: ProgressBar, label: String, unit: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        // Bounded: the phase aborts it when it ends; a day of lines is the hard limit.
        for _ in 0..(86_400 / LINE_INTERVAL.as_secs()) {
            tokio::time::sleep(LINE_INTERVAL).await;
            let done = bar.position();
            let elapsed = started.elapsed().as_secs_f64();
            let count = match bar.length() {
                Some(total) => format!(
                    "{done}/{total} {unit} ({:.0}%)",
                    done as f64 * 100.0 / total.max(1) as f64
                ),
                None => format!("{done} {unit}"),
            };
            let message = bar.message();
            say(&format!(
                "{label}: {count}, {:.0}/s, {elapsed:.0} s{}{message}",
                done as f64 / elapsed.max(1e-3),
                if message.is_empty() { "" } else { ", " },
            ));
        }
    })
}
