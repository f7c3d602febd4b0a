//! Palisade's integration tests: real `palisade` processes (started by the test kit), real
//! clients and peers. One test binary, a module per area, so the suite links once.

mod acme;
mod admin;
mod bot;
mod cluster;
mod cluster_port;
mod connections;
mod edge;
mod ip_rules;

/// The `palisade` binary under test.
fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_palisade"))
}
