//! Host bindings for the `polhost:fetcher` world (`wit/fetcher.wit`).
//!
//! `wasi:*` interfaces map onto wasmtime-wasi's and wasmtime-wasi-http's
//! implementations, so the `output-stream` a fetcher writes the bundle into
//! is an ordinary WASI stream on this side.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "fetcher",
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:cli": wasmtime_wasi::p2::bindings::cli,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
    require_store_data_send: true,
});

pub use self::polhost::fetcher::types::{
    BundleRequest, ErrorKind, FetchError as GuestError, FetchOutcome, ResponseInfo, Service,
};
