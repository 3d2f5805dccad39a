//! initramfs
