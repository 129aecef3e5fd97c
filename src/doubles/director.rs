//! The real `director` binary as a child process: its environment, its log, its resource use,
//! and the operations port it serves. The one launcher of the end-to-end tests and the simulator.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::agones::AgonesPki;
use super::apiserver::{FakeApiServer, ServiceAccount};
use super::certs::TempDir;
use super::wait::wait_until;
use crate::sync::lock;

/// The `director` binary cargo built next to the running executable (a test binary lives one
/// directory deeper, in `deps/`).
pub fn director_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("director")
}

/// Files and variables for a Director that talks to the doubles, and the binary to run.
pub struct DirectorEnv {
    /// The Director's whole environment.
    pub vars: HashMap<String, String>,
    /// Where its certificates (and whatever a test adds) are written.
    pub dir: TempDir,
    /// The `director` binary.
    pub binary: PathBuf,
}

impl DirectorEnv {
    /// Variables pointing at Open Match on `om_port` (plaintext) and the allocator on
    /// `allocator_port`, with a client certificate of `pki` that the allocator trusts.
    pub fn new(om_port: u16, allocator_port: u16, pki: &AgonesPki) -> DirectorEnv {
        let dir = TempDir::new("director");
        let client = pki.client();
        let ca = dir.write("ca.crt", pki.server_ca.pem());
        let cert = dir.write("tls.crt", client.cert_pem);
        let key = dir.write("tls.key", client.key_pem);
        let mut env = DirectorEnv {
            vars: HashMap::new(),
            dir,
            binary: director_binary(),
        };
        env.set("OPENMATCH_BACKEND_ADDR", "127.0.0.1");
        env.set("OPENMATCH_BACKEND_PORT", om_port.to_string());
        env.set("AGONES_ALLOCATOR_ADDR", "127.0.0.1");
        env.set("AGONES_ALLOCATOR_PORT", allocator_port.to_string());
        env.set("AGONES_CA_CERT", path(&ca));
        env.set("AGONES_CLIENT_CERT", path(&cert));
        env.set("AGONES_CLIENT_KEY", path(&key));
        env
    }

