//! Who a client is (also the rate limiter's key), and per-client shares of the server-wide
//! limits: live feeds and requests per token (or, for anonymous callers, per address),
//! connections per address. A server-wide cap alone lets one client take all of it (1,024
//! trickled uploads hold every request slot).
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::auth::Principal;

/// Who a per-client share belongs to: the token, or the address of an anonymous caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    Token(Arc<str>),
    Address(IpAddr),
    /// Anonymous without a known address (in-process tests): one share for all of them.
    Anonymous,
}

impl Client {
    pub(crate) fn of(principal: &Principal, address: Option<IpAddr>) -> Client {
        match (&principal.name, address) {
            (Some(name), _) => Client::Token(name.clone()),
            (None, Some(ip)) => Client::Address(share_address(ip)),
            (None, None) => Client::Anonymous,
        }
    }

    /// The client of a request made by `principal`, from the request's extensions.
    pub(crate) fn of_request(principal: &Principal, extensions: &axum::http::Extensions) -> Client {
        Client::of(principal, peer_address(extensions))
    }
}

/// The address a request came from (`None` in-process, where no connection gave one).
pub(crate) fn peer_address(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|axum::extract::ConnectInfo(addr)| addr.ip())
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Token(name) => write!(f, "token {name}"),
            Client::Address(ip) => write!(f, "address {ip}"),
            Client::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// The address a per-address share (and rate limit) is kept for: IPv4 as is, IPv4-mapped IPv6
/// as IPv4, IPv6 by its /64 prefix (one host or subscriber usually holds a whole /64, so per
/// single address it could take any number of shares).
pub(crate) fn share_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}

/// How many of something each key holds at once, each at most `max`.
pub(crate) struct Quota<K> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

impl<K: Eq + Hash + Clone> Quota<K> {
    /// `max` below 1 is taken as 1.
    pub(crate) fn new(max: usize) -> Self {
        Quota {
            held: Arc::default(),
            max: max.max(1),
        }
    }

    /// One unit for `key`, given back when the returned value drops; `None` when `key`
    /// already holds `max`.
    pub(crate) fn take(&self, key: K) -> Option<Held<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Held {
            held: self.held.clone(),
            key,
        })
    }

    /// Keys holding anything (the map never keeps keys at zero).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One unit of a [`Quota`], given back on drop.
pub(crate) struct Held<K: Eq + Hash> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_holds_at_most_max_and_gets_units_back_on_drop() {
        let q = Quota::new(2);
        let a1 = q.take("a").expect("first unit");
        let a2 = q.take("a").expect("second unit");
        assert!(q.take("a").is_none(), "a third unit over the cap");
        let b = q.take("b").expect("another key has its own share");
        drop(a1);
        let a3 = q.take("a").expect("a unit given back can be taken again");
        drop((a2, a3, b));
        assert_eq!(q.keys(), 0, "keys at zero are forgotten");
        assert!(Quota::new(0).take(1).is_some(), "a cap of 0 is taken as 1");
    }

    #[test]
    fn ipv6_shares_are_per_64_prefix_and_mapped_ipv4_is_ipv4() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(share_address(a("192.0.2.7")), a("192.0.2.7"));
        assert_eq!(share_address(a("::ffff:192.0.2.7")), a("192.0.2.7"));
        assert_eq!(
            share_address(a("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            share_address(a("2001:db8:1:2::1"))
        );
        assert_eq!(share_address(a("2001:db8:1:2::1")), a("2001:db8:1:2::"));
        assert_ne!(
            share_address(a("2001:db8:1:2::1")),
            share_address(a("2001:db8:1:3::1"))
        );
    }
}
