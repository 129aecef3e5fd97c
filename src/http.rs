//! The operations HTTP listener: `GET /metrics`, `/healthz`, `/readyz`.
//!
//! Deliberately tiny and defensive: one accept thread, one short-lived thread per connection, one
//! request per connection, a bound on the request size, and one deadline ([`REQUEST_TIMEOUT`]) for
//! the whole request head however its bytes trickle in. At most [`MAX_CONNECTIONS`] connections
//! wait for their request at once; when one more arrives, the one that has waited longest is
//! closed to make room. A probe sends its request at once, so slow, silent or oversized clients
//! only ever push each other out, never the kubelet, and never touch matchmaking.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Longest time a client may take to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time writing a response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time spent discarding a client's unread input after answering.
const LINGER: Duration = Duration::from_secs(1);
/// Largest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most connections waiting for their request at once; the oldest is closed for a newcomer.
pub const MAX_CONNECTIONS: usize = 32;

/// A response: status code, content type, body.
pub struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    /// A Prometheus text exposition.
    pub fn metrics(body: String) -> Response {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body,
        }
    }
}

/// Answers a GET for a path.
pub type Handler = dyn Fn(&str) -> Response + Send + Sync;

/// Binds `address` and serves `handler` from a background thread; returns the bound address.
pub fn serve(address: SocketAddr, handler: Arc<Handler>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    thread::Builder::new()
        .name("http".into())
        .spawn(move || accept_loop(&listener, &handler))?;
    Ok(bound)
}

/// The connections still reading their request head, oldest first.
#[derive(Default)]
struct Reading {
    next_id: u64,
    connections: VecDeque<(u64, TcpStream)>,
}

impl Reading {
    /// Registers `stream`, first closing the oldest connections beyond the cap; returns its id.
    fn admit(&mut self, stream: &TcpStream) -> Option<u64> {
        while self.connections.len() >= MAX_CONNECTIONS {
            let (_, oldest) = self.connections.pop_front()?;
            let _ = oldest.shutdown(Shutdown::Both);
        }
        let handle = stream.try_clone().ok()?;
        self.next_id += 1;
        self.connections.push_back((self.next_id, handle));
        Some(self.next_id)
    }

    /// Forgets connection `id` (its head is read, or it is gone).
    fn done(&mut self, id: u64) {
        self.connections.retain(|(other, _)| *other != id);
    }
}

fn accept_loop(listener: &TcpListener, handler: &Arc<Handler>) {
    let reading = Arc::new(Mutex::new(Reading::default()));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // Out of file descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Some(id) = lock(&reading).admit(&stream) else {
            continue;
        };
        let handler = Arc::clone(handler);
        let registry = Arc::clone(&reading);
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || serve_connection(stream, &handler, || lock(&registry).done(id)));
        if spawned.is_err() {
            lock(&reading).done(id);
        }
    }
}

/// Reads one request within [`REQUEST_TIMEOUT`], calls `head_read` once it has (or has given
/// up), then answers.
fn serve_connection(mut stream: TcpStream, handler: &Arc<Handler>, head_read: impl FnOnce()) {
    let head = read_request_head(&mut stream, Instant::now() + REQUEST_TIMEOUT);
    head_read();
    let response = match head {
        Ok(head) => requested_path(&head).map_or_else(|refusal| refusal, |path| handler(path)),
        Err(RequestError::TooLarge) => Response::text(431, "request too large\n".into()),
        Err(RequestError::Gone) => return,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(response.body.as_bytes()));
    linger(&mut stream);
}

/// Closes our side, then reads and discards what the client still sends, for at most
/// [`LINGER`]: closing a socket with unread input resets the connection, and the client would
/// lose the answer (a 431 for an oversized head, say) before reading it.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 16 * 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

enum RequestError {
    TooLarge,
    Gone,
}

