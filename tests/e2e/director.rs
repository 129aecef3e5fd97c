//! Runs the real `director` binary as a subprocess and watches its log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agones_openmatch_director::doubles::agones::AgonesPki;
use agones_openmatch_director::doubles::certs::TempDir;

use crate::world::WAIT;

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < give_up,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files and variables for a Director that talks to the doubles.
pub struct DirectorEnv {
    pub vars: HashMap<String, String>,
    pub dir: TempDir,
}

impl DirectorEnv {
    /// Variables pointing at the doubles, with a trusted client certificate and short timings.
    pub fn new(om_port: u16, allocator_port: u16, pki: &AgonesPki) -> DirectorEnv {
        let dir = TempDir::new("director");
        let client = pki.client();
        let ca = dir.write("ca.crt", pki.server_ca.pem());
        let cert = dir.write("tls.crt", client.cert_pem);
        let key = dir.write("tls.key", client.key_pem);
        let mut vars = HashMap::new();
        let mut set = |k: &str, v: String| {
            vars.insert(k.to_string(), v);
        };
        set("OPENMATCH_BACKEND_ADDR", "127.0.0.1".into());
        set("OPENMATCH_BACKEND_PORT", om_port.to_string());
        set("OPENMATCH_MATCH_FUNCTION_ADDR", "mmf.test".into());
        set("OPENMATCH_MATCH_FUNCTION_PORT", "50502".into());
        set("AGONES_ALLOCATOR_ADDR", "127.0.0.1".into());
        set("AGONES_ALLOCATOR_PORT", allocator_port.to_string());
        set("AGONES_CA_CERT", path(&ca));
        set("AGONES_CLIENT_CERT", path(&cert));
        set("AGONES_CLIENT_KEY", path(&key));
        set("AGONES_NAMESPACE", "game-servers".into());
        set("AGONES_MULTICLUSTER", "true".into());
        set("REGIONS", "us-east-1,us-east-2".into());
        set("RANGES", "0-49,50-99".into());
        set("INTERVAL", "100ms".into());
        set("FETCH_TIMEOUT", "5s".into());
        set("ALLOCATE_TIMEOUT", "2s".into());
        set("ASSIGN_TIMEOUT", "2s".into());
        set("ALLOCATE_RETRY_BUDGET", "3s".into());
        set("ASSIGN_RETRY_BUDGET", "3s".into());
        set("SHUTDOWN_TIMEOUT", "5s".into());
        set("ALLOCATOR_THREADS", "4".into());
        set("METRICS_ADDR", "127.0.0.1:0".into());
        set("CERT_RELOAD_INTERVAL", "200ms".into());
        set("RUST_LOG", "info,grpcio=warn".into());
        DirectorEnv { vars, dir }
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.vars.insert(key.to_string(), value.into());
    }

    /// Runs the `director` binary built by cargo.
    pub fn start(&self) -> Director {
        let mut command = Command::new(env!("CARGO_BIN_EXE_director"));
        command.env_clear().envs(&self.vars);
        Director::spawn(command)
    }

    /// Runs the `director` binary in `workdir` with `args`, and only the variables `vars` (the
    /// way the original director's manifest starts it: settings as flags).
    pub fn start_in(workdir: &Path, args: &[String], vars: &[(&str, &str)]) -> Director {
        let mut command = Command::new(env!("CARGO_BIN_EXE_director"));
        command
            .current_dir(workdir)
            .args(args)
            .env_clear()
            .envs(vars.iter().copied());
        Director::spawn(command)
    }

    /// Runs `director check`; returns its exit code and standard output.
    pub fn check(&self) -> (Option<i32>, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_director"))
            .arg("check")
            .env_clear()
            .envs(&self.vars)
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
    /// Starts `command` with its standard error captured as the log.
    fn spawn(mut command: Command) -> Director {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start director");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  director| {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Director {
            child,
            container: None,
            log,
            reader: Some(reader),
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Runs `command`, a `docker run` of the container `name`.
    pub fn in_container(command: Command, name: String) -> Director {
        let mut director = Director::spawn(command);
        director.container = Some(name);
        director
    }

    /// The log lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        wait_until(timeout, &format!("a log line with {needle:?}"), || {
            !self.lines_with(needle).is_empty()
        });
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and its log to be read completely.
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

/// The address of the Director's operations listener, from its start-up log.
pub fn operations_address(director: &Director) -> SocketAddr {
    director.wait_for_log("Serving /metrics", WAIT);
    let line = director.lines_with("Serving /metrics").remove(0);
    line.rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
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
