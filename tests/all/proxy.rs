//! `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` through a real forward proxy,
//! squid (harness/proxy.rs). Go (and so OPA) never proxies `localhost` or
//! loopback addresses, and neither does polhost: the bundle server is
//! reached by a name, `bundles.test`, that only squid resolves (to
//! 127.0.0.1, from its own hosts file), so a request that reached the
//! server went through the proxy.

use std::net::Ipv4Addr;

use crate::harness::nginx::{Nginx, NginxOptions, NginxTls};
use crate::harness::proxy::Squid;
use crate::harness::tls::TestCa;
use crate::support::*;

const NAME: &str = "bundles.test";

fn squid() -> Squid {
    Squid::start(&[(NAME, Ipv4Addr::LOCALHOST.into())])
}

/// nginx serving `bundles/authz.tar.gz` at v1, over TLS with `ca`'s
/// certificate when given.
fn bundle_server(work: &Workdir, ca: Option<&TestCa>) -> Nginx {
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    Nginx::start(NginxOptions {
        root,
        tls: ca.map(|ca| NginxTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            client_ca: None,
        }),
        ..NginxOptions::default()
    })
}

/// `polhost run --once` on bundle `authz` of service `web` at `url`.
fn run_once(work: &Workdir, url: &str, service_extra: &str, env: &[(&str, &str)]) -> Finished {
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {url}\n{service_extra}bundles:\n  authz:\n    service: web\n    resource: bundles/authz.tar.gz\n"
    ));
    polhost(&["run", "--once", cfg.to_str().unwrap()], env)
}

#[test]
fn http_proxy_forwards_plain_requests_in_absolute_form() {
    let work = Workdir::new();
    let server = bundle_server(&work, None);
    let proxy = squid();
    let url = format!("http://{NAME}:{}", server.port());
    let run = run_once(
        &work,
        &url,
        "",
        &[("HTTP_PROXY", &format!("127.0.0.1:{}", proxy.port()))],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("bundle activated"), "{}", run.stderr);
    let log = proxy.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].url, format!("{url}/bundles/authz.tar.gz"));
    assert_eq!(log[0].status, 200);
    let served = server.access_log();
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0].status, 200);
}

#[test]
fn https_proxy_tunnels_with_connect_and_the_origin_certificate_is_checked_inside() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let server = bundle_server(&work, Some(&ca));
    let proxy = squid();
    let url = format!("https://{NAME}:{}", server.port());
    let env = [("HTTPS_PROXY", proxy.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Through the tunnel, TLS is with the origin: its CA must be trusted.
    let refused = run_once(&work, &url, "", &env);
    assert!(!refused.status.success(), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("GET {url}/bundles/authz.tar.gz"))
            && refused.stderr.contains("UnknownIssuer"),
        "{}",
        refused.stderr
    );

    let trust = format!("    tls:\n      ca_cert: {}\n", ca.ca_cert.display());
    let fetched = run_once(&work, &url, &trust, &env);
    assert!(fetched.status.success(), "{}", fetched.stderr);
    assert!(
        fetched.stderr.contains("bundle activated"),
        "{}",
        fetched.stderr
    );
    let log = proxy.access_log();
    let tunnels: Vec<_> = log.iter().filter(|a| a.method == "CONNECT").collect();
    assert_eq!(tunnels.len(), 2, "{log:?}");
    assert!(
        tunnels
            .iter()
            .all(|a| a.url == format!("{NAME}:{}", server.port()) && a.status == 200),
        "{log:?}"
    );
    assert_eq!(log.len(), 2, "only tunnels, no plain request: {log:?}");
    assert!(server.access_log().iter().any(|a| a.status == 200));
}

#[test]
fn no_proxy_and_loopback_go_direct() {
    let work = Workdir::new();
    let server = bundle_server(&work, None);
    let proxy = squid();
    // NO_PROXY names the host: polhost connects itself, and the name that
    // only squid knows does not resolve.
    let run = run_once(
        &work,
        &format!("http://{NAME}:{}", server.port()),
        "",
        &[
            ("HTTP_PROXY", &proxy.url()),
            ("NO_PROXY", ".example, bundles.test"),
        ],
    );
    assert!(!run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "GET http://{NAME}:{}/bundles/authz.tar.gz",
            server.port()
        )),
        "{}",
        run.stderr
    );
    // A loopback address is never proxied (as in Go), whatever NO_PROXY says.
    let run = run_once(&work, &server.url(), "", &[("HTTP_PROXY", &proxy.url())]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(proxy.access_log().is_empty(), "{:?}", proxy.access_log());
    assert_eq!(server.access_log().len(), 1);
}

#[test]
fn an_unsupported_proxy_exits_2_naming_the_variable_and_not_its_password() {
    let work = Workdir::new();
    let run = run_once(
        &work,
        "https://bundles.example",
        "",
        &[("HTTPS_PROXY", "socks5://user:pr0xy-s3cret@127.0.0.1:1080")],
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("HTTPS_PROXY: a socks5:// proxy is not supported"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pr0xy-s3cret"), "{}", run.stderr);
}