/// Reads up to the blank line that ends the request head, all of it before `deadline`.
fn read_request_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, RequestError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(RequestError::Gone);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(RequestError::Gone),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(RequestError::Gone),
        }
    }
    Ok(head)
}

/// The path a request head asks for (`GET <path>[?query] HTTP/1.x`), or the refusal to send.
fn requested_path(head: &[u8]) -> Result<&str, Response> {
    let bad_request = || Response::text(400, "bad request\n".into());
    let head = std::str::from_utf8(head).map_err(|_| bad_request())?;
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_request());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad_request());
    }
    if method != "GET" {
        return Err(Response::text(405, "only GET\n".into()));
    }
    Ok(target.split('?').next().unwrap_or_default())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> SocketAddr {
        let handler: Arc<Handler> = Arc::new(|path: &str| match path {
            "/hello" => Response::text(200, "hi\n".into()),
            _ => Response::text(404, "not found\n".into()),
        });
        serve("127.0.0.1:0".parse().unwrap(), handler).unwrap()
    }

    fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        let _ = stream.write_all(request);
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    #[test]
    fn serves_get_and_rejects_the_rest() {
        let address = start();
        let ok = exchange(address, b"GET /hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhi\n"));
        assert!(exchange(address, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(exchange(address, b"POST /hello HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(exchange(address, b"\x00\xff garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(exchange(address, b"GET /hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn an_oversized_head_gets_431_and_a_silent_client_blocks_no_one() {
        let address = start();
        let silent = TcpStream::connect(address).unwrap();
        let mut huge = Vec::from(&b"GET /hello HTTP/1.1\r\nX-Big: "[..]);
        huge.resize(1024 * 1024, b'a');
        let refused = exchange(address, &huge);
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused:?}");
        let ok = exchange(address, b"GET /hello HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
        drop(silent);
    }

    #[test]
    fn a_head_trickling_in_is_cut_off_at_the_request_deadline() {
        let address = start();
        let mut slow = TcpStream::connect(address).unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let mut closed = false;
        for _ in 0..(REQUEST_TIMEOUT.as_millis() / 100 * 3) {
            if slow.write_all(b"G").is_err() {
                closed = true;
                break;
            }
            let mut byte = [0u8; 1];
            match slow.read(&mut byte) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => panic!("an answer to an unfinished head"),
                Err(_) => {}
            }
        }
        assert!(closed, "the connection outlived its request deadline");
        assert!(started.elapsed() >= REQUEST_TIMEOUT);
    }

    #[test]
    fn past_the_cap_the_longest_waiting_connection_makes_room() {
        let address = start();
        let mut oldest = TcpStream::connect(address).unwrap();
        let _others: Vec<TcpStream> = (1..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        let ok = exchange(address, b"GET /hello HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
        oldest.set_read_timeout(Some(REQUEST_TIMEOUT / 2)).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            oldest.read(&mut byte).unwrap(),
            0,
            "the oldest silent connection was closed for the newcomer"
        );
    }

    /// Property tests of a parser of outside input (`make fuzz` runs many more cases).
    mod fuzz {
        use super::*;

        proptest::proptest! {
            #[test]
            fn any_request_head_gets_a_path_or_a_refusal(head in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
                match requested_path(&head) {
                    Ok(path) => proptest::prop_assert!(!path.contains(' ') && !path.contains('?')),
                    Err(refusal) => proptest::prop_assert!(matches!(refusal.status, 400 | 405)),
                }
            }

            #[test]
            fn a_well_formed_get_yields_its_path(path in "/[a-z0-9/_.-]{0,40}", query in "[a-z=&]{0,10}", headers in "([A-Za-z-]{1,10}: [ -~]{0,20}\r\n){0,5}") {
                let head = format!("GET {path}?{query} HTTP/1.1\r\n{headers}\r\n");
                proptest::prop_assert_eq!(requested_path(head.as_bytes()).ok(), Some(path.as_str()));
            }
        }
    }
}
