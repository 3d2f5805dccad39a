//! One module per task; each has a clap `Flags` struct and a `run`.

pub mod bench;
pub mod boot_test;
pub mod cat_cpio;
pub mod doctor;
pub mod embed_payload;
pub mod full_build;
pub mod progs;
pub mod rebuild;
pub mod run_akaros;
pub mod run_cloud_hypervisor;
pub mod run_qemu;
pub mod setup_tinycore;
pub mod ssh;
pub mod stop;
pub mod tap;
pub mod test;
pub mod test_mirror;
pub mod vm_app;
pub mod vm_exec;
