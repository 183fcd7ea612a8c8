//! Protected mode: a node whose `default` user has no password serves loopback clients only,
//! so a cache started with defaults on a public address is not open to the network.

use std::net::IpAddr;

/// Redis 7's reply to a refused client (src/networking.c), sent before closing.
pub const DENIED: &str = "-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Redis from the same host the server is running, however MAKE SURE Redis is not publicly accessible from internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just disable the protected mode by editing the Redis configuration file, and setting the protected mode option to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart it with the '--protected-mode no' option. 4) Set up an authentication password for the default user. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.\r\n";

/// Whether `ip` is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped 127.x).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Redis 7's rule: refuse a client when protected mode is on, the `default` user has no
/// password, and the client is not on loopback. (A node bound to loopback only ever sees
/// loopback clients, so this is the "bound to a public address" case.)
pub fn protected_mode_denies(protected_mode: bool, default_nopass: bool, peer: IpAddr) -> bool {
    protected_mode && default_nopass && !is_loopback(peer)
}

/// The decision for a client from `peer` on `server` now (`protected-mode` and the `default`
/// user's `nopass` can change at run time).
pub fn refuses(server: &crate::server::Server, peer: IpAddr) -> bool {
    protected_mode_denies(server.config.read().protected_mode, server.acl.default_is_nopass(), peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_is_all_of_127_slash_8_and_ipv6_one() {
        for a in ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip(a)), "{a}");
        }
        for a in ["10.0.0.1", "192.168.1.2", "0.0.0.0", "::", "::ffff:10.0.0.1", "fe80::1", "128.0.0.1"] {
            assert!(!is_loopback(ip(a)), "{a}");
        }
    }

    #[test]
    fn only_passwordless_nodes_refuse_remote_clients() {
        assert!(protected_mode_denies(true, true, ip("10.1.2.3")));
        assert!(!protected_mode_denies(true, true, ip("127.0.0.1")));
        assert!(!protected_mode_denies(true, false, ip("10.1.2.3")), "a password opens the node");
        assert!(!protected_mode_denies(false, true, ip("10.1.2.3")), "protected-mode no");
    }

    #[test]
    fn the_denial_is_one_resp_error_line() {
        assert!(DENIED.starts_with("-DENIED Redis is running in protected mode"));
        assert!(DENIED.ends_with("\r\n") && !DENIED[..DENIED.len() - 2].contains('\r'));
    }
}
