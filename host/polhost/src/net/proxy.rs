//! `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` as Go reads them
//! (`golang.org/x/net/http/httpproxy`, which OPA's client uses through
//! `http.ProxyFromEnvironment`), so that one environment sends OPA and
//! polhost the same way.
//!
//! Go's rules, kept here: the upper-case name wins over the lower-case one
//! when both are set and non-empty; a proxy without a scheme is
//! `http://`; `localhost` and loopback addresses are never proxied;
//! `NO_PROXY` is a comma-separated list of `*`, IP addresses, CIDR blocks
//! and domain names, each with an optional port, where `example.com`
//! matches it and its subdomains and `.example.com` (or `*.example.com`)
//! only its subdomains; under CGI (`REQUEST_METHOD` set) `HTTP_PROXY` is
//! ignored ("httpoxy").
//!
//! polhost speaks to `http://` proxies only (plain requests in absolute
//! form, `CONNECT` for https): an `https://` or `socks5://` proxy is
//! refused at start rather than bypassed.

use std::net::IpAddr;

use http::{HeaderValue, Uri};

/// The proxies of the environment, read once at start.
#[derive(Clone, Debug, Default)]
pub struct Proxies {
    http: Option<Proxy>,
    https: Option<Proxy>,
    no_proxy: Vec<NoProxyRule>,
}

/// One proxy: where it listens and, from its URL's user info, the
/// `Proxy-Authorization` to send it.
#[derive(Clone)]
pub(crate) struct Proxy {
    /// `http://host:port` (no user info).
    pub uri: Uri,
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Proxy {
    /// The authorization is a password: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("uri", &self.uri)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a proxy variable cannot be used: its name and what is wrong (never
/// its value, which may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ProxyError {
    /// `HTTPS_PROXY`, `http_proxy`, ...
    pub variable: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum NoProxyRule {
    All,
    Ip {
        ip: IpAddr,
        port: Option<u16>,
    },
    Cidr {
        network: IpAddr,
        prefix: u8,
    },
    /// `suffix` starts with `.`; `exact` also matches the name itself.
    Domain {
        suffix: String,
        exact: bool,
        port: Option<u16>,
    },
}

impl Proxies {
    /// The proxies `env` names (the process's environment, or what an
    /// embedder hands the agent).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Proxies, ProxyError> {
        let var = |upper: &str| -> Option<(String, String)> {
            [upper.to_string(), upper.to_ascii_lowercase()]
                .into_iter()
                .find_map(|name| env(&name).filter(|v| !v.is_empty()).map(|v| (name, v)))
        };
        let cgi = env("REQUEST_METHOD").is_some_and(|v| !v.is_empty());
        let http = match var("HTTP_PROXY") {
            Some(_) if cgi => None,
            Some((name, value)) => Some(parse_proxy(&name, &value)?),
            None => None,
        };
        let https = match var("HTTPS_PROXY") {
            Some((name, value)) => Some(parse_proxy(&name, &value)?),
            None => None,
        };
        let no_proxy = var("NO_PROXY")
            .map(|(_, value)| parse_no_proxy(&value))
            .unwrap_or_default();
        Ok(Proxies {
            http,
            https,
            no_proxy,
        })
    }

    /// Whether any proxy is set.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// The proxy a request to `uri` goes through, if any.
    pub(crate) fn for_uri(&self, uri: &Uri) -> Option<&Proxy> {
        let (proxy, default_port) = match uri.scheme_str() {
            Some("https") => (self.https.as_ref()?, 443),
            Some("http") => (self.http.as_ref()?, 80),
            _ => return None,
        };
        let host = uri.host()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(default_port);
        self.uses_proxy(host, port).then_some(proxy)
    }

    fn uses_proxy(&self, host: &str, port: u16) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if host == "localhost" {
            return false;
        }
        let ip: Option<IpAddr> = host.parse().ok();
        if ip.is_some_and(|ip| ip.is_loopback()) {
            return false;
        }
        !self
            .no_proxy
            .iter()
            .any(|rule| rule.matches(&host, port, ip))
    }
}

