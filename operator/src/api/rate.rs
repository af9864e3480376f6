//! The `authenticate` rate limit: a fixed window per client address, in bounded memory.

use std::collections::HashMap;
use std::net::IpAddr;

/// Most clients the `authenticate` rate limiter tracks at once; when the table is full and
/// nothing in it is from an older minute, further new clients share one overflow budget.
pub const MAX_RATE_CLIENTS: usize = 4096;

/// A fixed-window limit per client address, in bounded memory.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    clients: HashMap<IpAddr, (i64, u32)>,
    overflow: (i64, u32),
}

impl RateLimiter {
    /// A limiter allowing `per_minute` calls per client per minute.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            clients: HashMap::new(),
            overflow: (0, 0),
        }
    }

    /// Counts one call of `client` at `now` (Unix seconds); false when over its limit.
    pub fn allow(&mut self, client: IpAddr, now: i64) -> bool {
        let minute = now.div_euclid(60);
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_RATE_CLIENTS {
            self.clients.retain(|_, (m, _)| *m == minute);
        }
        let slot = if self.clients.len() < MAX_RATE_CLIENTS || self.clients.contains_key(&client) {
            self.clients.entry(client).or_insert((minute, 0))
        } else {
            &mut self.overflow
        };
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        slot.1 <= self.per_minute
    }

    /// Clients tracked now (at most [`MAX_RATE_CLIENTS`]).
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// The client a request is from: through the gateway, the address Envoy saw (the last
/// `x-forwarded-for` entry — the rendered listener sets `use_remote_address`, so Envoy appends
/// the peer address itself and a client cannot choose it); called directly, the peer address.
pub fn client_address(headers: &[(String, String)], peer: IpAddr) -> IpAddr {
    headers
        .iter()
        .rfind(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        .and_then(|(_, v)| v.rsplit(',').next())
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer)
}
