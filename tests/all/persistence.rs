//! Persisted bundles survive crashes and bit rot: what polhost restores at
//! start is always a whole bundle that validates and matches its metadata,
//! or nothing (and it downloads again).

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

fn big_bundle(revision: &str, mib: usize, seed: u64) -> Vec<u8> {
    tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"{revision}","roots":["authz"]}}"#).into_bytes(),
        ),
        ("authz/policy.rego", b"package authz\n".to_vec()),
        ("authz/blob.bin", noise(mib << 20, seed)),
    ])
}

/// A config whose service nothing listens on: a restart "against a
/// stopped server" restores from disk only.
fn offline_config(work: &Workdir) -> std::path::PathBuf {
    let path = work.path().join("offline.yaml");
    fs::write(
        &path,
        format!(
            "services:\n  web:\n    url: http://127.0.0.1:9\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n    persist: true\n\
             persistence_directory: {}\n",
            work.state().display()
        ),
    )
    .unwrap();
    path
}

/// nginx serving `first` as `bundles/authz.tar.gz`, and a config that
/// persists it and polls every second: the server, the served file (to
/// publish the next revision to) and the config's path.
fn online(work: &Workdir, first: &[u8]) -> (Nginx, std::path::PathBuf, std::path::PathBuf) {
    let root = work.path().join("www");
    let served = root.join("bundles/authz.tar.gz");
    publish(&served, first, 0);
    let server = Nginx::start(NginxOptions {
        root,
        ..NginxOptions::default()
    });
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n    persist: true\n    polling:\n      min_delay_seconds: 1\n      max_delay_seconds: 1\n",
        server.url()
    ));
    (server, served, cfg)
}

#[test]
fn bit_rot_in_the_persisted_bundle_is_refused_at_start_and_downloaded_again() {
    let work = Workdir::new();
    let (_server, _, cfg) = online(&work, &bundle("v1"));
    let first = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(first.status.success(), "{}", first.stderr);
    let good = fs::read(work.persisted("authz")).unwrap();

    // Edited by hand: still gzip, no longer the bundle the metadata names.
    // (a flip in the gzip CRC)
    let mut rotten = good.clone();
    let crc = rotten.len() - 8;
    rotten[crc] ^= 0x40;
    fs::write(work.persisted("authz"), &rotten).unwrap();
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("persisted bundle refused: corrupt or truncated archive"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("source=Download"), "{}", run.stderr);
    assert!(!run.stderr.contains("source=Disk"), "{}", run.stderr);
    assert_eq!(fs::read(work.persisted("authz")).unwrap(), good);

    // Edited by hand into another valid bundle: its metadata no longer
    // names it.
    fs::write(work.persisted("authz"), bundle("edited")).unwrap();
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("does not match it"), "{}", run.stderr);
    assert!(!run.stderr.contains("revision=edited"), "{}", run.stderr);
    assert!(run.stderr.contains("source=Download"), "{}", run.stderr);
}