impl NoProxyRule {
    fn matches(&self, host: &str, port: u16, ip: Option<IpAddr>) -> bool {
        let port_ok = |want: &Option<u16>| want.is_none_or(|p| p == port);
        match self {
            NoProxyRule::All => true,
            NoProxyRule::Ip { ip: want, port: p } => ip == Some(*want) && port_ok(p),
            NoProxyRule::Cidr { network, prefix } => {
                ip.is_some_and(|ip| in_network(ip, *network, *prefix))
            }
            NoProxyRule::Domain {
                suffix,
                exact,
                port: p,
            } => {
                (host.ends_with(suffix.as_str()) || (*exact && host == &suffix[1..])) && port_ok(p)
            }
        }
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let mask = |bits: u32, width: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            (!0u128 << (width - bits)) & (!0u128 >> (128 - width))
        }
    };
    match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = mask(prefix.into(), 32);
            (u32::from(a) as u128) & m == (u32::from(n) as u128) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = mask(prefix.into(), 128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// A proxy variable's value: `[http://][user[:password]@]host[:port]`.
fn parse_proxy(variable: &str, value: &str) -> Result<Proxy, ProxyError> {
    let error = |message: &str| ProxyError {
        variable: variable.to_string(),
        message: message.to_string(),
    };
    let value = value.trim();
    // Go retries a value whose scheme it does not know as `http://value`.
    let with_scheme = match value.split_once("://") {
        Some((scheme, _)) if ["http", "https", "socks5", "socks5h"].contains(&scheme) => {
            value.to_string()
        }
        _ => format!("http://{value}"),
    };
    let (scheme, rest) = with_scheme.split_once("://").unwrap_or(("http", value));
    if scheme != "http" {
        return Err(error(&format!(
            "a {scheme}:// proxy is not supported: polhost speaks to http:// proxies (CONNECT for https requests)"
        )));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let uri: Uri = format!("http://{hostport}")
        .parse()
        .map_err(|_| error("not a proxy URL ([http://][user:password@]host[:port])"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(error("the proxy URL has no host"));
    }
    // Go's transport dials port 80 when the proxy URL gives none.
    let uri: Uri = match uri.port() {
        Some(_) => uri,
        None => format!("http://{hostport}:80")
            .parse()
            .map_err(|_| error("bad host"))?,
    };
    let authorization = userinfo
        .map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |part: &str| {
                percent_decode(part).ok_or_else(|| error("bad percent-encoding in the user info"))
            };
            let credentials = format!("{}:{}", decode(user)?, decode(password)?);
            let mut value = HeaderValue::try_from(format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, credentials)
            ))
            .map_err(|_| error("the user info cannot be sent in a header"))?;
            value.set_sensitive(true);
            Ok(value)
        })
        .transpose()?;
    Ok(Proxy { uri, authorization })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `NO_PROXY`'s entries, as Go's `httpproxy.Config.init` reads them.
fn parse_no_proxy(value: &str) -> Vec<NoProxyRule> {
    let mut rules = Vec::new();
    for entry in value.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return vec![NoProxyRule::All];
        }
        if let Some((network, prefix)) = entry.split_once('/')
            && let (Ok(network), Ok(prefix)) = (network.parse::<IpAddr>(), prefix.parse::<u8>())
            && prefix <= if network.is_ipv4() { 32 } else { 128 }
        {
            rules.push(NoProxyRule::Cidr { network, prefix });
            continue;
        }
        let (host, port) = split_host_port(&entry);
        if host.is_empty() {
            continue;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            rules.push(NoProxyRule::Ip { ip, port });
            continue;
        }
        let host = host.strip_prefix('*').unwrap_or(host);
        let (suffix, exact) = match host.strip_prefix('.') {
            Some(_) => (host.to_string(), false),
            None => (format!(".{host}"), true),
        };
        rules.push(NoProxyRule::Domain {
            suffix,
            exact,
            port,
        });
    }
    rules
}

