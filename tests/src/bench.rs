//! The benchmark harness behind `make bench` (SPEC §9): a closed-loop HTTP/1.1 load generator
//! with keep-alive connections, a minimal upstream, and Envoy CPU/RSS read from `/proc`.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadStats {
    /// Completed requests.
    pub requests: u64,
    /// Requests that did not get the expected status.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Sorted latencies.
    pub latencies: Vec<Duration>,
}

impl LoadStats {
    /// Requests per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile (0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

/// Reads one response on a keep-alive connection; returns its status.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head")?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("status")?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs `connections` closed-loop clients sending `request` for `duration`.
pub fn load(
    addr: SocketAddr,
    request: &[u8],
    expect: u16,
    connections: usize,
    duration: Duration,
) -> Result<LoadStats> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, request) = (stop.clone(), request.to_vec());
            std::thread::spawn(move || -> Result<(u64, u64, Vec<Duration>)> {
                let mut stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let (mut ok, mut bad, mut lat) = (0u64, 0u64, Vec::with_capacity(1 << 16));
                let mut buf = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    stream.write_all(&request)?;
                    let status = read_response(&mut stream, &mut buf)?;
                    lat.push(t.elapsed());
                    if status == expect {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                }
                Ok((ok, bad, lat))
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut stats = LoadStats {
        requests: 0,
        errors: 0,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    };
    for w in workers {
        let (ok, bad, lat) = w
            .join()
            .map_err(|_| anyhow::anyhow!("load worker panicked"))??;
        stats.requests += ok + bad;
        stats.errors += bad;
        stats.latencies.extend(lat);
    }
    stats.latencies.sort_unstable();
    Ok(stats)
}

/// User + system CPU time of a process so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("/proc stat format")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()? as f64,
    ))
}

fn clock_ticks_per_second() -> Result<u64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("getconf CLK_TCK")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100))
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// A minimal keep-alive upstream answering every request with 200 `{}`.
pub fn start_upstream() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = Vec::with_capacity(8192);
                let mut chunk = [0u8; 16384];
                loop {
                    // Read one request head (and a body, if announced).
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}
