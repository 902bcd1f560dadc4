//! A small HTTP/1.1 server on 127.0.0.1 for tests, on its own thread and runtime so that
//! synchronous tests (which run the binary) can use it too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server does with a request.
pub enum Reply {
    /// A complete answer.
    Body {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Answer after a delay.
    Delayed(Duration, Box<Reply>),
    /// Send the answer one byte per interval (a server that trickles).
    Trickle(Duration, Box<Reply>),
    /// Add header fields to the answer.
    Headers(Vec<(&'static str, String)>, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Body {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

pub struct HttpServer {
    pub addr: SocketAddr,
    /// Request targets (path and query) in the order received.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// The most requests ever being answered at once.
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(handler: Handler) -> HttpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let log = requests.clone();
        let max_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (peak, current) = (max_in_flight.clone(), in_flight.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (handler, log, peak, current) = (handler.clone(), log.clone(), peak.clone(), current.clone());
                            tokio::spawn(async move {
                                use std::sync::atomic::Ordering;
                                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(now, Ordering::SeqCst);
                                serve(stream, handler, log).await;
                                current.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                    }
                }
            });
        });
        HttpServer {
            addr,
            requests,
            max_in_flight,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(mut stream: tokio::net::TcpStream, handler: Handler, log: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(target.clone());
    let mut reply = handler(&target);
    let mut trickle = None;
    let mut extra = String::new();
    loop {
        match reply {
            Reply::Hang => return tokio::time::sleep(Duration::from_secs(3600)).await,
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Trickle(interval, inner) => {
                trickle = Some(interval);
                reply = *inner;
            }
            Reply::Headers(fields, inner) => {
                for (name, value) in fields {
                    extra.push_str(&format!("{name}: {value}\r\n"));
                }
                reply = *inner;
            }
            Reply::Body {
                status,
                content_type,
                body,
            } => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                let bytes = [head.into_bytes(), body].concat();
                match trickle {
                    None => {
                        let _ = stream.write_all(&bytes).await;
                    }
                    Some(interval) => {
                        for b in bytes {
                            if stream.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(interval).await;
                        }
                    }
                }
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// The value of `name` in a query string (no percent-decoding beyond `%3A`, which is all
/// DIDs need).
pub fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace("%3A", ":").replace("%3a", ":"))
    })
}

/// Sends `request` (the whole HTTP/1.1 request, `Connection: close` in it) to 127.0.0.1:`port`
/// on a fresh connection, as a hostile or plain client would: the status line's code (0 for
/// none) and the whole answer.
pub fn raw_request(port: u16, request: &str) -> (u16, String) {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    exchange(stream, request)
}

/// As `raw_request`; `None` when nothing listens or no status came back (a server killed
/// under it).
pub fn try_raw_request(port: u16, request: &str) -> Option<(u16, String)> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(exchange(stream, request)).filter(|(status, _)| *status != 0)
}

fn exchange(mut stream: std::net::TcpStream, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}
