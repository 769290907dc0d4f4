//! The names a server is configured with that requests are compared against: the web origins
//! allowed to call it (CORS) and the host names anonymous requests may use. Parsed once, into
//! the form requests carry, so that a configured value either matches what a browser sends
//! or is refused when the server starts (never silently dropped or never matched).

use std::fmt;
use std::str::FromStr;

/// A web origin allowed to call the API (`--cors-origin`): `*` (any page), or
/// `http(s)://host[:port]` in the form browsers send in `Origin` (lower case, no default port,
/// nothing after the authority).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigin {
    Any,
    Origin(String),
}

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(AllowedOrigin::Any);
        }
        let lower = s.to_ascii_lowercase();
        let (scheme, rest, default_port) = if let Some(rest) = lower.strip_prefix("https://") {
            ("https", rest, 443)
        } else if let Some(rest) = lower.strip_prefix("http://") {
            ("http", rest, 80)
        } else {
            return Err(format!(
                "{s:?} is not an origin: expected https://host[:port] (or *)"
            ));
        };
        let not_an_origin = || {
            format!(
                "{s:?} is not an origin: expected scheme://host[:port] (port 1-65535, no leading zero), without a path, a trailing slash or spaces"
            )
        };
        // The port follows the last ':' after an IPv6 literal's ']' (if any).
        let host_end = rest.rfind(']').map_or(0, |i| i + 1);
        let (host, port) = match rest[host_end..].rfind(':') {
            Some(i) => (&rest[..host_end + i], Some(&rest[host_end + i + 1..])),
            None => (rest, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !host_ok {
            return Err(not_an_origin());
        }
        let origin = match port {
            None => format!("{scheme}://{host}"),
            Some(p) => {
                let n: u16 = p
                    .parse()
                    .ok()
                    .filter(|n| *n > 0 && !p.starts_with('0'))
                    .ok_or_else(not_an_origin)?;
                if n == default_port {
                    format!("{scheme}://{host}")
                } else {
                    format!("{scheme}://{host}:{n}")
                }
            }
        };
        Ok(AllowedOrigin::Origin(origin))
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedOrigin::Any => f.write_str("*"),
            AllowedOrigin::Origin(o) => f.write_str(o),
        }
    }
}

/// A host name requests without a token may use (`--allowed-host`): `*` (any), or a host
/// name or IP address as a `Host` header names it, without a port; kept as requests are
/// compared ([`host_key`]: lower case, no trailing dot, no IPv6 brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedHost {
    Any,
    Name(String),
}

impl FromStr for AllowedHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim();
        if name == "*" {
            return Ok(AllowedHost::Any);
        }
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let ok = bare.parse::<std::net::IpAddr>().is_ok()
            || (!bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if ok {
            Ok(AllowedHost::Name(host_key(name)))
        } else {
            Err(format!(
                "{s:?} is not a host name (letters, digits, `-` and `.`), an IP address or `*`; \
                 give no port"
            ))
        }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedHost::Any => f.write_str("*"),
            AllowedHost::Name(n) => f.write_str(n),
        }
    }
}

/// A host name as compared: lowercase, without a trailing dot or IPv6 brackets.
pub(crate) fn host_key(name: &str) -> String {
    let name = name.trim_end_matches('.');
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::{AllowedHost, AllowedOrigin};

    #[test]
    fn origins_take_the_form_browsers_send() {
        for (given, taken) in [
            ("https://Dash.Example.org", "https://dash.example.org"),
            ("https://dash.example.org:443", "https://dash.example.org"),
            ("http://localhost:80", "http://localhost"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("*", "*"),
        ] {
            let parsed = given.parse::<AllowedOrigin>().map(|o| o.to_string());
            assert_eq!(parsed.as_deref(), Ok(taken), "{given}");
        }
        for bad in [
            "dash.example.org",
            "https://dash.example.org/",
            "https://dash.example.org/app",
            "https://a.example.org:99999",
            "https://a.example.org:08443",
            "https://a.example.org:0",
            "https://a.example.org:",
            "https://",
            "ftp://a.example.org",
        ] {
            assert!(bad.parse::<AllowedOrigin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names_take_the_form_requests_are_compared_in() {
        for (given, taken) in [
            ("Incidents.Example.org", "incidents.example.org"),
            ("incidents.example.org.", "incidents.example.org"),
            ("[::1]", "::1"),
            ("10.0.0.7", "10.0.0.7"),
            ("*", "*"),
        ] {
            let parsed = given.parse::<AllowedHost>().map(|h| h.to_string());
            assert_eq!(parsed.as_deref(), Ok(taken), "{given}");
        }
        for bad in [
            "",
            "example.org:8080",
            "exa mple.org",
            "https://example.org",
        ] {
            assert!(bad.parse::<AllowedHost>().is_err(), "{bad:?}");
        }
    }
}
