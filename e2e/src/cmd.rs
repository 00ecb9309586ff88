//! Running commands inside namespaces, long-running processes with recorded PIDs, and polling with deadlines.
//!
//! Every command of the lab goes through [`run`] / [`try_run`] so that a failure always names the namespace,
//! the command line and the tool's stderr. Long-running processes are [`ProcessGuard`]s: their PID (and the
//! process start time, so a recycled PID is never killed) is recorded in a file under the lab's run directory,
//! and the guard stops them with SIGTERM, then SIGKILL, when it is dropped. `e2e cleanup` and the stale-lab
//! reaper use the same records.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Namespace label used in errors for commands that run in the root namespace.
pub const ROOT_NS: &str = "root";

/// A command: optional namespace (full name), argv, optional stdin bytes and extra environment.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    ns: Option<String>,
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, String)>,
}

impl Cmd {
    /// `argv` run in the root namespace.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Cmd {
            argv: argv.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            ..Cmd::default()
        }
    }

    /// `argv` run through `ip netns exec <ns>`.
    pub fn in_ns<I, S>(ns: &str, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Cmd {
            ns: Some(ns.to_owned()),
            ..Cmd::new(argv)
        }
    }

    /// Feeds `data` to the command's stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.to_owned(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// The namespace label used in errors.
    pub fn ns_label(&self) -> &str {
        self.ns.as_deref().unwrap_or(ROOT_NS)
    }

    /// The command line as the user would type it (without the `ip netns exec` wrapper).
    pub fn display(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut parts = env;
        parts.extend(self.argv.iter().cloned());
        parts.join(" ")
    }

    fn command(&self) -> Result<Command> {
        let (prog, args): (&str, Vec<&str>) = match &self.ns {
            Some(ns) => {
                let mut a = vec!["netns", "exec", ns.as_str()];
                a.extend(self.argv.iter().map(String::as_str));
                ("ip", a)
            }
            None => {
                let (first, rest) = self
                    .argv
                    .split_first()
                    .ok_or_else(|| Error::Usage("empty command".into()))?;
                (first.as_str(), rest.iter().map(String::as_str).collect())
            }
        };
        let mut c = Command::new(prog);
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        Ok(c)
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            let tool = if self.ns.is_some() {
                "ip".to_owned()
            } else {
                self.argv.first().cloned().unwrap_or_default()
            };
            return Error::MissingTool {
                tool,
                why: format!("to run `{}`", self.display()),
            };
        }
        Error::Spawn {
            ns: self.ns_label().to_owned(),
            cmd: self.display(),
            source: e,
        }
    }

    /// Runs to completion and returns the output whatever the exit status.
    pub fn output(&self) -> Result<Output> {
        let mut c = self.command()?;
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| self.spawn_error(e))?;
        if let (Some(data), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            // A command that exits early closes its stdin; the error then is its exit status, not EPIPE.
            let _ = pipe.write_all(data);
        }
        let out = child.wait_with_output().map_err(|e| self.spawn_error(e))?;
        if let Some(tool) = missing_in_ns(&out) {
            return Err(Error::MissingTool {
                tool,
                why: format!("[{}] to run `{}`", self.ns_label(), self.display()),
            });
        }
        Ok(out)
    }

    /// Runs to completion; a non-zero exit is an [`Error::Command`] carrying stderr.
    pub fn run(&self) -> Result<Output> {
        let out = self.output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(&out))
        }
    }

    /// Runs and returns stdout as text.
    pub fn stdout(&self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run()?.stdout).into_owned())
    }

    /// The error for an unsuccessful `out`.
    pub fn failed(&self, out: &Output) -> Error {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Error::Command {
            ns: self.ns_label().to_owned(),
            cmd: self.display(),
            status: out.status.to_string(),
            stderr: text,
        }
    }
}

/// `ip netns exec` reports an executable it cannot find as `exec of "X" failed: No such file or directory`.
fn missing_in_ns(out: &Output) -> Option<String> {
    if out.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let rest = err.split("exec of \"").nth(1)?;
    let (tool, tail) = rest.split_once('"')?;
    tail.contains("No such file or directory").then(|| tool.to_owned())
}

