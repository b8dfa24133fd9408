//! polhost's integration tests: one binary (it links once), each module a
//! behaviour a user relies on, run against real servers that `harness`
//! starts on 127.0.0.1 (install them with `tests/harness/install.sh`).

mod harness;
mod hostile_corpus;
mod in_process;
mod support;

mod addresses;
mod azure;
mod bad_downloads;
mod bundle_rules;
mod cli_config;
mod data_at_scale;
mod embedding;
mod gcs;
mod hostile_components;
mod http_fetcher;
mod local_api;
mod long_polling;
mod lying_servers;
mod oci;
mod opa;
mod persistence;
mod plugin_etcd;
mod plugin_python;
mod plugins;
mod proxy;
mod s3;
mod sandbox;
mod sandbox_limits;
mod signatures;
mod tls;
mod tls_stores;