#[test]
fn mismatched_metadata_falls_back_to_the_previous_pair() {
    let work = Workdir::new();
    let (_server, served, cfg) = online(&work, &bundle("v1"));
    assert!(
        polhost(&["run", "--once", cfg.to_str().unwrap()], &[])
            .status
            .success()
    );
    let v1 = fs::read(work.persisted("authz")).unwrap();
    publish(&served, &bundle("v2-longer"), 10);
    assert!(
        polhost(&["run", "--once", cfg.to_str().unwrap()], &[])
            .status
            .success()
    );
    assert_eq!(work.metadata("authz")["revision"], "v2-longer");

    // A crash between the bundle's rename and the metadata's: the new
    // bundle with the old metadata.
    let meta = work.persisted("authz").with_file_name("metadata.json");
    fs::copy(meta.with_file_name("previous.metadata.json"), &meta).unwrap();
    let run = polhost(
        &["run", "--once", offline_config(&work).to_str().unwrap()],
        &[],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("does not match it"), "{}", run.stderr);
    assert!(
        run.stderr.contains("revision=v1 ") && run.stderr.contains("source=Disk"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read(work.persisted("authz")).unwrap(), v1);
}

#[test]
fn sigkill_while_persisting_leaves_the_old_or_the_new_bundle() {
    let work = Workdir::new();
    // Two large bundles of different sizes (distinct nginx etags).
    let a = big_bundle("A", 24, 1);
    let b = big_bundle("B", 25, 2);
    let sha = |bytes: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let (sha_a, sha_b) = (sha(&a), sha(&b));
    let (_server, served, cfg) = online(&work, &a);
    let offline = offline_config(&work);

    // The first download, timed: kills land across a window this long.
    let start = Instant::now();
    let first = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    first.wait_for_activation("A", "Download");
    // Later runs first restore (validate) the persisted bundle, then
    // download: a wider window.
    let window = start.elapsed().mul_f64(2.5);
    drop(first);

    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("sigkill test: window {window:?}, seed {seed}");
    let mut current = "A";
    let (mut saw_old, mut saw_new) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(50);
    for iteration in 0..20 {
        if Instant::now() > deadline {
            break;
        }
        let next = if current == "A" { "B" } else { "A" };
        publish(
            &served,
            if next == "A" { &a } else { &b },
            10 * (iteration + 1),
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = window.mul_f64((seed % 1000) as f64 / 1000.0);
        let mut running = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
        std::thread::sleep(delay);
        let _ = running.terminate_now();

        let run = polhost(&["run", "--once", offline.to_str().unwrap()], &[]);
        assert!(
            run.status.success(),
            "iteration {iteration} (killed after {delay:?}): nothing restored\n{}",
            run.stderr
        );
        let on_disk = sha(&fs::read(work.persisted("authz")).unwrap());
        let restored = if on_disk == sha_a {
            "A"
        } else if on_disk == sha_b {
            "B"
        } else {
            panic!("iteration {iteration}: torn bundle on disk (sha256 {on_disk})");
        };
        assert!(
            run.stderr.contains(&format!("revision={restored} "))
                && run.stderr.contains("source=Disk"),
            "iteration {iteration}: restored {restored}?\n{}",
            run.stderr
        );
        if restored == current {
            saw_old += 1;
        } else {
            saw_new += 1;
        }
        current = restored;
    }
    eprintln!("sigkill test: old kept {saw_old} times, new kept {saw_new} times");
    assert!(saw_old + saw_new >= 10, "too few iterations ran");
}

/// A run of `cfg` that must be refused at start (exit 1), with `needles`
/// in its message.
fn refused_at_start(cfg: &std::path::Path, needles: &[&str]) -> String {
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            run.stderr
        );
    }
    run.stderr
}

#[test]
fn a_symlink_planted_in_the_persistence_directory_is_refused_not_followed() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let work = Workdir::new();
    let (_server, _, cfg) = online(&work, &bundle("v1"));
    let state = work.state();
    let bundles = state.join("bundles");
    // What another user's link points at: a directory polhost must neither
    // write into nor clean (it holds a temp-looking file), and a file it
    // must not overwrite.
    let victim = work.path().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join(".download-theirs.tmp"), b"theirs").unwrap();
    fs::write(victim.join("precious"), b"precious").unwrap();
    let untouched = |why: &str| {
        let mut names: Vec<_> = fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".download-theirs.tmp", "precious"], "{why}");
        assert_eq!(
            fs::read(victim.join("precious")).unwrap(),
            b"precious",
            "{why}"
        );
    };

    // The bundle's directory as a link.
    fs::create_dir_all(&bundles).unwrap();
    symlink(&victim, bundles.join("authz")).unwrap();
    refused_at_start(
        &cfg,
        &[
            "persistence_directory",
            &format!(
                "{}: not a directory (a symbolic link): refused",
                bundles.join("authz").display()
            ),
        ],
    );
    untouched("bundles/authz -> victim");

    // `bundles/` itself as a link.
    fs::remove_file(bundles.join("authz")).unwrap();
    fs::remove_dir(&bundles).unwrap();
    fs::create_dir(victim.join("authz")).unwrap();
    symlink(&victim, &bundles).unwrap();
    refused_at_start(
        &cfg,
        &[&format!(
            "{}: not a directory (a symbolic link): refused",
            bundles.display()
        )],
    );
    fs::remove_dir(victim.join("authz")).unwrap();
    untouched("bundles -> victim");

    // The bundle file as a link to a file elsewhere.
    fs::remove_file(&bundles).unwrap();
    fs::create_dir_all(bundles.join("authz")).unwrap();
    symlink(victim.join("precious"), work.persisted("authz")).unwrap();
    refused_at_start(
        &cfg,
        &[&format!(
            "{}: not a regular file (a symbolic link): refused",
            work.persisted("authz").display()
        )],
    );
    untouched("bundle.tar.gz -> victim/precious");
    fs::remove_file(work.persisted("authz")).unwrap();

    // A directory others may write (they could plant a link any time).
    fs::set_permissions(&bundles, fs::Permissions::from_mode(0o777)).unwrap();
    refused_at_start(
        &cfg,
        &[&format!(
            "{}: writable by group or others (mode 777): refused",
            bundles.display()
        )],
    );
    fs::set_permissions(&bundles, fs::Permissions::from_mode(0o755)).unwrap();

    // A persistence directory of another user (as root: polhost's tests
    // run as root, so chown works).
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
        refused_at_start(
            &cfg,
            &[&format!(
                "{}: owned by uid 65534, not by polhost's user (uid 0): refused",
                state.display()
            )],
        );
        std::os::unix::fs::chown(&state, Some(0), None).unwrap();
    }

    // All put right: the bundle is downloaded into the real directory.
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(work.persisted("authz").is_file());
    untouched("after a good run");
}

