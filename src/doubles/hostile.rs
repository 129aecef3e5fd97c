//! Hostile clients of the Director's operations port, and the probe that must get through them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

/// 200 hostile connections to the operations port: 80 silent ones, 80 that send one byte a
/// second, and 40 that send an oversized head. They stay open until dropped.
pub struct HostileClients {
    silent: Vec<TcpStream>,
    oversized: Vec<TcpStream>,
    stop: Sender<()>,
    trickler: Option<JoinHandle<()>>,
}

impl HostileClients {
    /// Opens the connections; panics if one cannot be opened.
    pub fn open(address: SocketAddr) -> HostileClients {
        let connect = |_| TcpStream::connect(address).expect("connect to the operations port");
        let silent: Vec<_> = (0..80).map(connect).collect();
        let mut trickling: Vec<_> = (0..80).map(connect).collect();
        let oversized: Vec<_> = (0..40)
            .map(connect)
            .map(|mut stream| {
                let mut head = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
                head.resize(64 * 1024, b'x');
                let _ = stream.write_all(&head);
                stream
            })
            .collect();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let trickler = std::thread::spawn(move || {
            while stopped.recv_timeout(Duration::from_secs(1)) == Err(RecvTimeoutError::Timeout) {
                for stream in &mut trickling {
                    let _ = stream.write_all(b"G");
                }
            }
        });
        HostileClients {
            silent,
            oversized,
            stop,
            trickler: Some(trickler),
        }
    }
}

impl Drop for HostileClients {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(trickler) = self.trickler.take() {
            let _ = trickler.join();
        }
        self.silent.clear();
        self.oversized.clear();
    }
}

/// GETs `path` with one second to connect, send and read the whole answer; returns the status,
/// or what went wrong.
pub fn probe_within_a_second(address: SocketAddr, path: &str) -> Result<u16, String> {
    let second = Duration::from_secs(1);
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&address, second)
        .map_err(|e| format!("{path}: cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(second))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: kubelet\r\n\r\n")
        .map_err(|e| format!("{path}: cannot send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{path} did not answer within a second: {e}"))?;
    if started.elapsed() >= second {
        return Err(format!("{path} took {:?}", started.elapsed()));
    }
    response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{path}: no HTTP answer: {response:?}"))
}
