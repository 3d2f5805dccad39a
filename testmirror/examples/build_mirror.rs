//! Builds the test mirror into a directory: `cargo run -p testmirror --example build_mirror -- DIR [VERSION ARCH]`.
use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .context("usage: build_mirror DIR [VERSION ARCH]")?;
    let version = args.get(2).map_or("16.x", String::as_str);
    let arch = args.get(3).map_or("x86_64", String::as_str);
    let t = std::time::Instant::now();
    let m = testmirror::build(
        camino::Utf8Path::new(dir),
        &testmirror::Layout::new(version, arch),
    )?;
    eprintln!(
        "built {} packages in {:?} under {}",
        m.packages.len(),
        t.elapsed(),
        m.root
    );
    Ok(())
}
