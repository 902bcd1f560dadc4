//! Helpers shared by the bench binaries.
#![allow(dead_code)]

use std::io::{Read, Write};

/// Serves one JSON document to every request on a loopback port (a PLC directory that knows
/// one DID) until the process ends; returns its URL.
pub fn serve_document(document: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                document.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    url
}

/// `--name 1,2,3` from the command line, or `default`.
pub fn numbers(args: &[String], name: &str, default: &str) -> Vec<usize> {
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default);
    value
        .split(',')
        .map(|v| v.parse().expect("a number"))
        .collect()
}
