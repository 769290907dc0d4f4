//! Black-box tests of the `incidentlog` binary: each test starts the real server on
//! 127.0.0.1:0 with a temporary data dir and talks HTTP/1.1 to it over a plain TCP socket.
#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;

mod appends;
mod auth;
mod cli;
mod errors;
mod lifecycle;
mod seed;
mod sse;
