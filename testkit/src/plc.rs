//! A loopback PLC directory whose documents a test sets and changes as it goes (a DID moving
//! its mail endpoint, say), built on `http::HttpServer`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use atsms_milter::crypto::SigningKey;

use crate::http::{HttpServer, Reply};

pub struct Plc {
    pub server: HttpServer,
    documents: Arc<Mutex<HashMap<String, String>>>,
    /// Audit logs (`/<did>/log/audit`), by DID.
    audits: Arc<Mutex<HashMap<String, String>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Plc {
    pub fn start() -> Plc {
        let documents: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let audits: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (docs, logs, is_down) = (documents.clone(), audits.clone(), down.clone());
        let server = HttpServer::start(Arc::new(move |target: &str| {
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
        }
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

/// The mailbox local part of `did` (spec section 9).
pub fn mailbox(did: &str) -> String {
    did.replace(':', ".")
}