/// Runs `argv` in namespace `ns` (full name; `None` = root namespace); non-zero exit is an error.
pub fn run(ns: Option<&str>, argv: &[&str]) -> Result<Output> {
    match ns {
        Some(ns) => Cmd::in_ns(ns, argv).run(),
        None => Cmd::new(argv).run(),
    }
}

/// Like [`run`] but returns the output whatever the exit status.
pub fn try_run(ns: Option<&str>, argv: &[&str]) -> Result<Output> {
    match ns {
        Some(ns) => Cmd::in_ns(ns, argv).output(),
        None => Cmd::new(argv).output(),
    }
}

/// Runs `ip -n <ns> -batch -` with `lines` on stdin (one process instead of one per command, which keeps lab
/// bring-up fast). On failure the error names the failing line: `ip` reports it as `Command failed -:N`.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut argv = vec!["ip".to_owned()];
    if let Some(ns) = ns {
        argv.extend(["-n".to_owned(), ns.to_owned()]);
    }
    argv.extend(["-batch".to_owned(), "-".to_owned()]);
    let mut text = lines.join("\n");
    text.push('\n');
    let cmd = Cmd::new(&argv).stdin(text.into_bytes());
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    // "Command failed -:3" -> name line 3.
    let line_no = stderr
        .rsplit("Command failed -:")
        .next()
        .and_then(|s| s.trim().parse::<usize>().ok());
    let failing = line_no
        .and_then(|n| lines.get(n.saturating_sub(1)))
        .map(|l| format!("ip {}{l}", ns.map(|n| format!("-n {n} ")).unwrap_or_default()))
        .unwrap_or_else(|| format!("ip -batch ({} lines)", lines.len()));
    Err(Error::Command {
        ns: ns.unwrap_or(ROOT_NS).to_owned(),
        cmd: failing,
        status: out.status.to_string(),
        stderr,
    })
}

/// Checks that every tool is on PATH (or, for absolute paths, exists). A missing one is an error that says
/// to run scripts/setup.sh; the lab never skips silently.
pub fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    for (tool, why) in tools {
        if which(tool).is_none() {
            return Err(Error::MissingTool {
                tool: (*tool).to_owned(),
                why: (*why).to_owned(),
            });
        }
    }
    Ok(())
}

/// The path of an executable, searching PATH (plus the sbin directories, which a non-login root shell may
/// lack) for bare names.
pub fn which(tool: &str) -> Option<PathBuf> {
    let p = Path::new(tool);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|c| c.is_file())
}

/// Polls `f` every `every` until it returns `Some`, or fails with [`Error::Timeout`] after `timeout`. `f`'s
/// own errors end the wait at once. This replaces fixed sleeps wherever a condition can be observed.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
            });
        }
        thread::sleep(every);
    }
}

// === recorded processes ===

/// The kernel's start time of `pid` (field 22 of /proc/PID/stat, clock ticks since boot); `None` when the
/// process does not exist. Together with the PID it identifies a process even after PID reuse.
pub fn proc_starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')' are plain.
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace();
    // after ')' come field 3 (state) ... field 22 (starttime) = the 20th item.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// A process record: PID, start time, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidRecord {
    /// Process id.
    pub pid: u32,
    /// Start time (see [`proc_starttime`]).
    pub starttime: u64,
    /// Namespace it runs in.
    pub ns: String,
    /// Human label.
    pub name: String,
}

impl PidRecord {
    /// The record as one line of text.
    pub fn line(&self) -> String {
        format!("{} {} {} {}\n", self.pid, self.starttime, self.ns, self.name)
    }

    /// Parses a record line (`pid starttime ns name`).
    pub fn parse(text: &str) -> Option<PidRecord> {
        let mut it = text.split_whitespace();
        Some(PidRecord {
            pid: it.next()?.parse().ok()?,
            starttime: it.next()?.parse().ok()?,
            ns: it.next().unwrap_or("").to_owned(),
            name: it.collect::<Vec<_>>().join(" "),
        })
    }

    /// Whether the recorded process is still the one running under that PID.
    pub fn alive(&self) -> bool {
        proc_starttime(self.pid) == Some(self.starttime)
    }

