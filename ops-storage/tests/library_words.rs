//! The libraries speak in library words: no string literal in ops-core, ops-postgres,
//! ops-mariadb or ops-storage names a `dbops` command, one of the CLI's flags or a
//! `DBOPS_` variable the libraries do not read themselves. A library error says what to
//! do in terms of its own API (`RestoreOptions::clean`, `Repository::unlock`); only
//! ops-cli translates that into flags and commands.
//!
//! The test lexes the sources itself (strings, raw strings, char literals, comments and
//! nested block comments) rather than pulling in a parser: it only has to find string
//! literals, and a hand lexer keeps the crate's dev-dependencies as they are. Comments,
//! doc comments and `mod tests { … }` blocks are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The library sources checked, relative to the workspace root.
const LIBRARY_SOURCES: &[&str] = &[
    "ops-core/src",
    "ops-postgres/src",
    "ops-mariadb/src",
    "ops-storage/src",
    "dbops/src",
];

/// The CLI's own flags. Underlying tools' flags (pg_dump's `--snapshot`,
/// `--lock-wait-timeout`, mariadbd's `--local-infile`) are not in this list, and a flag
/// only matches as a whole token: `--lock-wait` does not match `--lock-wait-timeout`.
const CLI_FLAGS: &[&str] = &[
    "--path",
    "--path-to",
    "--exclude",
    "--overwrite",
    "--files",
    "--all-databases",
    "--with-role-passwords",
    "--with-globals",
    "--source-database",
    "--clean",
    "--no-owner",
    "--create",
    "--password-file",
    "--repo",
    "--no-encryption",
    "--json",
    "--all",
    "--physical",
    "--to-datadir",
    "--target-time",
    "--target-lsn",
    "--target-xid",
    "--target-name",
    "--target-action",
    "--key-file",
    "--spool-max",
    "--keep-failed",
    "--table",
    "--schema",
    "--exclude-table",
    "--exclude-table-data",
    "--exclude-schema",
    "--jobs",
    "--into",
    "--read-data",
    "--restore",
    "--lock-wait",
    "--cache-dir",
    "--no-cache",
    "--database",
    "--dry-run",
    "--prune",
    "--kdf-memory-mib",
    "--concurrently",
    "--full",
    "--analyze",
    "--yes",
    "--cancel",
    "--terminate",
    "--grace",
    "--root-blockers",
    "--longer-than",
    "--all-databases",
    "--max-wait",
    "--max-rows",
    "--max-transaction-age",
    "--max-replication-lag",
    "--batch",
    "--where",
    "--terminate-connections",
    "--no-safety-backup",
    "--keep-safety",
    "--state",
    "--application",
    "--tag",
];

/// One string literal: where it starts and its source text between the quotes (escapes
/// left as written, so `\"` still marks a quote).
struct Literal {
    file: PathBuf,
    /// Byte offset of the first content byte in the file.
    start: usize,
    text: String,
}

