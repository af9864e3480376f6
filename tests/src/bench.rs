//! The benchmark harness behind `make bench` (SPEC §9): load from wrk (Debian's, installed by
//! `make bench`), a minimal keep-alive upstream, and Envoy CPU/RSS read from `/proc`.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// What one load run measured (by wrk).
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Completed requests.
    pub requests: u64,
    /// Responses that were not 2xx/3xx.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl LoadStats {
    /// Requests per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Parses wrk's `--latency` report.
pub fn parse_wrk(report: &str) -> Result<LoadStats> {
    let mut stats = LoadStats::default();
    for line in report.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            stats.p50 = parse_wrk_duration(v).context("p50")?;
        } else if let Some(v) = line.strip_prefix("99%") {
            stats.p99 = parse_wrk_duration(v).context("p99")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            stats.errors = v.trim().parse().context("errors")?;
        } else if let Some((n, rest)) = line.split_once(" requests in ") {
            stats.requests = n.trim().parse().context("requests")?;
            stats.elapsed =
                parse_wrk_duration(rest.split(',').next().unwrap_or("")).context("elapsed")?;
        }
    }
    if stats.requests == 0 {
        bail!("wrk reported no requests:\n{report}");
    }
    Ok(stats)
}

/// Runs wrk (one thread, `connections` keep-alive connections, closed loop) against `url`:
/// a GET, or a POST of the file `body` (through a wrk Lua script).
pub fn load(
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&std::path::Path>,
    connections: usize,
    duration: Duration,
) -> Result<LoadStats> {
    let mut cmd = std::process::Command::new("wrk");
    if let Some(body) = body {
        let script = body.with_extension("lua");
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nlocal f = assert(io.open({:?}, \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n",
                body.display().to_string()
            ),
        )?;
        cmd.arg("-s").arg(script);
    }
    cmd.args([
        "-t1",
        "--latency",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{}s", duration.as_secs().max(1)),
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (make bench installs it from Debian)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
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
        serve_http(listener, |_| {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        })
    });
    Ok(addr)
}

/// Serves keep-alive HTTP/1.1 on `listener` (a thread per connection) until the process ends:
/// each request's head (lower-cased) goes to `respond`, whose bytes are the whole response.
/// Bodies announced with `content-length` are read and dropped.
pub fn serve_http(listener: std::net::TcpListener, respond: fn(&str) -> &'static [u8]) {
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
                if stream.write_all(respond(&head)).is_err() {
                    return;
                }
            }
        });
    }
}

/// The cheapest external authorizer: the same key check as the other variants, answering
/// 200 with the store credential and routing header for Envoy to copy upstream, else 401.
pub fn authz_response(head: &str) -> &'static [u8] {
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("authorization:"))
        .map(str::trim);
    match key {
        Some("bearer demo-read-token" | "bearer demo-rw-token" | "bearer demo-admin-token") => {
            b"HTTP/1.1 200 OK\r\nauthorization: Bearer tpuf-primary-dev-key\r\nx-layergate-cluster: store_primary\r\ncontent-length: 0\r\n\r\n"
        }
        _ => b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let report = "Running 1s test @ http://127.0.0.1:1/x\n  Latency Distribution\n     50%    2.13ms\n     99%  361.00us\n  2670 requests in 1.00s, 613.03KB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:   2668.36\n";
        let s = parse_wrk(report).unwrap_or_default();
        assert_eq!((s.requests, s.errors), (2670, 3));
        assert_eq!(s.p50, Duration::from_micros(2130));
        assert_eq!(s.p99, Duration::from_micros(361));
        assert!((s.throughput() - 2670.0).abs() < 1.0);
    }
}
