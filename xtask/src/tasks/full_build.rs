//! `cargo xtask full-build`: the old `full_guest_build.sh`. Configures the
//! kernel, builds the guest programs, sets Tiny Core up (with the programs,
//! CUSTOM_BINARIES, CUSTOM_REMOVALS and ssh keys), then rebuilds: modules,
//! initramfs, vmlinux and bzImage. Optionally copies the results elsewhere.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;

use crate::config::{Config, Overrides};
use crate::tasks::rebuild::{self, KernelBuild};
use crate::tasks::{progs, setup_tinycore};

#[derive(clap::Args)]
pub struct Flags {
    #[command(flatten, next_help_heading = "Tiny Core (as setup-tinycore)")]
    setup: setup_tinycore::Flags,
    #[command(flatten, next_help_heading = "Kernel and initramfs (as rebuild)")]
    rebuild: rebuild::Flags,
    /// Do not build progs/ nor install them (tinyreboot & co.) into the guest
    #[arg(long, help_heading = "Full build")]
    no_progs: bool,
    /// Also copy the private ssh key into the guest (for ssh from the guest to `host`)
    #[arg(long, help_heading = "Full build")]
    copy_private_key: bool,
    /// Afterwards copy vmlinux, bzImage and the initramfs there with scp
    #[arg(long, value_name = "HOST:DIR", help_heading = "Full build")]
    deploy: Option<String>,
}

impl Flags {
    pub fn apply(&self, o: &mut Overrides) {
        self.setup.apply(o);
        self.rebuild.apply(o);
    }
}

pub fn run(c: &Config, f: &Flags) -> Result<()> {
    let start = Instant::now();
    if f.setup.dry_run {
        // Only the package resolution, as `setup-tinycore --dry-run`.
        return setup_tinycore::run(c, &f.setup);
    }
    if let Some(target) = &f.deploy {
        check_deploy_target(target)?;
    }

    // 1-2. The kernel first: a wrong --linux or a missing compiler should
    // fail before minutes of downloading and unpacking.
    let kernel = if c.skip_kernel.value {
        None
    } else {
        let k = KernelBuild::prepare(c, &f.rebuild.kernel)?;
        k.configure(&f.rebuild.kernel.kernel_config(c))?;
        Some(k)
    };

    // 3. The guest programs, which become the first CUSTOM_BINARIES as
    // progs/bin/tinyreboot was for the scripts.
    let progs = if f.no_progs {
        Vec::new()
    } else {
        progs::build(&c.workspace)
            .context("building the guest programs (progs/) failed; fix it or pass --no-progs")?
    };

    // 4-7. Tiny Core, the binaries, removals and ssh keys.
    let mut plan = setup_tinycore::plan(c, &f.setup);
    plan.custom_binaries.splice(0..0, progs);
    plan.copy_private_key |= f.copy_private_key;
    setup_tinycore::run_plan(&plan)?;

    // 8. Modules, initramfs, kernel.
    rebuild::run_with(c, &f.rebuild, kernel.as_ref())?;

    // 9. Elsewhere.
    if let Some(target) = &f.deploy {
        deploy(c, f, target)?;
    }
    eprintln!("full build done in {:.1?}", start.elapsed());
    Ok(())
}

/// `HOST:DIR` as scp understands it; a bare path would make scp copy
/// locally, which is not what `--deploy` means.
fn check_deploy_target(target: &str) -> Result<()> {
    match target.split_once(':') {
        Some((host, _)) if !host.is_empty() && !host.contains('/') => Ok(()),
        _ => bail!(
            "--deploy {target}: expected HOST:DIR (e.g. buildbox:/srv/guest), as scp takes it"
        ),
    }
}

fn deploy(c: &Config, f: &Flags, target: &str) -> Result<()> {
    let build = &c.build_dir.value;
    let initramfs = f
        .rebuild
        .output
        .clone()
        .unwrap_or_else(|| rebuild::default_output(c, &f.rebuild.compression));
    let mut files: Vec<Utf8PathBuf> = Vec::new();
    if !c.skip_kernel.value {
        files.push(build.join("vmlinux"));
        files.push(build.join("bzImage"));
    }
    files.push(initramfs);
    let count = files.len();
    let sh = xshell::Shell::new()?;
    let dest = format!("{}/", target.trim_end_matches('/'));
    xshell::cmd!(sh, "scp -q -p {files...} {dest}")
        .run()
        .with_context(|| format!("copying {count} files to {target} with scp failed"))?;
    eprintln!("deployed to {target}");
    Ok(())
}
