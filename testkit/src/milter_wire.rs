//! A light milter client playing the MTA, as the load figures need it: blocking I/O on one
//! unix socket per thread, the packets built into one buffer and written at once, nothing
//! async — so that what it costs is small and stated (its own CPU is measured beside the
//! daemon's). It speaks milter protocol version 6 as Postfix does: it offers every action
//! and protocol step, honours what the milter negotiates away (stages it does not want,
//! replies it does not send), and starts the next message with MAIL after end of message.
//!
//! Wire format (libmilter's mfdef.h): a packet is a 4-byte big-endian length (the command
//! byte included), the command, its data.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Protocol steps a milter may turn off (SMFIP_NO*) or leave unanswered (SMFIP_NR_*).
const NO_CONNECT: u32 = 0x1;
const NO_MAIL: u32 = 0x4;
const NO_RCPT: u32 = 0x8;
const NO_BODY: u32 = 0x10;
const NO_HDRS: u32 = 0x20;
const NO_EOH: u32 = 0x40;
const NR_HDR: u32 = 0x80;
const NR_CONN: u32 = 0x1000;
const NR_MAIL: u32 = 0x4000;
const NR_RCPT: u32 = 0x8000;
const NR_EOH: u32 = 0x40000;
const NR_BODY: u32 = 0x80000;
/// Everything version 6 defines, offered.
const ALL_STEPS: u32 = 0x1F_FFFF;
const ALL_ACTIONS: u32 = 0x1FF;

/// One connection to a milter.
pub struct MilterClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// What the milter chose (SMFIP_* bits).
    steps: u32,
    out: Vec<u8>,
}

/// What the milter answered at end of message: its modifications (`h` add header, `i` insert
/// header, `m` change header, `q` quarantine, …) and its final answer.
#[derive(Debug, Clone)]
pub struct EndOfMessage {
    pub modifications: Vec<(u8, Vec<u8>)>,
    pub answer: u8,
    /// From the first byte of MAIL to the final answer.
    pub took: Duration,
}

impl EndOfMessage {
    /// Whether an added or inserted header field's name or value contains `text`.
    pub fn added_contains(&self, text: &str) -> bool {
        self.modifications.iter().any(|(cmd, data)| {
            matches!(cmd, b'h' | b'i') && String::from_utf8_lossy(data).contains(text)
        })
    }
}

impl MilterClient {
    /// Connects and negotiates (SMFIC_OPTNEG), then sends the connect step as Postfix does.
    pub fn connect(socket: &Path) -> std::io::Result<MilterClient> {
        let stream = UnixStream::connect(socket)?;
        let writer = stream.try_clone()?;
        let mut client = MilterClient {
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            steps: 0,
            out: Vec::with_capacity(16 * 1024),
        };
        let mut data = Vec::with_capacity(12);
        data.extend(6u32.to_be_bytes());
        data.extend(ALL_ACTIONS.to_be_bytes());
        data.extend(ALL_STEPS.to_be_bytes());
        client.packet(b'O', &data);
        client.flush()?;
        let (cmd, answer) = client.read()?;
        if cmd != b'O' || answer.len() < 12 {
            return Err(std::io::Error::other("no option negotiation answer"));
        }
        client.steps = u32::from_be_bytes(answer[8..12].try_into().expect("4 bytes"));
        if client.steps & NO_CONNECT == 0 {
            client.packet(b'C', b"localhost\0L\0\0\0");
            client.flush()?;
            if client.steps & NR_CONN == 0 {
                client.read()?;
            }
        }
        Ok(client)
    }

    fn packet(&mut self, cmd: u8, data: &[u8]) {
        self.out
            .extend(u32::try_from(data.len() + 1).expect("small").to_be_bytes());
        self.out.push(cmd);
        self.out.extend_from_slice(data);
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    fn read(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > 1 << 24 {
            return Err(std::io::Error::other("bad packet length"));
        }
        let mut data = vec![0u8; len];
        self.reader.read_exact(&mut data)?;
        let cmd = data.remove(0);
        Ok((cmd, data))
    }

    /// Sends one step and, unless the milter said it does not answer it, reads the answer;
    /// `true` when it may go on (continue, or an answer to skip what is left of this stage).
    fn step(&mut self, cmd: u8, data: &[u8], no_reply: bool) -> std::io::Result<bool> {
        self.packet(cmd, data);
        if no_reply {
            return Ok(true);
        }
        self.flush()?;
        let (answer, _) = self.read()?;
        Ok(matches!(answer, b'c' | b's'))
    }

    /// One message: MAIL, RCPT, header fields (`value` as the MTA passes it: the leading space
    /// kept, folded lines joined with LF), end of header, body in chunks of 64 KiB, end of
    /// message — with the macro `i` (the queue id) as Postfix sends it with MAIL.
    pub fn send(
        &mut self,
        queue_id: &str,
        from: &str,
        to: &str,
        fields: &[(String, String)],
        body: &[u8],
    ) -> std::io::Result<EndOfMessage> {
        let started = Instant::now();
        let steps = self.steps;
        self.packet(b'D', format!("Mi\0{queue_id}\0").as_bytes());
        let mut going = true;
        if steps & NO_MAIL == 0 {
            going = self.step(b'M', format!("<{from}>\0").as_bytes(), steps & NR_MAIL != 0)?;
        }
        if going && steps & NO_RCPT == 0 {
            going = self.step(b'R', format!("<{to}>\0").as_bytes(), steps & NR_RCPT != 0)?;
        }
        if going && steps & NO_HDRS == 0 {
            for (name, value) in fields {
                let mut data = Vec::with_capacity(name.len() + value.len() + 2);
                data.extend_from_slice(name.as_bytes());
                data.push(0);
                data.extend_from_slice(value.as_bytes());
                data.push(0);
                if !self.step(b'L', &data, steps & NR_HDR != 0)? {
                    break;
                }
            }
        }
        if going && steps & NO_EOH == 0 {
            going = self.step(b'N', b"", steps & NR_EOH != 0)?;
        }
        if going && steps & NO_BODY == 0 {
            for chunk in body.chunks(65535) {
                if !self.step(b'B', chunk, steps & NR_BODY != 0)? {
                    break;
                }
            }
        }
        self.packet(b'E', b"");
        self.flush()?;
        let mut modifications = Vec::new();
        loop {
            let (cmd, data) = self.read()?;
            match cmd {
                // Progress: the milter is still working.
                b'p' => {}
                b'h' | b'i' | b'm' | b'q' | b'+' | b'-' | b'e' | b'2' | b'b' => {
                    modifications.push((cmd, data));
                }
                answer => {
                    return Ok(EndOfMessage {
                        modifications,
                        answer,
                        took: started.elapsed(),
                    });
                }
            }
        }
    }
}

/// This process's CPU time so far (user + system), all threads.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we own; the result is checked.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
