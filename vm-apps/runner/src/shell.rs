//! Commands as shell lines (`--verbose`, `--dry-run`, `--print`), quoted
//! so that they can be pasted back into a POSIX shell. Shared by the VM
//! apps and the host tasks (`vmm` uses it too).

use std::ffi::OsStr;

/// `s` as one shell word: unchanged when it is made of safe characters,
/// otherwise single-quoted.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `program` and `args`, each quoted, separated by spaces.
pub fn line<I>(program: &str, args: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    std::iter::once(quote(program))
        .chain(
            args.into_iter()
                .map(|a| quote(&a.as_ref().to_string_lossy())),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("-m"), "-m");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(
            line("qemu", ["-append", "console=ttyS0 nozswap"]),
            "qemu -append 'console=ttyS0 nozswap'"
        );
    }
}
