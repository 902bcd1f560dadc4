//! Memory per cached identity: the identity cache filled through the real resolver (HTTP to a
//! loopback PLC directory, the document parsed, the cache's byte bound) with distinct DIDs,
//! and this process's RSS read at each step. The directory runs in a child process (this
//! binary again, `--plc-child`), so its memory is not counted; the documents are shaped as
//! plc.directory serves them (context, handle, one Multikey, a PDS), about 600 bytes each.
//!
//! Settings overridden (stated in the output too):
//! - `resolver.max_requests_per_second` = 1 000 000: the fill is the point, not the budget;
//! - `cache.max_bytes` = 4 GiB and `cache.max_entries` = 4 000 000 for the fill, so nothing
//!   is evicted; then a second resolver with the default `cache.max_bytes` (64 MiB) shows the
//!   bound holding: the same fill keeps its RSS flat.
//!
//! Run: `scripts/bench/load.sh identity_memory [--steps 100000,1000000] [--concurrency 64]
//! [--bound]` (`--bound`: the default `cache.max_bytes` instead of 4 GiB).

use atsms_testkit::load as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::infra::config::{CacheConfig, ResolverConfig};

/// The document of `did`, shaped as plc.directory serves one.
fn document(did: &str, multikey: &str) -> String {
    let handle = format!("u{}.bsky.social", &did[8..20]);
    serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1", "https://w3id.org/security/suites/secp256k1-2019/v1"],
        "id": did,
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{"id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": multikey}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://morel.us-east.host.bsky.network"}],
    })
    .to_string()
}

/// The child: a PLC directory answering every `/<did>` with its document.
async fn plc_child() {
    let multikey = atsms_milter::format::crypto::SigningKey::generate(
        atsms_milter::format::crypto::Alg::Es256k,
    )
    .unwrap()
    .public_key()
    .to_multikey();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    let app = axum::Router::new().route(
        "/{did}",
        axum::routing::get(
            move |axum::extract::Path(did): axum::extract::Path<String>| {
                let body = document(&did, &multikey);
                async move { ([("content-type", "application/json")], body) }
            },
        ),
    );
    axum::serve(listener, app).await.unwrap();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resolves DIDs `from..to` with `concurrency` lookups at a time.
async fn fill(identity: &Arc<IdentityResolver>, from: usize, to: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (identity, next) = (identity.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        return;
                    }
                    identity
                        .resolve_did(&common::ids::plc_did(n))
                        .await
                        .unwrap_or_else(|e| panic!("{}: {e}", common::ids::plc_did(n)));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

async fn run(plc: &str, cache: CacheConfig, steps: &[usize], concurrency: usize, label: &str) {
    let resolver = ResolverConfig {
        plc_urls: vec![plc.parse().unwrap()],
        allow_private_addresses: true,
        max_requests_per_second: std::num::NonZeroU32::new(1_000_000).unwrap(),
        ..Default::default()
    };
    let identity = Arc::new(IdentityResolver::new(&resolver, &cache).unwrap());
    // One lookup first, so the HTTP client, TLS roots and runtime are in the baseline.
    fill(&identity, usize::MAX - 1, usize::MAX, 1).await;
    let base = rss_kib();
    let mut done = 0;
    for &step in steps {
        let started = Instant::now();
        fill(&identity, done, step, concurrency).await;
        let took = started.elapsed();
        let rate = (step - done) as f64 / took.as_secs_f64();
        done = step;
        let stats = identity.stats().await;
        let rss = rss_kib();
        println!(
            "| {label} | {step} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
            stats.document_entries,
            (rss - base) as f64 / 1024.0,
            stats.bytes as f64 / 1048576.0,
            (rss - base) as f64 * 1024.0 / stats.document_entries.max(1) as f64,
            rate
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--plc-child") {
        return plc_child().await;
    }
    let steps = common::numbers(&args, "--steps", "100000,1000000");
    let concurrency = common::numbers(&args, "--concurrency", "64")[0];
    let (mut child, port) = common::spawn_child(&["--plc-child"]);
    let plc = format!("http://127.0.0.1:{port}");
    println!(
        "a document as served: {} bytes",
        document(
            &common::ids::plc_did(1),
            "zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
        )
        .len()
    );
    println!(
        "settings overridden: resolver.max_requests_per_second = 1000000; fill: cache.max_bytes = 4 GiB, max_entries = 4000000; bound: cache defaults (max_bytes 64 MiB)"
    );
    println!(
        "| cache | DIDs resolved | entries held | RSS growth MiB | cache bytes (as bounded) MiB | RSS bytes / entry | lookups/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    if args.iter().any(|a| a == "--bound") {
        // The default bound, in a process of its own (memory freed by evictions is reused,
        // not always returned to the kernel, so it is not measured after the big fill).
        run(
            &plc,
            CacheConfig::default(),
            &steps,
            concurrency,
            "64 MiB (default)",
        )
        .await;
    } else {
        let big = CacheConfig {
            max_bytes: 4 << 30,
            max_entries: 4_000_000,
            ..CacheConfig::default()
        };
        run(&plc, big, &steps, concurrency, "4 GiB").await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
