//! Tiny Core `.dep` files and the recursive dependency resolver.
//!
//! Package names are handled **without** the `.tcz` suffix everywhere in
//! this module (`openssh`, not `openssh.tcz`); [`normalize_name`] strips it
//! from whatever the user or a `.dep` file wrote.

use std::collections::{HashMap, HashSet};
use std::fmt;

use anyhow::{Context, Result};

/// What to do with kernel-specific dependencies (`NAME-KERNEL.tcz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelDeps {
    /// Leave them out: we build our own kernel, TC's modules would not load.
    Skip,
    /// Replace `KERNEL` with this release (what TC does with `uname -r`),
    /// e.g. `6.12.11-tinycore64`.
    Substitute(String),
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Every package once, dependencies before the packages needing them.
    pub order: Vec<String>,
    /// Kernel-specific dependencies left out ([`KernelDeps::Skip`]), as
    /// written (e.g. `fuse-KERNEL`), each once, in order of discovery.
    pub skipped_kernel: Vec<String>,
    /// Dependency loops, each once, as the edge `(from, to)` that closed the
    /// loop and was ignored (TC warns "loop dependency" and goes on).
    pub cycles: Vec<(String, String)>,
}

impl Resolution {
    /// Human-readable notes about skipped kernel deps and loops.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for k in &self.skipped_kernel {
            w.push(format!(
                "skipped kernel-specific dependency {k}.tcz (we build our own kernel and modules)"
            ));
        }
        for (a, b) in &self.cycles {
            w.push(format!("loop dependency: {a}.tcz -> {b}.tcz (ignored)"));
        }
        w
    }
}

/// One package per line (install order), then the notes as `#` comments,
/// so `--list` output stays easy to feed to other tools.
impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.order {
            writeln!(f, "{name}")?;
        }
        for w in self.warnings() {
            writeln!(f, "# {w}")?;
        }
        Ok(())
    }
}

/// Strips all whitespace (as TC's tools do) and an optional `.tcz` suffix.
pub fn normalize_name(raw: &str) -> String {
    let s: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    match s.strip_suffix(".tcz") {
        Some(stem) => stem.to_string(),
        None => s,
    }
}

/// Parses a `.dep` file: one dependency per line; all whitespace is removed
/// (TC's tool deletes it, and real files have stray spaces, tabs and CRLF);
/// blank lines are ignored; the final newline is optional. Names come back
/// without the `.tcz` suffix, in file order.
pub fn parse_dep(text: &str) -> Vec<String> {
    text.split('\n')
        .map(normalize_name)
        .filter(|n| !n.is_empty())
        .collect()
}

/// Resolves `roots` recursively into an install order (see [`Resolution`]).
///
/// `fetch_dep(name)` returns the text of `name.tcz.dep`, `None` when the
/// package has no `.dep` (a 404 on the mirror), or an error (which aborts
/// the resolution). It is called once per package, from up to four threads.
pub fn resolve(
    roots: &[String],
    fetch_dep: impl Fn(&str) -> Result<Option<String>> + Sync,
    kernel: KernelDeps,
) -> Result<Resolution> {
    resolve_with_parallelism(roots, fetch_dep, kernel, 4)
}

