//! tc_root on disk: the metadata manifest, contained unpacking of cpio and
//! squashfs archives as a plain user, and the join of both for packing.

pub mod contain;
pub mod fsutil;
pub mod manifest;
pub mod meta;
pub mod unpack;