/// A literal naming a CLI word.
#[derive(Debug)]
struct Hit {
    file: String,
    line: usize,
    word: String,
    literal: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ops-storage lives in the workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            // Integration tests may say anything; only the shipped library is checked.
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The string literals of one source file, outside comments and `mod tests` blocks.
fn string_literals(file: &Path, src: &str) -> Vec<Literal> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth = 0usize;
    // Brace depth at which a `mod tests` block was opened; literals inside are skipped.
    let mut skip_from: Option<usize> = None;
    // `mod` then `tests` then `{`: how far along that sequence the last tokens are.
    let mut mod_tests = 0u8;
    let mut push = |start: usize, end: usize, skipping: bool| {
        if !skipping {
            out.push(Literal {
                file: file.to_path_buf(),
                start,
                text: src[start..end].to_owned(),
            });
        }
    };
    while i < b.len() {
        let c = b[i];
        let skipping = skip_from.is_some();
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut nest = 1;
            i += 2;
            while i < b.len() && nest > 0 {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    nest += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    nest -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            continue;
        }
        if c == b'"' {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            push(start, i.min(b.len()), skipping);
            i += 1;
            mod_tests = 0;
            continue;
        }
        if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}', '"') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                i += 3;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            } else {
                let len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + len) == Some(&b'\'') {
                    i += len + 2;
                } else {
                    i += 1;
                }
            }
            mod_tests = 0;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && is_ident_byte(b[i]) {
                i += 1;
            }
            let ident = &src[start..i];
            // Raw strings: r"…", r#"…"#, br"…", cr"…". `r#name` is a raw identifier.
            if matches!(ident, "r" | "br" | "cr") {
                let mut j = i;
                while b.get(j) == Some(&b'#') {
                    j += 1;
                }
                if b.get(j) == Some(&b'"') {
                    let hashes = j - i;
                    let content = j + 1;
                    let mut k = content;
                    loop {
                        if k >= b.len() {
                            break;
                        }
                        if b[k] == b'"'
                            && b.len() >= k + 1 + hashes
                            && b[k + 1..k + 1 + hashes].iter().all(|&h| h == b'#')
                        {
                            break;
                        }
                        k += 1;
                    }
                    push(content, k.min(b.len()), skipping);
                    i = k + 1 + hashes;
                    mod_tests = 0;
                    continue;
                }
            }
            mod_tests = match (mod_tests, ident) {
                (_, "mod") => 1,
                (1, "tests") => 2,
                _ => 0,
            };
            continue;
        }
        if c == b'{' {
            if mod_tests == 2 && skip_from.is_none() {
                skip_from = Some(depth);
            }
            depth += 1;
        } else if c == b'}' {
            depth = depth.saturating_sub(1);
            if skip_from == Some(depth) {
                skip_from = None;
            }
        }
        if !c.is_ascii_whitespace() {
            mod_tests = 0;
        }
        i += 1;
    }
    out
}

/// Occurrences of `needle` in `hay` as a whole token: not preceded or followed by a
/// letter, digit, `_` or `-`.
fn token_positions(hay: &str, needle: &str) -> Vec<usize> {
    let b = hay.as_bytes();
    let word = |x: u8| is_ident_byte(x) || x == b'-';
    hay.match_indices(needle)
        .map(|(p, _)| p)
        .filter(|&p| p == 0 || !word(b[p - 1]))
        .filter(|&p| b.get(p + needle.len()).is_none_or(|&x| !word(x)))
        .collect()
}

/// The CLI words in one literal, each with its byte offset in the literal.
/// `library_vars` are the `DBOPS_` variables the libraries read themselves: naming one
/// of those tells the operator about the library's own setting, not the CLI's.
fn cli_words(text: &str, library_vars: &BTreeSet<String>) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    // A literal that is one token starting with the flag is an argument vector element
    // for pg_restore, mysqldump and friends ("--clean", "--jobs={jobs}"), not a message.
    let is_argv = !text.trim().contains(char::is_whitespace);
    for flag in CLI_FLAGS {
        for p in token_positions(text, flag) {
            if !(is_argv && p == 0) {
                words.push((p, (*flag).to_owned()));
            }
        }
    }
    // A `dbops <command>` wrapped in backticks or quotes (an escaped quote is `\"` in
    // the source, so the byte before is still the quote).
    for (p, _) in text.match_indices("dbops") {
        let wrapped = p > 0 && matches!(text.as_bytes()[p - 1], b'`' | b'\'' | b'"');
        let rest = &text[p + "dbops".len()..];
        let is_command = rest.starts_with(char::is_whitespace)
            && rest
                .trim_start()
                .starts_with(|c: char| !matches!(c, '`' | '\'' | '"'));
        if wrapped && is_command {
            let command = rest.trim_start();
            let end = command
                .find(['`', '\'', '"', '\\'])
                .unwrap_or(command.len());
            words.push((p, format!("dbops {}", &command[..end])));
        }
    }
    for (p, name) in env_vars(text) {
        if text != name && !library_vars.contains(&name) {
            words.push((p, name));
        }
    }
    words.sort();
    words
}

