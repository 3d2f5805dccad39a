//! The guest kernel: where its source comes from, its `.config`, Kbuild,
//! and its modules.
//!
//! The flow the `rebuild`/`full-build` tasks follow:
//!
//! 1. [`Source::locate`] a kernel tree or a `linux-source-*.tar.xz`
//!    (unpacked once into the build directory);
//! 2. [`prereq::check_host`] before anything slow starts;
//! 3. [`configure`] copies `kernel.config` to `.config`, runs
//!    `make olddefconfig` and reports what Kconfig dropped or changed;
//! 4. [`initramfs_source`] says whether the `.config` embeds an initramfs
//!    (the caller packs it there first);
//! 5. [`build`] runs `make vmlinux bzImage modules` and `modules_install`;
//! 6. [`install_modules`] copies the modules into tc_root (or
//!    [`remove_tinycore_modules`] when the kernel is not rebuilt).

pub mod config;
pub mod make;
pub mod modules;
pub mod prereq;
pub mod source;

pub use config::{
    compare_configs, configure, initramfs_source, initramfs_source_path, parse_config, ConfigIssue,
    ConfigReport, ConfigValue,
};
pub use make::{build, kernel_release, relink, BuildOptions, BuildOutputs};
pub use modules::{install_modules, remove_tinycore_modules, ModulesReport};
pub use prereq::check_host;
pub use source::{no_source_message, suggest_sources, Origin, Source};
