//! The operations HTTP listener: `GET /metrics`, `/healthz`, `/readyz`.
//!
//! Deliberately tiny and defensive: one accept thread, one short-lived thread per connection (at
//! most [`MAX_CONNECTIONS`] at once; more are closed at once), a read deadline, a bound on the
//! request size, one request per connection. A slow, silent, oversized or malformed client costs
//! one thread for at most [`READ_TIMEOUT`] and never touches matchmaking.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Longest time a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most connections served at once.
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
    let open = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("http".into())
        .spawn(move || accept_loop(&listener, &handler, &open))?;
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, handler: &Arc<Handler>, open: &Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // Out of file descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let handler = Arc::clone(handler);
        let slot = Arc::clone(open);
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                serve_connection(stream, &handler);
                slot.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_connection(mut stream: TcpStream, handler: &Arc<Handler>) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let response = match read_request_head(&mut stream) {
        Ok(head) => route(&head, handler),
        Err(RequestError::TooLarge) => Response::text(431, "request too large\n".into()),
        Err(RequestError::Malformed) => Response::text(400, "bad request\n".into()),
        Err(RequestError::Gone) => return,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(response.body.as_bytes()));
}

enum RequestError {
    TooLarge,
    Malformed,
    Gone,
}

/// Reads up to the blank line that ends the request head.
fn read_request_head(stream: &mut TcpStream) -> Result<String, RequestError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(RequestError::Gone),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(RequestError::Gone),
        }
    }
    String::from_utf8(head).map_err(|_| RequestError::Malformed)
}

/// The response for a request head.
fn route(head: &str, handler: &Arc<Handler>) -> Response {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "bad request\n".into());
    }
    if method != "GET" {
        return Response::text(405, "only GET\n".into());
    }
    let path = target.split('?').next().unwrap_or_default();
    handler(path)
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
    fn oversized_and_silent_clients_do_not_block_others() {
        let address = start();
        let silent = TcpStream::connect(address).unwrap();
        let mut huge = Vec::from(&b"GET /hello HTTP/1.1\r\nX-Big: "[..]);
        huge.resize(1024 * 1024, b'a');
        let refused = exchange(address, &huge);
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 431"),
            "{refused}"
        );
        let ok = exchange(address, b"GET /hello HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"));
        drop(silent);
    }
}