    /// Sets variable `key`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.vars.insert(key.to_string(), value.into());
    }

    /// Sets every `(key, value)` of `settings`.
    pub fn set_all(&mut self, settings: &[(&str, &str)]) {
        for (key, value) in settings {
            self.set(key, *value);
        }
    }

    /// Leader election on Lease `lease` of the API server double `api`: a service account
    /// volume (the double's CA, `token`, namespace `games`) and the variables that find it.
    /// Returns the volume, so that a test can rotate the token.
    pub fn elect_on(&mut self, api: &FakeApiServer, lease: &str, token: &str) -> ServiceAccount {
        let account = ServiceAccount::new(self.dir.path().join("serviceaccount"), api, token);
        self.set("LEADER_ELECTION_LEASE", lease);
        self.set("SERVICE_ACCOUNT_DIR", path(&account.dir));
        self.set("KUBERNETES_SERVICE_HOST", "127.0.0.1");
        self.set("KUBERNETES_SERVICE_PORT", api.port.to_string());
        account
    }

    /// Runs the binary with its log captured (and echoed, each line marked `director|`).
    pub fn start(&self) -> Director {
        Director::spawn(self.command()).capture_log()
    }

    /// Runs the binary with its log left in the pipe, for [`Director::log_lines`].
    pub fn start_piped(&self) -> Director {
        Director::spawn(self.command())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.env_clear().envs(&self.vars);
        command
    }

    /// Runs the binary in `workdir` with `args`, and only the variables `vars` (the way the
    /// original director's manifest starts it: settings as flags).
    pub fn start_in(workdir: &Path, args: &[String], vars: &[(&str, &str)]) -> Director {
        let mut command = Command::new(director_binary());
        command
            .current_dir(workdir)
            .args(args)
            .env_clear()
            .envs(vars.iter().copied());
        Director::spawn(command).capture_log()
    }

    /// Runs `director check`; returns its exit code and standard output.
    pub fn check(&self) -> (Option<i32>, String) {
        let output = self
            .command()
            .arg("check")
            .stdin(Stdio::null())
            .output()
            .expect("run director check");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        (output.status.code(), stdout)
    }

    /// Runs `image` with Docker on the host network, the certificate directory mounted read-only
    /// at the default path /etc/director/agones-tls (the AGONES_* file variables are left unset).
    pub fn start_image(&self, image: &str) -> Director {
        let name = format!("director-test-{}", self.dir.path().display())
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
        let mut command = Command::new("docker");
        command.args(["run", "--rm", "--name", &name, "--network", "host"]);
        command.args(["--read-only", "--cap-drop", "ALL"]);
        command.args([
            "-v",
            &format!("{}:/etc/director/agones-tls:ro", path(self.dir.path())),
        ]);
        for (key, value) in &self.vars {
            if !matches!(
                key.as_str(),
                "AGONES_CA_CERT" | "AGONES_CLIENT_CERT" | "AGONES_CLIENT_KEY"
            ) {
                command.args(["-e", &format!("{key}={value}")]);
            }
        }
        command.arg(image);
        Director::in_container(command, name)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A running `director` process.
pub struct Director {
    child: Child,
    /// The Docker container's name, when the Director runs in one.
    container: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Director {
    /// Starts `command` with its standard error piped.
    fn spawn(mut command: Command) -> Director {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Director {
            child,
            container: None,
            log: Arc::default(),
            reader: None,
        }
    }

    /// Runs `command`, a `docker run` of the container `name`, with its log captured; the
    /// container is removed when the Director is dropped.
    pub fn in_container(command: Command, name: String) -> Director {
        let mut director = Director::spawn(command).capture_log();
        director.container = Some(name);
        director
    }

    /// Keeps every log line (for [`log`](Self::log)) and echoes it, marked `director|`.
    fn capture_log(mut self) -> Director {
        let lines = self.log_lines();
        let sink = Arc::clone(&self.log);
        self.reader = Some(std::thread::spawn(move || {
            for line in lines {
                eprintln!("  director| {line}");
                lock(&sink).push(line);
            }
        }));
        self
    }

    /// Its log, one line at a time, for a Director started with [`DirectorEnv::start_piped`].
    pub fn log_lines(&mut self) -> impl Iterator<Item = String> {
        let stderr: ChildStderr = self.child.stderr.take().expect("stderr is piped");
        BufReader::new(stderr).lines().map_while(Result::ok)
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// The log lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits until a log line contains `needle`; returns the lines that do. The log is read by a
    /// thread of its own, so a line the Director wrote just before a call the doubles saw may not
    /// be in [`lines_with`](Self::lines_with) yet: a check for a line waits for it here.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        wait_until(timeout, &format!("a log line with {needle:?}"), || {
            lines = self.lines_with(needle);
            !lines.is_empty()
        });
        lines
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once (SIGKILL), as a node failure would, and waits for it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait for the killed director");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit and its captured log to be read completely.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(timeout, "the director to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        status.expect("exited")
    }

    /// CPU time used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id())
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_value("VmHWM:")
    }

    /// Resident memory now (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_value("VmRSS:")
    }

    /// Anonymous resident memory now (RssAnon: heap and stacks, not the mapped binary) in KiB.
    pub fn anonymous_rss_kib(&self) -> u64 {
        self.status_value("RssAnon:")
    }

    /// Its threads now.
    pub fn threads(&self) -> u64 {
        self.status_value("Threads:")
    }

    /// A number field of /proc/PID/status (0 when unreadable).
    fn status_value(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        if let Some(name) = &self.container {
            let _ = Command::new("docker")
                .args(["rm", "--force", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` used so far (user + system), from /proc/PID/stat (10 ms ticks).
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The address of the operations listener in a log line (`Serving /metrics … on http://ADDR`).
pub fn operations_address_in(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("Serving /metrics")?;
    rest.rsplit("http://").next()?.trim().parse().ok()
}

/// The address of the Director's operations listener, from its start-up log.
pub fn operations_address(director: &Director, timeout: Duration) -> SocketAddr {
    director.wait_for_log("Serving /metrics", timeout);
    let line = director.lines_with("Serving /metrics").remove(0);
    operations_address_in(&line).expect("an address after Serving /metrics")
}

/// GETs `path`; returns the status code and the body.
pub fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: director\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(metrics: &str, series: &str) -> f64 {
    sample_if_any(metrics, series).unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The value of the sample whose name and labels are exactly `series`, if it exists yet.
pub fn sample_if_any(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}