#[test]
fn a_bundle_directory_swapped_for_a_symlink_while_running_fails_the_download_and_keeps_the_bundle()
{
    let work = Workdir::new();
    let (_server, served, cfg) = online(&work, &bundle("v1"));
    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    let v1 = fs::read(work.persisted("authz")).unwrap();

    // Another user swaps the directory for a link to one of theirs (here:
    // the real directory, moved away, so its content shows what changed).
    let dir = work.persisted("authz").parent().unwrap().to_path_buf();
    let victim = work.path().join("victim");
    fs::rename(&dir, &victim).unwrap();
    std::os::unix::fs::symlink(&victim, &dir).unwrap();
    publish(&served, &bundle("v2-longer"), 10);

    polhost.wait_for(&[
        "bundle download failed",
        &format!(
            "{}: not a directory (a symbolic link): refused",
            dir.display()
        ),
    ]);
    assert!(
        !polhost.output().contains("revision=v2-longer"),
        "{}",
        polhost.output()
    );
    assert_eq!(fs::read(victim.join("bundle.tar.gz")).unwrap(), v1);
    let names: Vec<_> = fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".download-"))
        .collect();
    assert!(
        names.is_empty(),
        "temp files written through the link: {names:?}"
    );
}

#[test]
fn a_second_instance_on_the_same_persistence_directory_is_refused_and_leaves_the_first_alone() {
    let work = Workdir::new();
    let root = work.path().join("www");
    // 320 KiB at 32 KiB/s: the first instance's download is in flight, its
    // temp file open, for about ten seconds.
    let slow = tar_gz(&[
        (
            ".manifest",
            br#"{"revision":"slow","roots":["authz"]}"#.to_vec(),
        ),
        ("authz/policy.rego", b"package authz\n".to_vec()),
        ("authz/blob.bin", noise(320 << 10, 3)),
    ]);
    publish(&root.join("bundles/authz.tar.gz"), &slow, 0);
    let nginx = Nginx::start(NginxOptions {
        root,
        server_directives: b"limit_rate 32k;\n".to_vec(),
        ..NginxOptions::default()
    });
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n    persist: true\n",
        nginx.url()
    ));
    let first = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    let dir = work.persisted("authz").parent().unwrap().to_path_buf();
    let temp_files = || -> Vec<String> {
        fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n.starts_with(".download-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + PATIENCE;
    while temp_files().is_empty() {
        assert!(Instant::now() < deadline, "no download in flight");
        std::thread::sleep(Duration::from_millis(20));
    }
    let in_flight = temp_files();

    let second = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "persistence_directory {}: in use by another polhost (pid {};",
            work.state().display(),
            first.pid()
        )),
        "{}",
        second.stderr
    );
    assert_eq!(temp_files(), in_flight, "the second instance touched them");
    // Checking a configuration takes no lock and touches nothing.
    let check = polhost(&["config", "check", cfg.to_str().unwrap()], &[]);
    assert!(check.status.success(), "{}", check.stderr);

    // The first one's download completes into its temp file.
    first.wait_for_activation("slow", "Download");
    assert!(
        !first.output().contains("bundle download failed"),
        "{}",
        first.output()
    );
    assert_eq!(work.metadata("authz")["revision"], "slow");
}
