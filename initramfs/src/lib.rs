//! The initramfs: a deterministic newc cpio writer with parallel
//! compressors ([`pack`]) and an archive inspector ([`inspect`], the
//! `cat-cpio` task).

pub mod compress;
pub mod inspect;
pub mod newc;
pub mod pack;

pub use compress::Compression;
pub use inspect::{list, Listing};
pub use pack::{pack, state_path, write_newc, PackOptions, PackReport};
