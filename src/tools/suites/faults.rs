//! Fault injection for the suites: running the caller's fault commands.
//!
//! Owns: [`Faults`] (the kill, restart, partition and heal command templates, their
//! placeholders, `sh -c` with a timeout, and the record of what is currently broken so
//! that an interrupted suite can heal).
//! Knows nothing of: how faults are made; by default the commands call the project's
//! `scripts/nemesis.sh`, but any command with `{node}` / `{groups}` works.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::report::FaultEvent;

/// Longest a fault command may run.
const FAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest stderr excerpt quoted in an error.
const STDERR_EXCERPT: usize = 400;

/// The fault commands of a run.
#[derive(Debug)]
pub struct Faults {
    kill: String,
    restart: String,
    partition: String,
    heal: String,
    env: Vec<(String, String)>,
    start: Instant,
    partitioned: Mutex<bool>,
    events: Mutex<Vec<FaultEvent>>,
}

/// The default command of one action: `scripts/nemesis.sh ACTION ARG`.
fn default_command(action: &str, placeholder: &str) -> String {
    let script = nemesis_script();
    format!("{} {action} {placeholder}", shell_quote(&script))
        .trim_end()
        .to_owned()
}

/// `scripts/nemesis.sh` from the current directory, else next to the binary's
/// `target/<profile>/` directory, else the relative path (which then fails clearly).
fn nemesis_script() -> String {
    let relative = Path::new("scripts/nemesis.sh");
    if relative.is_file() {
        return relative.display().to_string();
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(repo) = exe.ancestors().nth(3) {
            let candidate = repo.join("scripts/nemesis.sh");
            if candidate.is_file() {
                return candidate.display().to_string();
            }
        }
    }
    relative.display().to_string()
}

