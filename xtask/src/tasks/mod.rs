//! One module per task; each has a clap `Flags` struct and a `run`.

pub mod bench;
pub mod cat_cpio;
pub mod doctor;
pub mod embed_payload;
pub mod rebuild;
pub mod setup_tinycore;
pub mod test;
pub mod test_mirror;
