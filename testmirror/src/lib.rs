//! A Tiny Core-shaped mirror that tests and benchmarks build themselves,
//! and the HTTP server that serves it on 127.0.0.1.

pub mod tools;
