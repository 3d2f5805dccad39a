//! Running the guest: the VMM command lines the old README used, made
//! into code (QEMU, Cloud Hypervisor, Akaros' vmrunkernel), host tap
//! networking, ssh into the guest, and a terminal that is restored however
//! the VMM exits.

pub mod akaros;
pub mod boot;
pub mod cloud_hypervisor;
pub mod exec;
pub mod qemu;
pub mod ssh;
pub mod tap;
pub mod terminal;