/// `host:port`, `[v6]:port`, or a bare host (with Go's `SplitHostPort`
/// failing, the whole entry is the host).
fn split_host_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(vars: &[(&str, &str)]) -> Proxies {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Proxies::from_env(&move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap()
    }

    fn via(proxies: &Proxies, url: &str) -> Option<String> {
        proxies
            .for_uri(&url.parse().unwrap())
            .map(|p| p.uri.to_string())
    }

    // The cases of Go's own httpproxy tests (proxy_test.go) that apply to
    // http:// proxies, with Go's answers.
    #[test]
    fn proxy_choice_follows_go() {
        let p = proxies(&[
            ("HTTP_PROXY", "proxy.example:3128"),
            ("https_proxy", "http://secure.example:8443"),
        ]);
        assert_eq!(
            via(&p, "http://bundles.example/b"),
            Some("http://proxy.example:3128/".into())
        );
        assert_eq!(
            via(&p, "https://bundles.example/b"),
            Some("http://secure.example:8443/".into())
        );
        // Never through a proxy: localhost and loopback addresses.
        assert_eq!(via(&p, "http://localhost:8080/"), None);
        assert_eq!(via(&p, "http://127.0.0.1/"), None);
        assert_eq!(via(&p, "http://127.1.2.3/"), None);
        assert_eq!(via(&p, "http://[::1]:80/"), None);
        // A private address is not loopback: it is proxied.
        assert!(via(&p, "http://10.0.0.1/").is_some());
        // Upper case wins; an empty value is unset.
        let p = proxies(&[
            ("HTTP_PROXY", "upper.example:1"),
            ("http_proxy", "lower.example:2"),
            ("HTTPS_PROXY", ""),
            ("https_proxy", "lower.example:3"),
        ]);
        assert_eq!(
            via(&p, "http://a.example/"),
            Some("http://upper.example:1/".into())
        );
        assert_eq!(
            via(&p, "https://a.example/"),
            Some("http://lower.example:3/".into())
        );
        // httpoxy: HTTP_PROXY is ignored under CGI, HTTPS_PROXY is not.
        let p = proxies(&[
            ("HTTP_PROXY", "proxy.example:1"),
            ("HTTPS_PROXY", "proxy.example:2"),
            ("REQUEST_METHOD", "GET"),
        ]);
        assert_eq!(via(&p, "http://a.example/"), None);
        assert!(via(&p, "https://a.example/").is_some());
    }

    #[test]
    fn no_proxy_follows_go() {
        let p = proxies(&[
            ("HTTP_PROXY", "proxy.example:3128"),
            (
                "NO_PROXY",
                " foo.com, .bar.org,*.baz.net, 10.0.0.0/8, 192.168.1.1, 172.16.0.1:8080, qux.io:81, [2001:db8::1]",
            ),
        ]);
        for (url, proxied) in [
            ("http://foo.com/", false),
            ("http://www.foo.com/", false),
            ("http://FOO.COM/", false),
            ("http://notfoo.com/", true),
            ("http://bar.org/", true),
            ("http://x.bar.org/", false),
            ("http://baz.net/", true),
            ("http://a.baz.net/", false),
            ("http://10.20.30.40/", false),
            ("http://11.0.0.1/", true),
            ("http://192.168.1.1/", false),
            ("http://192.168.1.2/", true),
            ("http://172.16.0.1:8080/", false),
            ("http://172.16.0.1/", true),
            ("http://qux.io:81/", false),
            ("http://qux.io/", true),
            ("http://[2001:db8::1]/", false),
            ("http://[2001:db8::2]/", true),
        ] {
            assert_eq!(via(&p, url).is_some(), proxied, "{url}");
        }
        let p = proxies(&[("HTTPS_PROXY", "proxy.example"), ("no_proxy", "x.com,*")]);
        assert_eq!(via(&p, "https://anything.example/"), None);
    }

    #[test]
    fn user_info_becomes_a_basic_authorization_never_shown() {
        let p = proxies(&[("HTTPS_PROXY", "http://us%40er:p%3Ass@proxy.example:3128")]);
        let proxy = p.for_uri(&"https://a.example/".parse().unwrap()).unwrap();
        assert_eq!(proxy.uri.to_string(), "http://proxy.example:3128/");
        // base64("us@er:p:ss")
        assert_eq!(
            proxy.authorization.as_ref().unwrap(),
            "Basic dXNAZXI6cDpzcw=="
        );
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("dXNA") && !shown.contains("p%3Ass"),
            "{shown}"
        );
    }

    #[test]
    fn unsupported_proxies_are_refused_naming_the_variable_not_the_value() {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "socks5://u:secret@p:1080".into());
        let error = Proxies::from_env(&env).unwrap_err().to_string();
        assert_eq!(
            error,
            "HTTPS_PROXY: a socks5:// proxy is not supported: polhost speaks to http:// proxies (CONNECT for https requests)"
        );
        let env = |name: &str| (name == "http_proxy").then(|| "http://:3128".into());
        assert_eq!(
            Proxies::from_env(&env).unwrap_err().to_string(),
            "http_proxy: the proxy URL has no host"
        );
    }
}
