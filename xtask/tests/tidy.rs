//! Tidy checks, as ordinary tests: the README stays true, the code needs no
//! root, the tree is formatted.

use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Subcommand names from `xtask help`.
fn tasks() -> Vec<String> {
    let out = Command::new(XTASK).arg("help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| *t != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_documents_every_task() {
    let readme = read("README.md");
    let tasks = tasks();
    assert!(tasks.len() >= 8, "could not read the task list: {tasks:?}");
    for t in tasks {
        assert!(
            readme.contains(&format!("`{t}")),
            "README.md does not document the task `{t}`"
        );
    }
}

#[test]
fn readme_documents_every_environment_variable() {
    let readme = read("README.md");
    let mut sources = read("xtask/src/config.rs");
    sources.push_str(&read("testmirror/src/tools.rs"));
    sources.push_str(&read("initramfs/src/pack.rs"));
    let mut seen = 0;
    for (i, _) in sources
        .match_indices("env(\"")
        .chain(sources.match_indices("env::var(\""))
    {
        let rest = &sources[i..];
        let start = rest.find('"').unwrap() + 1;
        let name = &rest[start..start + rest[start..].find('"').unwrap()];
        if name == "CI" || name == "PATH" || name == "HOME" {
            continue;
        }
        seen += 1;
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not document the variable {name}"
        );
    }
    assert!(
        seen >= 10,
        "found only {seen} variables: is the scan broken?"
    );
}

#[test]
fn no_sudo_in_code() {
    let out = Command::new("git")
        .args([
            "grep",
            "-n",
            "-I",
            "-E",
            r"(^|[;&|(`]|\$\(|then|do|else)[[:space:]]*sudo[[:space:]]",
            "--",
            "*.rs",
            "*.sh",
            ".ci/*",
        ])
        .current_dir(workspace())
        .output()
        .unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    let hits: Vec<&str> = hits.lines().filter(|l| !l.contains("tidy.rs")).collect();
    assert!(
        hits.is_empty(),
        "the tools must never need root, but these lines call sudo:\n{}",
        hits.join("\n")
    );
}

#[test]
fn formatted() {
    let Some(_) =
        testmirror::tools::require_tool("rustfmt", "rustfmt (rustup component add rustfmt)")
    else {
        return;
    };
    // progs/ is its own workspace (excluded from the root one): check it too.
    for dir in [workspace(), workspace().join("progs")] {
        let out = Command::new("cargo")
            .args(["fmt", "--all", "--check"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run `cargo fmt --all` in {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
