//! The hostile-bundle corpus: `tests/fixtures/make_hostile_corpus.py`
//! writes each archive and the error polhost must refuse it with; every one
//! goes through the validator polhost runs on downloads and at start.

use std::process::Command;

use polhost::bundle::{ValidationLimits, validate};

/// Runs the generator into a fresh directory and returns it.
pub fn generate() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let script = crate::harness::fixture("make_hostile_corpus.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(out.path())
        .status()
        .expect("running python3 (install it: tests/harness/install.sh)");
    assert!(status.success(), "{} failed", script.display());
    out
}

#[test]
fn every_hostile_bundle_is_refused_with_its_expected_error() {
    let corpus = generate();
    let expected: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(corpus.path().join("expected.json")).unwrap())
            .unwrap();
    assert!(expected.len() >= 20, "corpus too small: {}", expected.len());
    let mut failures = Vec::new();
    for case in &expected {
        let file = case["file"].as_str().unwrap();
        let want = case["error"].as_str().unwrap();
        let mut limits = ValidationLimits::new(1 << 30);
        let overrides = &case["limits"];
        if let Some(n) = overrides["file_size_limit"].as_u64() {
            limits.file_size_limit = n;
        }
        if let Some(n) = overrides["max_uncompressed_bytes"].as_u64() {
            limits.max_uncompressed_bytes = n;
        }
        let reader = std::fs::File::open(corpus.path().join(file)).unwrap();
        match validate(std::io::BufReader::new(reader), limits) {
            Ok(summary) => failures.push(format!("{file}: accepted ({summary:?})")),
            Err(e) if e.to_string().contains(want) => {}
            Err(e) => failures.push(format!("{file}: got {e:?} / {e}\n   want: {want}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A 352-byte data.yaml that expands to 10^9 scalars ("billion laughs"):
/// refused by the YAML alias budget at once, naming the file, where
/// serde_yaml grew past 1 GiB.
#[test]
fn a_data_yaml_alias_bomb_is_refused_quickly_naming_the_file() {
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 10].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(bomb.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "a/data.yaml", bomb.as_bytes())
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
    let bundle = gz.finish().unwrap();
    let started = std::time::Instant::now();
    let err = validate(std::io::Cursor::new(bundle), ValidationLimits::new(1 << 30))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("a/data.yaml: invalid data.yaml: YAML alias budget exceeded"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}

/// A tar stream of `files` regular files of `size` bytes each, made while
/// it is read: the bundle never exists in memory or on disk.
struct TarStream {
    files: u64,
    size: u64,
    next_file: u64,
    block: Vec<u8>,
    pos: usize,
    remaining: u64,
    ended: bool,
}

impl std::io::Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.block.len() {
            let n = buf.len().min(self.block.len() - self.pos);
            buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        if self.remaining > 0 {
            let n = (buf.len() as u64).min(self.remaining) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = b'a' + ((self.remaining as usize + i) % 26) as u8;
            }
            self.remaining -= n as u64;
            return Ok(n);
        }
        if self.next_file < self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(self.size);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header
                .set_path(format!("authz/blob{}.bin", self.next_file))
                .unwrap();
            header.set_cksum();
            self.block = header.as_bytes().to_vec();
            self.pos = 0;
            self.remaining = self.size;
            self.next_file += 1;
            return self.read(buf);
        }
        if !self.ended {
            self.ended = true;
            self.block = vec![0; 1024];
            self.pos = 0;
            return self.read(buf);
        }
        Ok(0)
    }
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Validates a 2 GiB bundle and prints the peak RSS before and after.
/// Run alone, in its own process, by the test below (other tests in this
/// process would blur the measurement).
#[test]
#[ignore = "a probe run in its own process by a_2_gib_bundle_validates_in_constant_memory"]
fn rss_probe_2_gib() {
    // Stored (level 0) gzip: cheap to make, the same work to validate.
    const SIZE: u64 = 256 << 20;
    let tar = TarStream {
        files: 8,
        size: SIZE,
        next_file: 0,
        block: Vec::new(),
        pos: 0,
        remaining: 0,
        ended: false,
    };
    // File sizes are multiples of 512: no padding between entries.
    let gz = flate2::read::GzEncoder::new(tar, flate2::Compression::none());
    let before = vm_hwm_kib();
    let summary = polhost::bundle::validate_stream(gz, ValidationLimits::new(1 << 30), None)
        .unwrap()
        .finish(|| -> std::io::Result<std::fs::File> { panic!("no second look needed") })
        .unwrap();
    let after = vm_hwm_kib();
    assert_eq!(summary.uncompressed_bytes, 8 * SIZE);
    println!("RSS-PROBE {before} {after}");
}

#[test]
fn a_2_gib_bundle_validates_in_constant_memory() {
    let probe = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hostile_corpus::rss_probe_2_gib",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RSS-PROBE ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no probe output: {stdout}"));
    let mut numbers = line.split_whitespace();
    let (before, after) = (numbers.next().unwrap(), numbers.next().unwrap());
    let (before, after): (u64, u64) = (before.parse().unwrap(), after.parse().unwrap());
    eprintln!("validated 2 GiB: peak RSS {before} KiB before, {after} KiB after");
    assert!(
        after - before < 32 * 1024,
        "peak RSS grew by {} KiB",
        after - before
    );
}
