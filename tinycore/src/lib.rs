//! Tiny Core Linux: the mirror client (URLs, downloads, md5, cache), the
//! `.dep` resolver, and the edits that turn a stock core into our guest.

pub mod deps;
pub mod edits;
pub mod elfdeps;
pub mod ldcache;
pub mod mirror;
pub mod openssh;
pub mod setup;
