//! OPA's bundle rules seen from outside: a bundle that breaks them is never
//! activated, and the refusal says which file or which roots.

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

fn with_roots(revision: &str, root: &str) -> Vec<u8> {
    tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"{revision}","roots":["{root}"]}}"#).into_bytes(),
        ),
        (
            &format!("{root}/policy.rego"),
            format!("package {}\n", root.replace('/', ".")).into_bytes(),
        ),
    ])
}

/// Serves `bundles` (name, bytes) and runs `polhost run --once` on them.
fn run_bundles(bundles: &[(&str, Vec<u8>)]) -> Finished {
    let work = Workdir::new();
    let root = work.path().join("www");
    for (name, bytes) in bundles {
        publish(&root.join(format!("bundles/{name}")), bytes, 0);
    }
    let server = Nginx::start(NginxOptions {
        root,
        ..NginxOptions::default()
    });
    let mut cfg = format!("services:\n  web:\n    url: {}\nbundles:\n", server.url());
    for (name, _) in bundles {
        cfg.push_str(&format!("  {name}:\n    persist: true\n"));
    }
    let cfg = work.config(&cfg);
    polhost(&["run", "--once", cfg.to_str().unwrap()], &[])
}

#[test]
fn second_bundle_with_overlapping_roots_is_not_activated() {
    let run = run_bundles(&[
        ("one", with_roots("r1", "authz")),
        ("two", with_roots("r2", "authz/admin")),
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let refused = run
        .stderr
        .lines()
        .find(|l| l.contains("not activated: its root"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{}", run.stderr));
    // Whichever came second names both roots and the bundle it collides with.
    assert!(
        (refused.contains(r#"bundle "two" not activated: its root "authz/admin" overlaps root "authz" of active bundle "one""#))
            || (refused.contains(r#"bundle "one" not activated: its root "authz" overlaps root "authz/admin" of active bundle "two""#)),
        "{refused}"
    );
    assert_eq!(
        run.stderr.matches("bundle activated").count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn bundles_with_disjoint_roots_are_both_activated() {
    let run = run_bundles(&[
        ("one", with_roots("r1", "authz")),
        ("two", with_roots("r2", "authzadmin")),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("bundle activated").count(),
        2,
        "{}",
        run.stderr
    );
}

#[test]
fn package_outside_the_roots_is_refused_naming_the_file() {
    let bad = tar_gz(&[
        (".manifest", br#"{"roots":["authz"]}"#.to_vec()),
        ("authz/policy.rego", b"package billing\n".to_vec()),
    ]);
    let run = run_bundles(&[("one", bad)]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            r#"invalid bundle: authz/policy.rego: package "billing" is outside the manifest roots ["authz"]"#
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn delta_bundle_is_refused_as_not_supported() {
    let delta = tar_gz(&[
        (".manifest", br#"{"revision":"d1"}"#.to_vec()),
        (
            "patch.json",
            br#"{"data":[{"op":"upsert","path":"/a","value":1}]}"#.to_vec(),
        ),
    ]);
    let run = run_bundles(&[("one", delta)]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("patch.json: delta bundles (patch.json) are not supported"),
        "{}",
        run.stderr
    );
}

#[test]
fn polhost_bundle_caps_from_the_config_are_applied() {
    // Text that deflates well under the default 200:1 but above 3:1.
    let text: Vec<u8> = (0..4 << 20)
        .map(|i: u32| b"abcdefghij"[(i as usize / 7 + i as usize / 97) % 10])
        .collect();
    let lax = tar_gz(&[
        (".manifest", br#"{"roots":["authz"]}"#.to_vec()),
        ("authz/big.txt", text),
    ]);
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/one"), &lax, 0);
    let server = Nginx::start(NginxOptions {
        root,
        ..NginxOptions::default()
    });
    let base = format!(
        "services:\n  web:\n    url: {}\nbundles:\n  one:\n    persist: true\n",
        server.url()
    );
    let cfg = work.config(&base);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);

    let strict = format!("{base}polhost:\n  bundle:\n    max_expansion_ratio: 3\n");
    std::fs::remove_dir_all(work.state()).unwrap();
    let cfg = work.config(&strict);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("gzip bomb refused")
            && run.stderr.contains("exceeds max_expansion_ratio (3)"),
        "{}",
        run.stderr
    );
}
