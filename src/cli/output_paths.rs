//! Output paths checked before any work: a run that cannot write its results
//! must fail in its first millisecond, not after an hour of generation.

use anyhow::{Context, bail};
use std::path::Path;

/// Checks that `path` (the value of `option`) can be written as a file: not a
/// directory, in a directory that exists (or can be made) and takes new files.
/// An existing file is left as it is.
pub fn check_output_file(option: &str, path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{option} {}: is a directory; give a file name",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_output_dir(option, parent)?;
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{option} {}: cannot be written", path.display()))?;
    }
    Ok(())
}

/// Checks that `dir` (the value of `option`) is a directory new files can be
/// written in, creating it (and its parents) if missing.
pub fn check_output_dir(option: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{option} {}: is a file, not a directory", dir.display());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{option} {}: cannot create the directory", dir.display()))?;
    let probe = dir.join(format!(".tokenflow-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("{option} {}: cannot write in it", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_option() {
        let tmp = std::env::temp_dir().join(format!("tokenflow-out-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let file = tmp.join("f.json");
        std::fs::write(&file, "x").unwrap();
        let e = check_output_file("--tokens-json", &tmp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tokens-json") && e.contains("directory"),
            "{e}"
        );
        let e = check_output_dir("--out", &file).unwrap_err().to_string();
        assert!(e.contains("--out") && e.contains("is a file"), "{e}");
        let e = check_output_file("--token-log", &file.join("x.log")).unwrap_err();
        assert!(e.to_string().contains("--token-log"), "{e}");
        check_output_file("--tokens-json", &tmp.join("new/dir/t.json")).unwrap();
        check_output_file("--tokens-json", &file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