/// `DBOPS_…` names in `text` with their offsets.
fn env_vars(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    text.match_indices("DBOPS_")
        .filter(|&(p, _)| p == 0 || !is_ident_byte(b[p - 1]))
        .map(|(p, _)| {
            let len = b[p..].iter().take_while(|&&x| is_ident_byte(x)).count();
            (p, text[p..p + len].to_owned())
        })
        .collect()
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

fn hits() -> Vec<Hit> {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in LIBRARY_SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut literals = Vec::new();
    let mut sources = std::collections::BTreeMap::new();
    for file in &files {
        let src = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
        literals.extend(string_literals(file, &src));
        sources.insert(file.clone(), src);
    }
    // A literal that is exactly a `DBOPS_` name is a lookup (`env::var("DBOPS_PG_BINDIR")`):
    // the library reads that variable itself, so messages may name it.
    let library_vars: BTreeSet<String> = literals
        .iter()
        .filter(|l| l.text.starts_with("DBOPS_") && l.text.bytes().all(is_ident_byte))
        .map(|l| l.text.clone())
        .collect();
    let mut hits = Vec::new();
    for lit in &literals {
        for (offset, word) in cli_words(&lit.text, &library_vars) {
            let src = &sources[&lit.file];
            hits.push(Hit {
                file: lit
                    .file
                    .strip_prefix(&root)
                    .expect("under the root")
                    .display()
                    .to_string(),
                line: line_of(src, lit.start + offset),
                word,
                literal: lit.text.clone(),
            });
        }
    }
    hits
}

#[test]
fn library_messages_name_no_cli_commands_flags_or_variables() {
    let report: Vec<String> = hits()
        .iter()
        .map(|hit| {
            format!(
                "{}:{}: `{}` in \"{}\"",
                hit.file,
                hit.line,
                hit.word,
                hit.literal.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "library string literals name CLI commands, flags or variables; say it in the \
         library's terms (RestoreOptions::clean, Repository::unlock, \"the repository \
         password\") and leave the CLI words to ops-cli:\n{}",
        report.join("\n")
    );
}

/// The lexer itself: comments, raw strings, char literals, argv elements and test
/// modules are told apart.
#[test]
fn the_lexer_finds_literals_and_only_cli_words() {
    let src = r####"
        // "--clean in a comment"
        /* "--clean" /* nested */ "--clean in a block" */
        /// "doc --clean"
        let q = '"'; let l: &'a str = "run `dbops unlock` first";
        let argv = ["--clean", "--jobs=4", "--lock-wait-timeout=5"];
        let raw = r#"pass --no-owner "quoted""#;
        let tool = "pg_dump --lock-wait-timeout and --clean-xyz";
        let env = ("DBOPS_PASSWORD", "set DBOPS_PASSWORD");
        mod tests { fn f() { let _ = "--clean {"; } }
        let after = "--json output";
    "####;
    let lits = string_literals(Path::new("x.rs"), src);
    let texts: Vec<&str> = lits.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "run `dbops unlock` first",
            "--clean",
            "--jobs=4",
            "--lock-wait-timeout=5",
            "pass --no-owner \"quoted\"",
            "pg_dump --lock-wait-timeout and --clean-xyz",
            "DBOPS_PASSWORD",
            "set DBOPS_PASSWORD",
            "--json output",
        ]
    );
    let none = BTreeSet::new();
    let words: Vec<Vec<String>> = texts
        .iter()
        .map(|t| cli_words(t, &none).into_iter().map(|(_, w)| w).collect())
        .collect();
    let expected: [&[&str]; 9] = [
        &["dbops unlock"],
        &[],
        &[],
        &[],
        &["--no-owner"],
        &[],
        &[],
        &["DBOPS_PASSWORD"],
        &["--json"],
    ];
    assert_eq!(words, expected);
    let read = BTreeSet::from(["DBOPS_PASSWORD".to_owned()]);
    assert!(cli_words("set DBOPS_PASSWORD", &read).is_empty());
    assert_eq!(
        cli_words("create one with `dbops --repo X init`", &none)
            .into_iter()
            .map(|(_, w)| w)
            .collect::<Vec<_>>(),
        ["dbops --repo X init", "--repo"]
    );
}
