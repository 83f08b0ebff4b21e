//! Splitting server URLs (`scheme://host[:port][/path]`) without a URL
//! crate: the server checks `--public-url` with it and the agent finds the
//! host and port to dial.

/// Splits `scheme://host[:port][/…]` into (scheme, host, port).
pub fn split(url: &str) -> Result<(String, String, Option<u16>), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("it has no scheme; write it like https://drover.example.com:8443")?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("it must not contain user information".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 address")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))
        })
        .transpose()?;
    Ok((scheme.to_string(), host, port))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn urls_split_into_scheme_host_and_port() {
        assert_eq!(
            split("https://a.example:8443/x").unwrap(),
            ("https".into(), "a.example".into(), Some(8443))
        );
        assert_eq!(
            split("https://[::1]:1").unwrap(),
            ("https".into(), "::1".into(), Some(1))
        );
        assert_eq!(
            split("http://h").unwrap(),
            ("http".into(), "h".into(), None)
        );
        for bad in [
            "a.example",
            "ftp://x",
            "https://",
            "https://u:p@h",
            "https://h:99999",
            "https://:1",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
