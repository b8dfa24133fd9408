//! The fetcher contract as WIT text, as a plugin author builds against it
//! (`polhost plugin wit` writes these files), so nobody needs polhost's
//! repository to write a fetcher.

/// The contract's package and version.
pub const PACKAGE: &str = "polhost:fetcher@0.1.0";

/// The world a fetcher implements.
pub const WORLD: &str = "polhost:fetcher/fetcher@0.1.0";

/// Every file of the contract: (path relative to a `wit/` directory, text).
/// `fetcher.wit` first, then the WASI 0.2 packages it depends on.
pub const FILES: &[(&str, &str)] = &[
    ("fetcher.wit", include_str!("../../../wit/fetcher.wit")),
    (
        "deps/cli/cli.wit",
        include_str!("../../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../../wit/deps/http/http.wit"),
    ),
    (
        "deps/io/io.wit",
        include_str!("../../../wit/deps/io/io.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../wit/deps/sockets/sockets.wit"),
    ),
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_contract_text_names_its_package() {
        assert!(super::FILES[0].1.contains("package polhost:fetcher@0.1.0;"));
        assert_eq!(super::FILES.len(), 8);
    }
}
