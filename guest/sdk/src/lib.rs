//! Guest-side support for polhost fetchers.
//!
//! A fetcher is a WebAssembly component that implements the `polhost:fetcher`
//! world (see `wit/fetcher.wit`). This crate gives a Rust fetcher the
//! bindings, a small blocking `wasi:http` client that follows redirects
//! without leaking credentials across origins, and
//! [`http::Response::stream_into`], which
//! splices a response body into the host's output-stream so the bundle never
//! sits in guest memory.
//!
//! ```ignore
//! use polhost_fetcher::{Fetcher, Service, BundleRequest, OutputStream, FetchOutcome, FetchError};
//!
//! struct MyFetcher;
//! impl Fetcher for MyFetcher {
//!     fn fetch(service: Service, bundle: BundleRequest, body: &OutputStream)
//!         -> Result<FetchOutcome, FetchError> { todo!() }
//! }
//! polhost_fetcher::export_fetcher!(MyFetcher);
//! ```

pub mod bindings {
    //! Generated from `wit/`: the `polhost:fetcher` world and its `wasi` imports.
    wit_bindgen::generate!({
        world: "fetcher",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_fetcher",
        default_bindings_module: "polhost_fetcher::bindings",
        generate_all,
    });
}

pub mod base64;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod etag;
pub mod http;
pub mod log;
pub mod percent;
pub mod url;
pub mod xml;

pub use bindings::export_fetcher;
pub use bindings::exports::polhost::fetcher::fetch::Guest as Fetcher;
pub use bindings::polhost::fetcher::types::{
    BundleRequest, ErrorKind, FetchError, FetchOutcome, ResponseInfo, Service,
};
pub use bindings::wasi::io::streams::OutputStream;