/// Quotes `text` for `sh` unless it is plainly safe.
pub fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,:=+@".contains(c));
    if safe {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Replaces `{name}` in `template` by `value`, shell-quoted unless the template
/// already quotes the placeholder.
fn substitute(template: &str, name: &str, value: &str) -> String {
    let placeholder = format!("{{{name}}}");
    let quoted_by_template = template.contains(&format!("'{placeholder}'"))
        || template.contains(&format!("\"{placeholder}\""));
    let replacement = if quoted_by_template {
        value.to_owned()
    } else {
        shell_quote(value)
    };
    template.replace(&placeholder, &replacement)
}

/// `n1,n2|n3,n4`.
pub fn groups_text(groups: &[Vec<String>]) -> String {
    groups
        .iter()
        .map(|group| group.join(","))
        .collect::<Vec<_>>()
        .join("|")
}

impl Faults {
    /// The commands given on the command line, or the defaults. The commands run with
    /// `MESHKV_CLUSTER` set to the cluster file and, unless already set,
    /// `MESHKV_RUN_DIR` set to its directory (where `scripts/cluster.sh` keeps PID files).
    pub fn new(
        kill: Option<String>,
        restart: Option<String>,
        partition: Option<String>,
        heal: Option<String>,
        cluster_file: &Path,
        start: Instant,
    ) -> Self {
        let cluster_file: PathBuf =
            std::fs::canonicalize(cluster_file).unwrap_or_else(|_| cluster_file.to_owned());
        let mut env = vec![(
            "MESHKV_CLUSTER".to_owned(),
            cluster_file.display().to_string(),
        )];
        if std::env::var_os("MESHKV_RUN_DIR").is_none() {
            if let Some(dir) = cluster_file.parent() {
                env.push(("MESHKV_RUN_DIR".to_owned(), dir.display().to_string()));
            }
        }
        Self {
            kill: kill.unwrap_or_else(|| default_command("kill", "{node}")),
            restart: restart.unwrap_or_else(|| default_command("restart", "{node}")),
            partition: partition.unwrap_or_else(|| default_command("partition", "{groups}")),
            heal: heal.unwrap_or_else(|| default_command("heal", "")),
            env,
            start,
            partitioned: Mutex::new(false),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Restarts the clock that fault times are relative to (one suite of `all` after another).
    pub fn reset(&mut self, start: Instant) {
        self.start = start;
        if let Ok(mut events) = self.events.lock() {
            events.clear();
        }
    }

    /// The faults run since the last reset.
    pub fn events(&self) -> Vec<FaultEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Kills node `node`.
    pub async fn kill(&self, node: &str) -> Result<(), String> {
        let command = substitute(&self.kill, "node", node);
        self.run(&format!("kill {node}"), &command).await
    }

    /// Starts node `node` again.
    pub async fn restart(&self, node: &str) -> Result<(), String> {
        let command = substitute(&self.restart, "node", node);
        self.run(&format!("restart {node}"), &command).await
    }

    /// Cuts the links between `groups`.
    pub async fn partition(&self, groups: &[Vec<String>]) -> Result<(), String> {
        let text = groups_text(groups);
        let command = substitute(&self.partition, "groups", &text);
        // Marked before running: a command that timed out may have half-worked.
        self.set_partitioned(true);
        self.run(&format!("partition {text}"), &command).await
    }

    /// Restores every link.
    pub async fn heal(&self) -> Result<(), String> {
        let result = self.run("heal", &self.heal.clone()).await;
        if result.is_ok() {
            self.set_partitioned(false);
        }
        result
    }

    /// Whether a partition may be in force.
    pub fn partitioned(&self) -> bool {
        self.partitioned.lock().map(|p| *p).unwrap_or(true)
    }

    fn set_partitioned(&self, value: bool) {
        if let Ok(mut partitioned) = self.partitioned.lock() {
            *partitioned = value;
        }
    }

    /// Runs `command` with `sh -c`, bounded by [`FAULT_TIMEOUT`], and records it.
    async fn run(&self, what: &str, command: &str) -> Result<(), String> {
        let sent = Instant::now();
        let result = run_shell(command, &self.env).await;
        let event = FaultEvent {
            what: what.to_owned(),
            at: sent.saturating_duration_since(self.start),
            took: sent.elapsed(),
            error: result.as_ref().err().cloned(),
        };
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
        result.map_err(|error| format!("the fault command for {what} failed: {error}"))
    }
}

/// Runs one shell command; `Err` carries a sentence with its stderr.
async fn run_shell(command: &str, env: &[(String, String)]) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh");
    child
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        child.env(name, value);
    }
    let child = child
        .spawn()
        .map_err(|error| format!("cannot run `sh -c {command}`: {error}"))?;
    let output = match tokio::time::timeout(FAULT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("`{command}` could not be waited for: {error}")),
        Err(_) => {
            return Err(format!(
                "`{command}` did not finish within {} s",
                FAULT_TIMEOUT.as_secs()
            ))
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let excerpt: String = if stderr.chars().count() > STDERR_EXCERPT {
        let tail: String = stderr
            .chars()
            .rev()
            .take(STDERR_EXCERPT)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("...{tail}")
    } else {
        stderr.to_owned()
    };
    Err(format!(
        "`{command}` exited with {}{}",
        output
            .status
            .code()
            .map_or_else(|| "a signal".to_owned(), |code| format!("status {code}")),
        if excerpt.is_empty() {
            String::new()
        } else {
            format!(": {excerpt}")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted_for_the_shell() {
        assert_eq!(
            substitute("nemesis.sh partition {groups}", "groups", "n1,n2|n3,n4"),
            "nemesis.sh partition 'n1,n2|n3,n4'"
        );
        assert_eq!(
            substitute("x \"{groups}\"", "groups", "n1|n2"),
            "x \"n1|n2\""
        );
        assert_eq!(substitute("kill {node}", "node", "n4"), "kill n4");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            groups_text(&[vec!["n1".into(), "n2".into()], vec!["n3".into()]]),
            "n1,n2|n3"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_stderr() {
        let error = run_shell("echo oops >&2; exit 3", &[]).await.unwrap_err();
        assert!(
            error.contains("status 3") && error.contains("oops"),
            "{error}"
        );
        assert!(run_shell("true", &[]).await.is_ok());
    }
}