/// [`resolve`] with an explicit number of parallel `.dep` fetches.
///
/// The `.dep` files are fetched breadth-first, one level at a time in
/// parallel (they are tiny, so latency dominates); the order is then
/// computed by a depth-first post-order walk in the order the roots and
/// `.dep` lines were given, so it does not depend on fetch timing.
pub fn resolve_with_parallelism(
    roots: &[String],
    fetch_dep: impl Fn(&str) -> Result<Option<String>> + Sync,
    kernel: KernelDeps,
    parallelism: usize,
) -> Result<Resolution> {
    let mut res = Resolution::default();
    let mut skipped = HashSet::new();
    let mut map_name = |raw: &str, res: &mut Resolution| -> Option<String> {
        let name = normalize_name(raw);
        if name.is_empty() {
            return None;
        }
        if !name.contains("KERNEL") {
            return Some(name);
        }
        match &kernel {
            KernelDeps::Skip => {
                if skipped.insert(name.clone()) {
                    res.skipped_kernel.push(name);
                }
                None
            }
            KernelDeps::Substitute(release) => Some(name.replace("KERNEL", release)),
        }
    };

    // Phase 1: fetch every reachable .dep, level by level.
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut needed_by: HashMap<String, String> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut roots_norm = Vec::new();
    let mut level = Vec::new();
    for r in roots {
        if let Some(n) = map_name(r, &mut res) {
            roots_norm.push(n.clone());
            if seen.insert(n.clone()) {
                level.push(n);
            }
        }
    }
    while !level.is_empty() {
        let texts = parallel_map(&level, parallelism.max(1), |n| fetch_dep(n));
        let mut next = Vec::new();
        for (name, text) in level.iter().zip(texts) {
            let text = text.with_context(|| {
                let mut chain = Vec::new();
                let mut cur = name;
                while let Some(p) = needed_by.get(cur) {
                    chain.push(p.as_str());
                    cur = p;
                }
                let chain = if chain.is_empty() {
                    String::new()
                } else {
                    format!(" (needed by {})", chain.join(" <- "))
                };
                format!("cannot read the dependencies of {name}{chain}")
            })?;
            let mut list = Vec::new();
            for raw in parse_dep(text.as_deref().unwrap_or("")) {
                if let Some(d) = map_name(&raw, &mut res) {
                    if seen.insert(d.clone()) {
                        needed_by.insert(d.clone(), name.clone());
                        next.push(d.clone());
                    }
                    list.push(d);
                }
            }
            deps.insert(name.clone(), list);
        }
        level = next;
    }

    // Phase 2: deterministic DFS post-order.
    #[derive(PartialEq)]
    enum State {
        Active,
        Done,
    }
    fn visit(
        name: &str,
        deps: &HashMap<String, Vec<String>>,
        state: &mut HashMap<String, State>,
        res: &mut Resolution,
    ) {
        state.insert(name.to_string(), State::Active);
        for d in deps.get(name).map(Vec::as_slice).unwrap_or_default() {
            match state.get(d.as_str()) {
                Some(State::Done) => {}
                Some(State::Active) => {
                    let edge = (name.to_string(), d.clone());
                    if !res.cycles.contains(&edge) {
                        res.cycles.push(edge);
                    }
                }
                None => visit(d, deps, state, res),
            }
        }
        state.insert(name.to_string(), State::Done);
        res.order.push(name.to_string());
    }
    let mut state = HashMap::new();
    for r in &roots_norm {
        if !state.contains_key(r.as_str()) {
            visit(r, &deps, &mut state, &mut res);
        }
    }
    Ok(res)
}

/// Applies `f` to every item on up to `threads` scoped threads, results in
/// input order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if items.len() <= 1 || threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every slot is filled by a worker")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_dep_edge_cases() {
        assert_eq!(parse_dep(""), Vec::<String>::new());
        assert_eq!(parse_dep("\n\n  \n"), Vec::<String>::new());
        assert_eq!(parse_dep("a.tcz\nb.tcz\n"), ["a", "b"]);
        assert_eq!(parse_dep("a.tcz\r\nb.tcz\r\n"), ["a", "b"]);
        assert_eq!(parse_dep("a.tcz\nb.tcz"), ["a", "b"], "no final newline");
        assert_eq!(parse_dep(" a.tcz \t\n\tb .tcz\n\n\nc"), ["a", "b", "c"]);
        assert_eq!(parse_dep("fuse-KERNEL.tcz\r"), ["fuse-KERNEL"]);
        assert_eq!(
            parse_dep("x.tcz.tcz"),
            ["x.tcz"],
            "only one suffix stripped"
        );
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_name(" openssh.tcz "), "openssh");
        assert_eq!(normalize_name("openssh"), "openssh");
    }
}
