//! An open-loop HTTP/1.1 load generator for latency at a fixed rate, light enough that
//! one core of the load generator does not set the p99 it reports.
//!
//! ```text
//! openloop ADDR REQUEST_FILE RATE SECONDS CONNECTIONS EXPECTED_STATUS
//! ```
//!
//! Sends the request in REQUEST_FILE (raw bytes: request line, headers, body) RATE times a
//! second in all, spread evenly over CONNECTIONS keep-alive connections, for SECONDS.
//! Request `k` of connection `c` is due at `start + (k + c / CONNECTIONS) / per_connection_rate`;
//! its latency is counted from when it was due, not from when it was written, so a slow
//! answer that delays the next request on its connection is counted in full (no
//! coordinated omission, as wrk2's corrected latency). One thread, non-blocking sockets
//! under `epoll` (mio), polled without sleeping when a send is due within 1 ms.
//!
//! Prints one line: `sent= answered= rate= p50_us= p90_us= p99_us= p999_us= max_us=
//! wrong_status= reconnects=`. Exits 1 on a connection error or a malformed answer.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Connection {
    stream: TcpStream,
    /// When this connection's next request is due.
    next_due: Instant,
    /// When the request in flight was due; `None` when idle.
    in_flight: Option<Instant>,
    buffer: Vec<u8>,
    sent: u64,
}

/// The length of a complete answer at the start of `buf`, and its status; `None` while
/// incomplete.
fn complete_answer(buf: &[u8]) -> Result<Option<(usize, u16)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().context("bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked answers are not supported");
        }
    }
    let total = end + 4 + length;
    Ok((buf.len() >= total).then_some((total, status)))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, request_file, rate, seconds, connections, expected] = args.as_slice() else {
        bail!("usage: openloop ADDR REQUEST_FILE RATE SECONDS CONNECTIONS EXPECTED_STATUS");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let request = std::fs::read(request_file).context("REQUEST_FILE")?;
    let rate: f64 = rate.parse().context("RATE")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let n: usize = connections.parse().context("CONNECTIONS")?;
    let expected: u16 = expected.parse().context("EXPECTED_STATUS")?;
    if rate <= 0.0 || n == 0 {
        bail!("RATE and CONNECTIONS must be positive");
    }
    let interval = Duration::from_secs_f64(n as f64 / rate);

    let mut poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let connect = |token: usize| -> Result<TcpStream> {
        let std_stream = std::net::TcpStream::connect(addr).context("connect")?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        registry.register(&mut stream, Token(token), Interest::READABLE)?;
        Ok(stream)
    };
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(Connection {
            stream: connect(i)?,
            next_due: Instant::now(),
            in_flight: None,
            buffer: Vec::with_capacity(4096),
            sent: 0,
        });
    }
    let start = Instant::now() + Duration::from_millis(10);
    for (i, c) in conns.iter_mut().enumerate() {
        c.next_due = start + interval.mul_f64(i as f64 / n as f64);
    }
    let end = start + Duration::from_secs_f64(seconds);
    let mut latencies_ns: Vec<u64> = Vec::with_capacity((rate * seconds) as usize + n);
    let (mut wrong_status, mut sent, mut reconnects) = (0u64, 0u64, 0u64);
    let mut events = Events::with_capacity(n.max(16));
    let mut chunk = [0u8; 16 * 1024];

    loop {
        let now = Instant::now();
        let mut pending = false;
        for (i, c) in conns.iter_mut().enumerate() {
            if c.in_flight.is_none() && c.next_due < end && c.next_due <= now {
                // A request is a few hundred bytes: a fresh socket's buffer takes it whole.
                let written = c.stream.write(&request).context("write")?;
                if written != request.len() {
                    bail!("short write");
                }
                c.in_flight = Some(c.next_due);
                c.sent += 1;
                sent += 1;
                c.next_due = start + interval.mul_f64(c.sent as f64 + i as f64 / n as f64);
            }
            pending |= c.in_flight.is_some() || c.next_due < end;
        }
        if !pending {
            break;
        }
        let next_due = conns
            .iter()
            .filter(|c| c.in_flight.is_none() && c.next_due < end)
            .map(|c| c.next_due)
            .min();
        let timeout = match next_due {
            Some(due)
                if due.saturating_duration_since(Instant::now()) > Duration::from_millis(2) =>
            {
                due.saturating_duration_since(Instant::now()) - Duration::from_millis(1)
            }
            Some(_) => Duration::ZERO,
            None => Duration::from_millis(100),
        };
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            let token = event.token().0;
            let c = &mut conns[token];
            loop {
                match c.stream.read(&mut chunk) {
                    // A server may close an idle keep-alive connection (nginx after
                    // `keepalive_requests`); one with a request in flight is an error.
                    Ok(0) if c.in_flight.is_none() && c.buffer.is_empty() => {
                        registry.deregister(&mut c.stream)?;
                        c.stream = connect(token)?;
                        reconnects += 1;
                        break;
                    }
                    Ok(0) => bail!("the server closed a connection with a request in flight"),
                    Ok(got) => c.buffer.extend_from_slice(&chunk[..got]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("read"),
                }
            }
            while let Some((len, status)) = complete_answer(&c.buffer)? {
                let Some(due) = c.in_flight.take() else {
                    bail!("an answer to no request");
                };
                latencies_ns.push(Instant::now().saturating_duration_since(due).as_nanos() as u64);
                if status != expected {
                    wrong_status += 1;
                }
                c.buffer.drain(..len);
            }
        }
        if Instant::now() > end + Duration::from_secs(10) {
            bail!("answers still missing 10 s after the end");
        }
    }
    let elapsed = Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64();
    latencies_ns.sort_unstable();
    let us = |p: f64| percentile(&latencies_ns, p) as f64 / 1000.0;
    println!(
        "sent={sent} answered={} rate={:.0} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} wrong_status={wrong_status} reconnects={reconnects}",
        latencies_ns.len(),
        latencies_ns.len() as f64 / elapsed,
        us(0.50),
        us(0.90),
        us(0.99),
        us(0.999),
        us(1.0),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{complete_answer, percentile};

    #[test]
    fn answers_are_complete_only_with_their_whole_body() {
        let head = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(complete_answer(&head[..20]).unwrap(), None);
        assert_eq!(complete_answer(head).unwrap(), None);
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"nope!HTTP/1.1 204");
        assert_eq!(
            complete_answer(&whole).unwrap(),
            Some((head.len() + 5, 401))
        );
        let no_body = b"HTTP/1.1 204 No Content\r\nx-request-id: r\r\n\r\n";
        assert_eq!(
            complete_answer(no_body).unwrap(),
            Some((no_body.len(), 204))
        );
    }

    #[test]
    fn chunked_and_garbled_answers_are_errors() {
        assert!(complete_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(complete_answer(b"garbage\r\n\r\n").is_err());
        assert!(complete_answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.5), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&sorted, 1.0), 100);
        assert_eq!(percentile(&[], 0.99), 0);
    }
}
