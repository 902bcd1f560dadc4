//! A loopback PLC directory whose documents a test sets and changes as it goes (a DID moving
//! its mail endpoint, say), built on `http::HttpServer`. The same server is the DIDs' PDS when
//! a document names it (`set_with_pds`): `com.atproto.repo.getRecord` and `listRecords` over
//! the records a test puts (`put_record`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use atsms_milter::format::crypto::SigningKey;

use crate::http::{HttpServer, Reply};

pub struct Plc {
    pub server: HttpServer,
    documents: Arc<Mutex<HashMap<String, String>>>,
    /// Audit logs (`/<did>/log/audit`), by DID.
    audits: Arc<Mutex<HashMap<String, String>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Records by `at://` URI, as `getRecord` answers them.
    records: Arc<Mutex<std::collections::BTreeMap<String, serde_json::Value>>>,
    /// While set, the PDS answers 503 (the directory still answers).
    pds_down: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds the PDS waits before each answer.
    pds_delay: Arc<std::sync::atomic::AtomicU64>,
}

impl Plc {
    pub fn start() -> Plc {
        let documents: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let audits: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let records: Arc<Mutex<std::collections::BTreeMap<String, serde_json::Value>>> =
            Arc::default();
        let pds_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pds_delay = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (docs, logs, is_down) = (documents.clone(), audits.clone(), down.clone());
        let (stored, is_pds_down) = (records.clone(), pds_down.clone());
        let delay = pds_delay.clone();
        let server = HttpServer::start(Arc::new(move |target: &str| {
            if target.starts_with("/xrpc/") {
                if is_pds_down.load(std::sync::atomic::Ordering::SeqCst) {
                    return Reply::json(503, "{}");
                }
                let answer = pds(&stored.lock().unwrap(), target);
                return match delay.load(std::sync::atomic::Ordering::SeqCst) {
                    0 => answer,
                    ms => Reply::Delayed(std::time::Duration::from_millis(ms), Box::new(answer)),
                };
            }
            if is_down.load(std::sync::atomic::Ordering::SeqCst) {
                return Reply::json(503, "{}");
            }
            let did = target.trim_start_matches('/');
            if let Some(did) = did.strip_suffix("/log/audit") {
                return match logs.lock().unwrap().get(did) {
                    Some(log) => Reply::json(200, log.clone()),
                    None => Reply::json(404, r#"{"message":"DID not registered"}"#),
                };
            }
            match docs.lock().unwrap().get(did) {
                Some(doc) => Reply::json(200, doc.clone()),
                None => Reply::json(404, r#"{"message":"DID not registered"}"#),
            }
        }));
        Plc {
            server,
            documents,
            audits,
            down,
            records,
            pds_down,
            pds_delay,
        }
    }

    /// The PDS waits this long before each answer from now on.
    pub fn set_pds_delay(&self, delay: std::time::Duration) {
        self.pds_delay.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// `set`, with this server as the DID's PDS.
    pub fn set_with_pds(&self, did: &str, key: &SigningKey, mail: Option<&str>) {
        let mut doc: serde_json::Value =
            serde_json::from_str(&crate::signing::document(did, key, Some(&self.url()))).unwrap();
        if let Some(endpoint) = mail {
            doc["service"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!(
                    {"id": "#atsms_mail", "type": "AtsmsMailService", "serviceEndpoint": endpoint}
                ));
        }
        self.set_document(did, doc.to_string());
    }

    /// Puts (or replaces) the record `collection/rkey` in `did`'s repository.
    pub fn put_record(&self, did: &str, collection: &str, rkey: &str, value: serde_json::Value) {
        let uri = format!("at://{did}/{collection}/{rkey}");
        let record = serde_json::json!({"uri": uri, "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm", "value": value});
        self.records.lock().unwrap().insert(uri, record);
    }

    pub fn delete_record(&self, did: &str, collection: &str, rkey: &str) {
        let uri = format!("at://{did}/{collection}/{rkey}");
        self.records.lock().unwrap().remove(&uri);
    }

    /// While down, the PDS answers 503 to everything.
    pub fn set_pds_down(&self, down: bool) {
        self.pds_down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Publishes `did`'s document: an `#atproto` key and, when given, an `#atsms_mail`
    /// endpoint (`smtp://host:port` or `mailto:…`).
    pub fn set(&self, did: &str, key: &SigningKey, mail: Option<&str>) {
        let mut doc: serde_json::Value =
            serde_json::from_str(&crate::signing::document(did, key, None)).unwrap();
        if let Some(endpoint) = mail {
            doc["service"] = serde_json::json!([{"id": "#atsms_mail", "type": "AtsmsMailService", "serviceEndpoint": endpoint}]);
        }
        self.documents
            .lock()
            .unwrap()
            .insert(did.to_string(), doc.to_string());
    }

    /// Publishes a whole document as given.
    pub fn set_document(&self, did: &str, document: String) {
        self.documents
            .lock()
            .unwrap()
            .insert(did.to_string(), document);
    }

    /// Serves `did`'s audit log: its first operation created at `created_at` (RFC 3339),
    /// then `later` more operations (an old identity's long log).
    pub fn set_created(&self, did: &str, created_at: &str, later: usize) {
        let entry = |at: &str| {
            serde_json::json!({"did": did, "operation": {"type": "plc_operation", "prev": null},
                "cid": "bafyreib2rxk3rybloqtqwbo", "nullified": false, "createdAt": at})
        };
        let mut log = vec![entry(created_at)];
        log.extend((0..later).map(|_| entry("2026-11-30T00:00:00.000Z")));
        self.audits
            .lock()
            .unwrap()
            .insert(did.to_string(), serde_json::Value::from(log).to_string());
    }

    pub fn remove(&self, did: &str) {
        self.documents.lock().unwrap().remove(did);
    }

    pub fn requests(&self) -> usize {
        self.server.request_count()
    }
}

/// The PDS's answers: `getRecord` (400 `RecordNotFound` when absent, as a PDS answers) and
/// `listRecords` (one page of a collection).
fn pds(records: &std::collections::BTreeMap<String, serde_json::Value>, target: &str) -> Reply {
    use crate::http::query_param;
    let repo = query_param(target, "repo").unwrap_or_default();
    let collection = query_param(target, "collection").unwrap_or_default();
    if target.starts_with("/xrpc/com.atproto.repo.getRecord") {
        let rkey = query_param(target, "rkey").unwrap_or_default();
        return match records.get(&format!("at://{repo}/{collection}/{rkey}")) {
            Some(record) => Reply::json(200, record.to_string()),
            None => Reply::json(
                400,
                r#"{"error":"RecordNotFound","message":"Could not locate record"}"#,
            ),
        };
    }
    if target.starts_with("/xrpc/com.atproto.repo.listRecords") {
        let prefix = format!("at://{repo}/{collection}/");
        let listed: Vec<&serde_json::Value> = records
            .iter()
            .filter(|(uri, _)| uri.starts_with(&prefix))
            .map(|(_, r)| r)
            .collect();
        return Reply::json(200, serde_json::json!({"records": listed}).to_string());
    }
    Reply::json(404, r#"{"error":"XRPCNotSupported"}"#)
}

/// The mailbox local part of `did` (spec section 9).
pub fn mailbox(did: &str) -> String {
    did.replace(':', ".")
}
