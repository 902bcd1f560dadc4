//! The fuzz targets (src/fuzzing/), run on every test run for a bounded time: inputs grown
//! from a seed corpus by random mutations — bytes flipped, inserted, cut and repeated,
//! multi-byte characters and broken UTF-8 put anywhere. Not coverage-guided (that is
//! `scripts/fuzz`, libFuzzer); deterministic per seed, and a failure prints its input.

use atsms_testkit as support;

use std::time::{Duration, Instant};

use atsms_milter::fuzzing;

/// How long each target runs.
const BUDGET: Duration = Duration::from_millis(1500);

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What is most likely to break text handling: multi-byte characters (the Kelvin sign
/// folds onto `k` in Unicode), bytes that are not UTF-8, and the separators of the formats.
const PIECES: &[&[u8]] = &[
    "\u{e9}".as_bytes(),
    "\u{1F600}".as_bytes(),
    "\u{212A}".as_bytes(),
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"@",
    b"!",
    b"+",
    b".",
    b":",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"(",
    b";",
    b"=",
    b"did:plc:",
    b"did.plc.",
    b"did!plc!",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, rng.next() as u8),
            2 => {
                let piece = PIECES[rng.below(PIECES.len())];
                input.splice(at..at, piece.iter().copied());
            }
            3 if !input.is_empty() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = (start + rng.below(32)).min(input.len());
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[cut..]);
            }
            _ => input.truncate(at),
        }
    }
    input.truncate(64 * 1024);
}

/// Runs `target` on the seeds, then on mutations of them, until the budget is spent.
fn fuzz(name: &str, target: fn(&[u8]), seeds: &[&[u8]]) -> usize {
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    let seed = 0x9e37_79b9_7f4a_7c15
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + b as u64);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut runs = 0;
    let mut input = Vec::new();
    while runs < seeds.len() || started.elapsed() < BUDGET {
        if runs < seeds.len() {
            input = seeds[runs].clone();
        } else {
            if rng.below(8) == 0 {
                input = seeds[rng.below(seeds.len())].clone();
            }
            mutate(&mut rng, &mut input, &seeds);
        }
        let result = std::panic::catch_unwind(|| target(&input));
        assert!(
            result.is_ok(),
            "fuzz target {name} failed on input {:?} (run {runs}, seed {seed:#x})",
            String::from_utf8_lossy(&input)
        );
        runs += 1;
    }
    println!("{name}: {runs} inputs in {:?}", started.elapsed());
    runs
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(support::test_data("envelope").join(name)).unwrap()
}

#[test]
fn addresses() {
    fuzz(
        "addresses",
        fuzzing::addresses::run,
        &[
            b"bob@mx.example.net",
            b"Bob+Lists@MX.Example.net.",
            b"did.plc.ofurdhfyhjhgomvfygxergep@mx.example.net",
            b"DID!PLC!OFURDHFYHJHGOMVFYGXERGEP+news@MX.example.net",
            b"did.web.alice.example.com@[127.0.0.1]",
            "abc\u{e9}@mx.example.net".as_bytes(),
            b"a@b.example, c@d.example",
            b"Victim <a@b.example>",
            b"root@localhost",
            b"\"quoted local\"@x.example",
            b"@relay.example:a@b.example",
            b"did.web.localhost%3a8080@mx",
        ],
    );
}

#[test]
fn lmtp_decoder() {
    fuzz(
        "lmtp_decoder",
        fuzzing::lmtp_decoder::run,
        &[
            b"LHLO x\r\nMAIL FROM:<a@b.example> SIZE=10\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
            b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<\"a b\"@d>\r\nBDAT 5 LAST\r\nhello",
            "RCPT TO:<abc\u{e9}@host>\r\n".as_bytes(),
        ],
    );
}

#[test]
fn netstring() {
    fuzz(
        "netstring",
        fuzzing::netstring::run,
        &[
            b"43:atsms_alias did.plc.ofurdhfyhjhgomvfygxergep@x,",
            b"3:abc,0:,",
            b"5000:",
        ],
    );
}

#[test]
fn message() {
    fuzz(
        "message",
        fuzzing::message::run,
        &[
            &vector("k256-multikey-pass.eml"),
            &vector("duplicate-content-type-fail.eml"),
            b"From: a@b.c\nAuthentication-Results: mx.(c)test; x\n\tfold\r\nX: y\rAuthentication-Results: mx.example.net;\n\nbody",
        ],
    );
}

#[test]
fn signature_field() {
    let raw = vector("k256-multikey-pass.eml");
    let text = String::from_utf8_lossy(&raw);
    let value = text
        .split_once("AT-SMS-Signature:")
        .map(|(_, v)| v.split("\n\n").next().unwrap_or(v).to_string())
        .unwrap_or_default();
    fuzz(
        "signature_field",
        fuzzing::signature_field::run,
        &[value.as_bytes(), b"v=1; d=did:plc:x; t=a.b.c"],
    );
}

#[test]
fn mime_scanner() {
    fuzz(
        "mime_scanner",
        fuzzing::mime_scanner::run,
        &[
            b"--b\r\nContent-Type: application/atsms-envelope\r\n\r\nAAAA\r\n--b--\r\n",
            b"preamble\n--b\nContent-Type: application/pkcs7-mime; name=message.p7m\n\n--b--",
        ],
    );
}

#[test]
fn exim_request() {
    fuzz(
        "exim_request",
        fuzzing::exim_request::run,
        &[
            b"CHECK RSPAMC/1.3\r\nContent-length: 40\r\nQueue-Id: 1x\r\nFrom: <a@b>\r\nRecipient-Number: 1\r\nRcpt: <c@d>\r\nIP: 192.0.2.1\r\n\r\nFrom a@b Sat\nX-Envelope-From: <a@b>\n\nx\n",
        ],
    );
}

#[test]
fn service_token() {
    fuzz(
        "service_token",
        fuzzing::service_token::run,
        &[
            b"Bearer eyJhbGciOiJFUzI1NksiLCJ0eXAiOiJKV1QifQ.eyJpc3MiOiJkaWQ6cGxjOngiLCJhdWQiOiJkaWQ6d2ViOnMiLCJleHAiOjEsImlhdCI6MSwianRpIjoiYSJ9.AAAA",
            b"eyJhbGciOiJub25lIn0.e30.",
        ],
    );
}
