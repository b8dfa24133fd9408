//! Paths of the components only the tests use (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
