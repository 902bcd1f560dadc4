//! An authoritative-only DNS server on 127.0.0.1 (UDP) for tests: it answers from a fixed
//! table and says NXDOMAIN for names it does not know.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Clone, Debug)]
pub enum Answer {
    Txt(String),
    A(Ipv4Addr),
    /// An MX record: preference and exchange (`"."` for a null MX, RFC 7505).
    Mx(u16, String),
}

/// Answers a query name (lower-case, no trailing dot) with records, or None for NXDOMAIN.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Vec<Answer>> + Send + Sync>;

pub struct DnsServer {
    pub addr: SocketAddr,
    socket: Arc<UdpSocket>,
}

impl DnsServer {
    /// `zone` maps lower-case names without the trailing dot to their records.
    pub fn start(zone: HashMap<String, Vec<Answer>>) -> DnsServer {
        DnsServer::start_with(Arc::new(move |name: &str| zone.get(name).cloned()))
    }

    /// Answers from `lookup` (a lower-case name without the trailing dot → its records, or
    /// None for NXDOMAIN), asked anew for every query.
    pub fn start_with(lookup: Lookup) -> DnsServer {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = socket.local_addr().unwrap();
        let server = socket.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, peer)) = server.recv_from(&mut buf) {
                if n == 1 && buf[0] == 0 {
                    break; // shutdown byte from Drop
                }
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let response = answer(&request, &*lookup);
                if let Ok(bytes) = response.to_vec() {
                    let _ = server.send_to(&bytes, peer);
                }
            }
        });
        DnsServer { addr, socket }
    }

    /// `records`: a name (lower-case, no trailing dot) and its records, each.
    pub fn with_records(records: &[(&str, Vec<Answer>)]) -> DnsServer {
        DnsServer::start(
            records
                .iter()
                .map(|(name, answers)| (name.to_string(), answers.clone()))
                .collect(),
        )
    }

    pub fn server_arg(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.socket.send_to(&[0], self.addr);
    }
}

fn answer(
    request: &Message,
    lookup: &(dyn Fn(&str) -> Option<Vec<Answer>> + Send + Sync),
) -> Message {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());
    let key = query
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let Some(records) = lookup(&key) else {
        response.metadata.response_code = ResponseCode::NXDomain;
        return response;
    };
    let name: Name = query.name.clone();
    for record in &records {
        let rdata = match (record, query.query_type) {
            (Answer::Txt(text), RecordType::TXT) => RData::TXT(TXT::new(vec![text.clone()])),
            (Answer::A(ip), RecordType::A) => RData::A(A(*ip)),
            (Answer::Mx(preference, exchange), RecordType::MX) => {
                match Name::from_ascii(exchange) {
                    Ok(exchange) => RData::MX(MX::new(*preference, exchange)),
                    Err(_) => continue,
                }
            }
            _ => continue,
        };
        response.add_answer(Record::from_rdata(name.clone(), 60, rdata));
    }
    response
}
