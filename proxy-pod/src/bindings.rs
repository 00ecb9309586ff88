//! `GET /bindings`: the binding cache as a JSON array, one object per binding (a node with simultaneous
//! bindings appears once per care-of address).
//!
//! ```json
//! [{"home_address": "10.10.1.50", "nai": null, "care_of_address": "192.0.2.10",
//!   "tunnel": {"encapsulation": "udp_ipip", "address": "192.0.2.10", "port": 434},
//!   "home_agent": "10.10.1.1", "lifetime": 600, "expires_in_ms": 599812,
//!   "half_bound": false, "reverse_tunnel": true}]
//! ```
//!
//! `expires_in_ms` is `null` for an infinite lifetime (65535).

use mip::binding::{BindingCache, INFINITE_LIFETIME};
use mip::time::Instant;
use serde_json::{Value, json};

/// The bindings of `cache` at `now`, sorted by home address then care-of address (stable output for diffs).
pub fn to_json(cache: &BindingCache, now: Instant) -> Value {
    let mut rows: Vec<(u32, u32, Value)> = Vec::with_capacity(cache.len());
    for entry in cache.iter() {
        for b in entry.bindings() {
            let expires_in_ms = if b.lifetime == INFINITE_LIFETIME {
                Value::Null
            } else {
                json!(u64::try_from(b.remaining(now).as_millis()).unwrap_or(u64::MAX))
            };
            let row = json!({
                "home_address": entry.home_address().to_string(),
                "nai": entry.nai(),
                "care_of_address": b.care_of_address.to_string(),
                "tunnel": {
                    "encapsulation": b.tunnel.encapsulation.as_str(),
                    "address": b.tunnel.addr.to_string(),
                    "port": b.tunnel.port,
                },
                "home_agent": b.home_agent.to_string(),
                "lifetime": b.lifetime,
                "expires_in_ms": expires_in_ms,
                "half_bound": b.half_bound,
                "reverse_tunnel": b.reverse_tunnel,
            });
            rows.push((u32::from(entry.home_address()), u32::from(b.care_of_address), row));
        }
    }
    rows.sort_by_key(|(h, c, _)| (*h, *c));
    Value::Array(rows.into_iter().map(|(_, _, v)| v).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use core::net::Ipv4Addr;
    use mip::binding::{Binding, Encapsulation, TunnelEndpoint};

    #[test]
    fn one_object_per_binding() {
        let mut cache = BindingCache::new();
        let hoa = Ipv4Addr::new(10, 10, 1, 50);
        let coa = Ipv4Addr::new(192, 0, 2, 10);
        let tunnel = TunnelEndpoint {
            addr: Ipv4Addr::new(203, 0, 113, 2),
            port: 4500,
            encapsulation: Encapsulation::UdpIpInIp,
        };
        let mut b = Binding::new(coa, tunnel, Ipv4Addr::new(10, 10, 1, 1), 7, 600, Instant::from_secs(10));
        b.reverse_tunnel = true;
        cache.upsert(hoa, Some("joe@example.com"), b, false).unwrap();
        let v = to_json(&cache, Instant::from_secs(20));
        assert_eq!(
            v,
            json!([{
                "home_address": "10.10.1.50",
                "nai": "joe@example.com",
                "care_of_address": "192.0.2.10",
                "tunnel": {"encapsulation": "udp_ipip", "address": "203.0.113.2", "port": 4500},
                "home_agent": "10.10.1.1",
                "lifetime": 600,
                "expires_in_ms": 590_000,
                "half_bound": false,
                "reverse_tunnel": true,
            }])
        );
        assert_eq!(to_json(&BindingCache::new(), Instant::ZERO), json!([]));
    }
}
