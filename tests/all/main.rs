//! polhost's integration tests: one binary (it links once), each module a
//! behaviour a user relies on, run against real servers that `harness`
//! starts on 127.0.0.1 (install them with `tests/harness/install.sh`).

mod harness;
mod hostile_corpus;
mod support;

mod bad_downloads;
mod bundle_rules;
mod cli_config;
mod http_fetcher;
mod long_polling;
mod persistence;
mod sandbox;
mod signatures;
