//! tinycore
