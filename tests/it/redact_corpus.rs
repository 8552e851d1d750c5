//! Redacts the Python standard library installed on this machine and lists every redaction, to
//! show that the rules leave ordinary code alone. Scanned: every `.py` file under the stdlib
//! directory except `site-packages` (third-party code); the stdlib's own `test`/`tests`
//! directories are included, since they hold the secret-looking fixtures that a human should see.

use std::path::{Path, PathBuf};

use evalsink::transforms::redact::Redactor;

/// Redactions allowed in the stdlib's test files: fixtures such as `password='testPass'`,
/// `.netrc` lines and `http://user:Pass@host` (see the printed list; run with `--nocapture`).
/// Measured: 27.
const MAX_IN_TESTS: usize = 40;

/// Redactions allowed elsewhere in the stdlib. Measured: 2, both credentials in documentation
/// examples: `passwd='geheim$parole'` in urllib/request.py and `password: sekrit` (a .pypirc)
/// in distutils/command/register.py.
const MAX_ELSEWHERE: usize = 3;

#[test]
fn python_stdlib_is_not_redacted() {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .expect("this test needs python3 on PATH, to find its standard library");
    assert!(output.status.success(), "python3 failed: {output:?}");
    let stdlib = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());

    let mut files = Vec::new();
    collect_py_files(&stdlib, &mut files);
    files.sort();
    assert!(
        files.len() > 500,
        "only {} .py files under {}",
        files.len(),
        stdlib.display()
    );

    let redactor = Redactor::builtin();
    let mut redactions = Vec::new();
    let mut bytes = 0;
    let started = std::time::Instant::now();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // a few stdlib test files are deliberately not UTF-8
        };
        bytes += text.len();
        let redacted = redactor.redact_str(&text);
        let relative = file
            .strip_prefix(&stdlib)
            .unwrap_or(file)
            .display()
            .to_string();
        for (rule, secret) in redactions_of(&text, &redacted) {
            redactions.push((relative.clone(), rule, secret));
        }
    }
    let elapsed = started.elapsed();

    println!(
        "scanned {} files, {:.1} MB in {:.2?}; {} redactions:",
        files.len(),
        bytes as f64 / 1e6,
        elapsed,
        redactions.len()
    );
    for (file, rule, secret) in &redactions {
        let shown: String = secret.chars().take(100).collect();
        println!("  {file}  [{rule}]  {shown:?}");
    }
    let in_tests = redactions
        .iter()
        .filter(|(file, _, _)| {
            file.split('/')
                .any(|part| part == "test" || part == "tests")
        })
        .count();
    let elsewhere = redactions.len() - in_tests;
    println!("{in_tests} in test directories, {elsewhere} elsewhere");
    assert!(
        in_tests <= MAX_IN_TESTS && elsewhere <= MAX_ELSEWHERE,
        "{in_tests} redactions in the stdlib's tests (at most {MAX_IN_TESTS} expected), \
         {elsewhere} elsewhere (at most {MAX_ELSEWHERE} expected)"
    );
}

fn collect_py_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if entry.file_name() != "site-packages" {
                collect_py_files(&path, out);
            }
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "py") {
            out.push(path);
        }
    }
}

/// The (rule, replaced text) pairs, recovered from the original and the redacted text: the text
/// between two markers is found again in the original, and what it skipped was replaced.
fn redactions_of(original: &str, redacted: &str) -> Vec<(String, String)> {
    const PREFIX: &str = "[REDACTED:";
    let mut found = Vec::new();
    let (mut at_redacted, mut at_original) = (0, 0);
    while let Some(offset) = redacted[at_redacted..].find(PREFIX) {
        let marker_start = at_redacted + offset;
        let literal = &redacted[at_redacted..marker_start];
        at_original += literal.len();
        let name_end = marker_start + redacted[marker_start..].find(']').unwrap();
        let rule = redacted[marker_start + PREFIX.len()..name_end].to_string();
        at_redacted = name_end + 1;
        // Markers that were already in the source are not redactions.
        if original[at_original..].starts_with(&redacted[marker_start..at_redacted]) {
            at_original += at_redacted - marker_start;
            continue;
        }
        let next = redacted[at_redacted..]
            .find(PREFIX)
            .map_or(redacted.len(), |i| at_redacted + i);
        let following = &redacted[at_redacted..next];
        let secret_end = if following.is_empty() {
            if next == redacted.len() {
                original.len()
            } else {
                at_original + 1
            }
        } else {
            let mut from = at_original + 1;
            while !original.is_char_boundary(from) {
                from += 1;
            }
            from + original[from..].find(following).unwrap_or(0)
        };
        found.push((rule, original[at_original..secret_end].to_string()));
        at_original = secret_end;
    }
    found
}
