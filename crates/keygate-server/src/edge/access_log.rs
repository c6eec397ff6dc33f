//! The access log: one line per request, in the same shape as the other log lines (text or
//! JSON), but formatted by hand into a shared buffer instead of going through `tracing`'s
//! formatter. A line per request through `tracing` cost about a third of the server's
//! throughput (field visitors, `Debug` formatting, a timestamp formatted per line); here a
//! line is a few appends and the timestamp's seconds are formatted once per second.
//!
//! Lines are appended to one buffer; a writer thread hands the buffer to the log writer
//! (the same queue as every other log line, so lines never interleave) every
//! [`FLUSH_EVERY`], or sooner when it fills up. Nothing is dropped: when the buffer is far
//! behind, requests wait for it. Without [`install`] (tests, the tower layer's embedders)
//! the line goes through `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The log target the line is written under (the module that wrote it before).
const TARGET: &str = "keygate_server::edge::middleware";
/// How long a line may wait in the buffer at most.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is handed over at once.
const FLUSH_AT: usize = 32 * 1024;
/// A buffer this full makes requests wait (the writer is behind).
const BLOCK_AT: usize = 4 * 1024 * 1024;

/// Which shape the lines take: `tracing-subscriber`'s default text or its JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One request's line.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub micros: u64,
}

struct Shared {
    format: Format,
    buffer: Mutex<Buffer>,
    /// Wakes the writer thread (a full buffer, or shutdown) and waiting requests.
    changed: Condvar,
}

struct Buffer {
    lines: Vec<u8>,
    closed: bool,
}

static SINK: OnceLock<Arc<Shared>> = OnceLock::new();

/// Flushes what is buffered and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut buffer) = self.shared.buffer.lock() {
            buffer.closed = true;
        }
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends access-log lines to `writer` (one `write_all` per batch of whole lines) from now
/// on. Once per process; a second call returns `None` and changes nothing.
pub fn install<W: Write + Send + 'static>(writer: W, format: Format) -> Option<Guard> {
    let shared = Arc::new(Shared {
        format,
        buffer: Mutex::new(Buffer {
            lines: Vec::with_capacity(FLUSH_AT * 2),
            closed: false,
        }),
        changed: Condvar::new(),
    });
    SINK.set(shared.clone()).ok()?;
    let thread = std::thread::Builder::new()
        .name("keygate-access-log".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, writer)
        })
        .ok()?;
    Some(Guard {
        shared,
        thread: Some(thread),
    })
}

/// Logs one request: into the buffer when installed, else through `tracing`.
pub fn record(entry: &Entry<'_>) {
    let Some(shared) = SINK.get() else {
        tracing::info!(
            request_id = %entry.request_id,
            method = %entry.method,
            path = %entry.path,
            status = entry.status,
            micros = entry.micros,
            "request"
        );
        return;
    };
    let Ok(mut buffer) = shared.buffer.lock() else {
        return;
    };
    while buffer.lines.len() >= BLOCK_AT && !buffer.closed {
        buffer = match shared.changed.wait(buffer) {
            Ok(b) => b,
            Err(_) => return,
        };
    }
    match shared.format {
        Format::Text => text_line(&mut buffer.lines, entry),
        Format::Json => json_line(&mut buffer.lines, entry),
    }
    if buffer.lines.len() >= FLUSH_AT {
        shared.changed.notify_all();
    }
}

fn write_batches<W: Write>(shared: &Shared, mut writer: W) {
    let mut batch = Vec::with_capacity(FLUSH_AT * 2);
    loop {
        let closed = {
            let Ok(buffer) = shared.buffer.lock() else {
                return;
            };
            let Ok((mut buffer, _)) = shared.changed.wait_timeout_while(buffer, FLUSH_EVERY, |b| {
                b.lines.len() < FLUSH_AT && !b.closed
            }) else {
                return;
            };
            std::mem::swap(&mut buffer.lines, &mut batch);
            buffer.closed
        };
        // Requests waiting on a full buffer may go on.
        shared.changed.notify_all();
        if !batch.is_empty() {
            // A log sink that fails has nowhere to report it; the lines are dropped.
            let _ = writer.write_all(&batch);
            batch.clear();
        }
        if closed {
            let _ = writer.flush();
            return;
        }
    }
}

/// `2026-12-07T00:10:49.123456Z  INFO keygate_server::edge::middleware: request request_id=… method=GET path=/v1/auth status=200 micros=35`
fn text_line(out: &mut Vec<u8>, entry: &Entry<'_>) {
    timestamp(out);
    out.extend_from_slice(b"  INFO ");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b": request request_id=");
    out.extend_from_slice(entry.request_id.as_bytes());
    out.extend_from_slice(b" method=");
    out.extend_from_slice(entry.method.as_bytes());
    out.extend_from_slice(b" path=");
    // The path is redacted and comes from a parsed URI (no spaces or control characters),
    // but a newline must never split a line.
    push_without_controls(out, entry.path);
    out.extend_from_slice(b" status=");
    push_number(out, u64::from(entry.status));
    out.extend_from_slice(b" micros=");
    push_number(out, entry.micros);
    out.push(b'\n');
}

/// The JSON shape of `tracing-subscriber`'s `json()` formatter, so log shippers read both alike.
fn json_line(out: &mut Vec<u8>, entry: &Entry<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out);
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"request_id\":\"",
    );
    push_json_escaped(out, entry.request_id);
    out.extend_from_slice(b"\",\"method\":\"");
    push_json_escaped(out, entry.method);
    out.extend_from_slice(b"\",\"path\":\"");
    push_json_escaped(out, entry.path);
    out.extend_from_slice(b"\",\"status\":");
    push_number(out, u64::from(entry.status));
    out.extend_from_slice(b",\"micros\":");
    push_number(out, entry.micros);
    out.extend_from_slice(b"},\"target\":\"");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` writes it.
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = chrono::DateTime::from_timestamp(secs as i64, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
            let mut bytes = [b'0'; 19];
            let n = text.len().min(19);
            bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
            *cached = (secs, bytes);
        }
        out.extend_from_slice(&cached.1);
    });
    out.push(b'.');
    let micros = now.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_without_controls(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        out.push(if b.is_ascii_control() { b'?' } else { b });
    }
}

fn push_json_escaped(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry<'_> {
        Entry {
            request_id: "req_1",
            method: "GET",
            path,
            status: 401,
            micros: 1234,
        }
    }

    #[test]
    fn text_lines_have_tracing_s_shape() {
        let mut out = Vec::new();
        text_line(&mut out, &entry("/v1/auth"));
        let line = String::from_utf8(out).unwrap();
        let (time, rest) = line.split_once("  ").unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert_eq!(time.len(), "2026-12-07T00:10:49.123456Z".len());
        assert_eq!(
            rest,
            "INFO keygate_server::edge::middleware: request request_id=req_1 method=GET \
             path=/v1/auth status=401 micros=1234\n"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = Vec::new();
        json_line(&mut out, &entry("/v1/\"odd\"\\\n"));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], TARGET);
        assert_eq!(value["fields"]["message"], "request");
        assert_eq!(value["fields"]["path"], "/v1/\"odd\"\\\n");
        assert_eq!(value["fields"]["status"], 401);
        assert_eq!(value["fields"]["micros"], 1234);
        assert!(chrono::DateTime::parse_from_rfc3339(value["timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn a_newline_in_a_path_does_not_split_a_text_line() {
        let mut out = Vec::new();
        text_line(&mut out, &entry("/a\nb"));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 1234567, u64::MAX] {
            let mut out = Vec::new();
            push_number(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
