//! Child processes (Envoy, node, chromedriver) that never outlive the test binary.
//!
//! Three mechanisms, because each covers a hole in the others:
//! - `Drop` stops a [`Process`] (its whole process group) when its owner goes away;
//! - an `atexit` hook kills what is left at a normal exit, which matters because a stack shared
//!   through a `static OnceLock` is never dropped;
//! - `PR_SET_PDEATHSIG` kills a child whose parent dies abruptly (Ctrl-C, SIGKILL, abort).
//!   The signal fires when the *thread* that forked the child exits, and test harnesses run each
//!   test on its own short-lived thread, so every child is forked by one long-lived spawner thread.
//!
//! Each child leads its own process group, so chromium below chromedriver is stopped as well.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A running child process, logging to a file, stopped (with its process group) on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    handshake: Mutex<Option<mpsc::Receiver<io::Result<String>>>>,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> Result<Process> {
        Self::start(name, cmd, log, false)
    }

    /// Starts `cmd` with stderr appended to `log`; the first stdout line is kept for
    /// [`Process::wait_for_port`], the rest of stdout goes to `log` too.
    pub fn spawn_with_handshake(name: &str, cmd: Command, log: &Path) -> Result<Process> {
        Self::start(name, cmd, log, true)
    }

    fn start(name: &str, mut cmd: Command, log: &Path, handshake: bool) -> Result<Process> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stdout = if handshake {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(file);
        let program = format!("{:?}", cmd.get_program());
        let mut child =
            spawn_managed(cmd).with_context(|| format!("starting {name} ({program})"))?;
        let handshake = match child.stdout.take() {
            Some(out) if handshake => Some(read_first_line(out, log)?),
            _ => None,
        };
        let handshake = Mutex::new(handshake);
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            handshake,
        })
    }

    /// Waits for the `{"port": N}` line our node programs print once they listen.
    pub fn wait_for_port(&mut self, timeout: Duration) -> Result<u16> {
        let rx = self
            .handshake
            .get_mut()
            .map_err(|_| anyhow!("{}: handshake lock poisoned", self.name))?
            .take()
            .ok_or_else(|| anyhow!("{}: no handshake to wait for", self.name))?;
        let line = match rx.recv_timeout(timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.failure(&format!("reading its stdout: {e}"))),
            Err(_) => return Err(self.failure(&format!("no port announced within {timeout:?}"))),
        };
        let value: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| self.failure(&format!("bad handshake line {line:?}: {e}")))?;
        value
            .get("port")
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| self.failure(&format!("bad handshake line {line:?}")))
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log, lossily decoded.
    pub fn log(&self) -> Result<String> {
        read_lossy(&self.log)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error naming the process, its exit status if it ended, and the tail of its log.
    pub fn failure(&mut self, what: &str) -> anyhow::Error {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!(" (exited: {status})"),
            _ => String::new(),
        };
        anyhow!(
            "{}{status}: {what}\n--- last lines of {} ---\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log, 40)
        )
    }

    /// Stops the process group: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let pid = self.child.id() as libc::pid_t;
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        // Also reaches grandchildren (chromium) that outlived the leader.
        signal_group(pid, libc::SIGKILL);
        let _ = self.child.wait();
        forget_group(pid);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// The last `n` lines of a file, or a note saying why there are none.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("(cannot open {})", path.display());
    };
    let mut tail = VecDeque::with_capacity(n);
    for line in BufReader::new(file).split(b'\n').map_while(|l| l.ok()) {
        if tail.len() == n {
            tail.pop_front();
        }
        tail.push_back(String::from_utf8_lossy(&line).into_owned());
    }
    if tail.is_empty() {
        return "(empty)".to_string();
    }
    Vec::from(tail).join("\n")
}

/// Reads a file, replacing invalid UTF-8.
pub fn read_lossy(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls `probe` every 50 ms until it returns `Some`. An error from `probe` ends the wait at once
/// (the thing waited for died); after `timeout` the error says so.
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("not ready after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `read` every 100 ms until two readings `key` maps alike lie `quiet` apart, and returns the
/// last reading; fails after `timeout`. For counters that trail (the filter hands Envoy its
/// per-request counts on a 1 s tick): once still for longer than that, nothing counted is still to come.
pub fn settled<T, K: PartialEq>(
    timeout: Duration,
    quiet: Duration,
    mut read: impl FnMut() -> Result<T>,
    key: impl Fn(&T) -> K,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = read()?;
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = read()?;
        if key(&now) != key(&last) {
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        last = now;
        if Instant::now() >= deadline {
            bail!("still changing after {timeout:?}");
        }
    }
}

fn read_first_line(
    out: std::process::ChildStdout,
    log: &Path,
) -> Result<mpsc::Receiver<io::Result<String>>> {
    let mut rest = OpenOptions::new().append(true).open(log)?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("child-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let failed = first.is_err();
            let _ = tx.send(first);
            if !failed {
                // Keep draining, so a chatty child never blocks on a full pipe.
                let mut buf = [0u8; 8192];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || rest.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        })?;
    Ok(rx)
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the long-lived spawner thread, in a new process group, with
/// `PR_SET_PDEATHSIG`, and registers the group for the exit hook.
fn spawn_managed(mut cmd: Command) -> Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    static EXIT_HOOK: Once = Once::new();
    EXIT_HOOK.call_once(|| {
        // SAFETY: registers a plain extern "C" function without captured state.
        unsafe {
            libc::atexit(kill_remaining_groups);
        }
    });

    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody will send the signal.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }

    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let _ = thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| anyhow!("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| anyhow!("spawner thread is gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| anyhow!("spawner thread is gone"))??;
    if let Ok(mut groups) = GROUPS.lock() {
        groups.push(child.id() as libc::pid_t);
    }
    Ok(child)
}

static GROUPS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn forget_group(pid: libc::pid_t) {
    if let Ok(mut groups) = GROUPS.lock() {
        groups.retain(|&g| g != pid);
    }
}

fn signal_group(pid: libc::pid_t, signal: libc::c_int) {
    if pid > 0 {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(pid, signal);
        }
    }
}

extern "C" fn kill_remaining_groups() {
    // try_lock: never block inside exit().
    if let Ok(groups) = GROUPS.try_lock() {
        for &pid in groups.iter() {
            signal_group(pid, libc::SIGKILL);
        }
    }
}