    /// SIGTERM, wait up to `grace`, SIGKILL. For processes that are not our children (records of an earlier
    /// run), so it watches /proc instead of waiting.
    pub fn terminate(&self, grace: Duration) -> bool {
        if !self.alive() {
            return false;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        if self.alive() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        true
    }
}

/// Reads every record in `dir` (files named after the PID).
pub fn read_pid_records(dir: &Path) -> Vec<(PathBuf, PidRecord)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let text = fs::read_to_string(&p).ok()?;
            Some((p, PidRecord::parse(&text)?))
        })
        .collect()
}

/// A long-running process in a namespace, stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    ns: String,
    cmd: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    pidfile: Option<PathBuf>,
}

impl ProcessGuard {
    /// Starts `cmd` with stdout and stderr appended to `log`, records its PID in `pid_dir` (if given).
    ///
    /// With `ip netns exec`, `ip` joins the namespace and then execs the command, so the PID we get is the
    /// command's own PID (and for `sh -c "... && exec X"` it is X's).
    pub fn spawn(name: &str, cmd: &Cmd, log: &Path, pid_dir: Option<&Path>) -> Result<ProcessGuard> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone().ctx(|| format!("opening log {}", log.display()))?;
        let mut c = cmd.command()?;
        c.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = c.spawn().map_err(|e| cmd.spawn_error(e))?;
        let pid = child.id();
        let mut g = ProcessGuard {
            name: name.to_owned(),
            ns: cmd.ns_label().to_owned(),
            cmd: cmd.display(),
            child: Some(child),
            pid,
            log: log.to_path_buf(),
            pidfile: None,
        };
        if let Some(dir) = pid_dir {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
            let rec = PidRecord {
                pid,
                // A process that already died has no start time; 0 never matches, so it is never killed.
                starttime: proc_starttime(pid).unwrap_or(0),
                ns: g.ns.clone(),
                name: name.to_owned(),
            };
            let path = dir.join(pid.to_string());
            fs::write(&path, rec.line()).ctx(|| format!("writing {}", path.display()))?;
            g.pidfile = Some(path);
        }
        Ok(g)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace the process runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Its log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// The last `n` bytes of the log, for error messages.
    pub fn log_tail(&self, n: u64) -> String {
        log_tail(&self.log, n)
    }

    /// Polls the log until it contains `needle`. Fails early, with the log's tail, if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("`{needle}` in the log of {} [{}]", self.name, self.ns);
        poll_until(&what, timeout, Duration::from_millis(5), || {
            if fs::read_to_string(&self.log).is_ok_and(|t| t.contains(needle)) {
                return Ok(Some(()));
            }
            if let Some(st) = self.exit_status() {
                return Err(Error::Command {
                    ns: self.ns.clone(),
                    cmd: self.cmd.clone(),
                    status: st.to_string(),
                    stderr: self.log_tail(2000),
                });
            }
            Ok(None)
        })
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid as i32), sig).map_err(|e| {
            Error::io(
                format!("[{}] kill -{sig} {} ({})", self.ns, self.pid, self.name),
                e.into(),
            )
        })
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; reaps the child and removes the PID record.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let status = self.child.take().map(|mut child| {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(st)) = child.try_wait() {
                    return Some(st);
                }
                thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            child.wait().ok()
        });
        if let Some(p) = self.pidfile.take() {
            let _ = fs::remove_file(p);
        }
        status.flatten()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` bytes of a file as text (empty when unreadable).
pub fn log_tail(path: &Path, n: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_record_roundtrip() {
        let r = PidRecord {
            pid: 42,
            starttime: 1234,
            ns: "mlab1-cn".into(),
            name: "echo server".into(),
        };
        assert_eq!(PidRecord::parse(&r.line()), Some(r));
    }

    #[test]
    fn own_starttime_is_readable() {
        assert!(proc_starttime(std::process::id()).is_some());
    }

    #[test]
    fn missing_exec_in_ns_is_detected() {
        use std::os::unix::process::ExitStatusExt;
        let out = Output {
            status: ExitStatus::from_raw(255 << 8),
            stdout: Vec::new(),
            stderr: b"exec of \"swanctl\" failed: No such file or directory\n".to_vec(),
        };
        assert_eq!(missing_in_ns(&out).as_deref(), Some("swanctl"));
    }

    #[test]
    fn poll_until_times_out() {
        let r: Result<()> = poll_until("never", Duration::from_millis(20), Duration::from_millis(5), || {
            Ok(None)
        });
        assert!(matches!(r, Err(Error::Timeout { .. })));
    }
}
