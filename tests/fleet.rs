//! A fleet that shares what it fetches: DID documents, handles and device certificates go to
//! `store.redis`, so a restarted daemon serves the identities it knew with no request to the
//! PLC directory, the DNS or a PDS.

use atsms_testkit as support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use atsms_milter::format::crypto::{Alg, SigningKey};
use support::daemon::Daemon;
use support::dns::{Answer, DnsServer};
use support::ids::plc_did;
use support::plc::Plc;
use support::postfix::free_port;
use support::redis::Redis;
use support::signing;
use support::vectors::VectorWorld;

const DIDS: usize = 100;

use atsms_milter::infra::clock::unix_now as now;

fn config(port: u16, resolver: &str, redis: &Redis) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{resolver}\n{}\n[policy]\nauthserv_id = \"mx.test\"\n",
        redis.store_toml()
    )
}

/// Sends one message through the milter at `port` and returns our inserted field's value.
async fn judged(port: u16, message: &[u8]) -> String {
    let mut conn = support::milter::open_client(("127.0.0.1", port)).await;
    let (actions, _) = support::milter::send(&mut conn, message).await;
    support::milter::inserted_field(&actions)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_asks_the_directory_nothing_for_identities_it_knew() {
    let redis = Redis::start();
    let plc = Plc::start();
    let handles: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let dns_queries = Arc::new(AtomicUsize::new(0));
    let (zone, queries) = (handles.clone(), dns_queries.clone());
    let dns = DnsServer::start_with(Arc::new(move |name: &str| {
        queries.fetch_add(1, Ordering::SeqCst);
        zone.lock()
            .unwrap()
            .get(name)
            .map(|did| vec![Answer::Txt(format!("did={did}"))])
    }));
    let senders: Vec<(String, SigningKey)> = (0..DIDS)
        .map(|n| {
            (
                plc_did(7000 + n),
                SigningKey::generate(Alg::Es256k).unwrap(),
            )
        })
        .collect();
    for (n, (did, key)) in senders.iter().enumerate() {
        let mut doc: serde_json::Value =
            serde_json::from_str(&signing::document(did, key, None)).unwrap();
        doc["alsoKnownAs"] = serde_json::json!([format!("at://u{n}.fleet.test")]);
        plc.set_document(did, doc.to_string());
        handles
            .lock()
            .unwrap()
            .insert(format!("_atproto.u{n}.fleet.test"), did.clone());
    }
    let resolver = format!(
        "[resolver]\nplc_urls = [\"{}\"]\ndns_servers = [\"{}\"]\nallow_private_addresses = true\n",
        plc.url(),
        dns.server_arg()
    );
    let round = |port: u16| {
        let senders = &senders;
        async move {
            for (n, (did, key)) in senders.iter().enumerate() {
                let message = signing::signed_message(key, &format!("{did}#atproto"), now());
                let field = judged(port, &message).await;
                assert!(field.contains("atsms=pass"), "{did}: {field}");
                assert!(
                    field.contains(&format!("header.handle=u{n}.fleet.test")),
                    "{did}: the handle checked out: {field}"
                );
            }
        }
    };

    let port = free_port();
    let mut first = Daemon::start(&config(port, &resolver, &redis), port);
    round(port).await;
    first.stop();
    let (plc_asked, dns_asked) = (plc.requests(), dns_queries.load(Ordering::SeqCst));
    assert_eq!(plc_asked, DIDS, "one fetch per DID");
    assert!(dns_asked >= DIDS, "one handle lookup per DID at least");

    // A new process: its memory is empty, Redis is not.
    let port = free_port();
    let mut second = Daemon::start(&config(port, &resolver, &redis), port);
    round(port).await;
    let log = second.log();
    second.stop();
    assert_eq!(
        plc.requests() - plc_asked,
        0,
        "the restarted daemon asked the PLC directory again:\n{log}"
    );
    assert_eq!(
        dns_queries.load(Ordering::SeqCst) - dns_asked,
        0,
        "the restarted daemon looked handles up again:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn device_certificates_are_shared_too() {
    let redis = Redis::start();
    let world = VectorWorld::start();
    // bob signs with a device key whose certificate is a record in his repository (the
    // world's PLC server is his PDS too, so one counter sees both).
    let uri = world
        .keys
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("at://"))
        .unwrap()
        .clone();
    let key = SigningKey::from_pkcs8_pem(world.keys[&uri]["pkcs8_pem"].as_str().unwrap()).unwrap();
    let kid = world.keys[&uri]["kid"].as_str().unwrap().to_string();
    let port = free_port();
    let config = config(port, &world.resolver_toml(), &redis);
    let mut first = Daemon::start(&config, port);
    let field = judged(port, &signing::signed_message(&key, &kid, now())).await;
    assert!(field.contains("atsms=pass"), "{field}");
    first.stop();
    let asked = world.plc.request_count();
    assert_eq!(asked, 2, "the document and the certificate record");

    let port2 = free_port();
    let control = tempfile::tempdir().unwrap();
    let socket = control.path().join("control.sock");
    let mut second = Daemon::start(
        &format!(
            "{}\n[control]\nsocket = \"{}\"\n",
            config.replace(&port.to_string(), &port2.to_string()),
            socket.display()
        ),
        port2,
    );
    let field = judged(port2, &signing::signed_message(&key, &kid, now())).await;
    assert!(field.contains("atsms=pass"), "{field}");
    assert_eq!(
        world.plc.request_count(),
        asked,
        "nothing fetched again:\n{}",
        second.log()
    );

    // `cache purge DID` drops the certificate from the fleet's store too (a revoked device
    // must not keep verifying on every host): the next message fetches both again.
    let did = kid.split('/').nth(2).unwrap();
    let purged = std::process::Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["cache", "--socket"])
        .arg(&socket)
        .args(["purge", did])
        .output()
        .unwrap();
    assert!(purged.status.success(), "{purged:?}");
    second.stop();
    let port3 = free_port();
    let mut third = Daemon::start(
        &config.replace(&port.to_string(), &port3.to_string()),
        port3,
    );
    let field = judged(port3, &signing::signed_message(&key, &kid, now())).await;
    assert!(field.contains("atsms=pass"), "{field}");
    let log = third.log();
    third.stop();
    assert_eq!(
        world.plc.request_count(),
        asked + 2,
        "the document and the certificate fetched again:\n{log}"
    );
}
