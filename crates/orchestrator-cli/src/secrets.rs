//! The daemon's secrets: `--secret NAME=VALUE` and `--secrets-file FILE`
//! (one `NAME=VALUE` a line, readable by its owner only).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Why the secrets cannot be loaded; each names where the bad one came
/// from (never its value).
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// `place` is `FILE:LINE` or `--secret #N`.
    #[error("{place}: expected NAME=VALUE, found no '='")]
    NoEquals { place: String },
    #[error("{place}: invalid secret name {name:?}: expected letters, digits and '_', not starting with a digit")]
    BadName { place: String, name: String },
    #[error("{}: cannot read the secrets: {source}", .file.display())]
    Unreadable {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file's mode lets its group or others read it.
    #[error("{}: mode {mode:03o} lets others read the secrets; expected 600 (chmod 600 {})", .file.display(), .file.display())]
    Exposed { file: PathBuf, mode: u32 },
}

/// Whether `name` can be an environment variable's name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One `NAME=VALUE`; `place` says where it came from in errors (never the value).
fn parse_pair(text: &str, place: String) -> Result<(String, String), SecretsError> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(SecretsError::NoEquals { place });
    };
    let name = name.trim();
    if !valid_name(name) {
        return Err(SecretsError::BadName {
            place,
            name: name.to_owned(),
        });
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// The secrets given on the command line and in `file`.
pub fn load(
    given: &[String],
    file: Option<&Path>,
) -> Result<BTreeMap<String, String>, SecretsError> {
    let mut out = BTreeMap::new();
    if let Some(path) = file {
        let shown = path.display();
        let unreadable = |source| SecretsError::Unreadable {
            file: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretsError::Exposed {
                    file: path.to_owned(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = parse_pair(line, format!("{shown}:{}", n + 1))?;
            out.insert(k, v);
        }
    }
    for (i, pair) in given.iter().enumerate() {
        let (k, v) = parse_pair(pair, format!("--secret #{}", i + 1))?;
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_flags_and_a_private_file_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets");
        std::fs::write(&f, "# tokens\nAPI_KEY=a=b\n\nDB_PASS= x \n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let got = load(&["TOKEN=t".into(), "API_KEY=flag".into()], Some(&f)).unwrap();
        assert_eq!(got["API_KEY"], "flag", "the flag wins over the file");
        assert_eq!(got["DB_PASS"], " x ");
        assert_eq!(got["TOKEN"], "t");

        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&[], Some(&f)).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("expected 600"), "{e}");

        let e = load(&["1X=v".into()], None).unwrap_err().to_string();
        assert!(e.contains("--secret #1: invalid secret name \"1X\""), "{e}");
        let e = load(&["novalue".into()], None).unwrap_err().to_string();
        assert!(e.contains("expected NAME=VALUE"), "{e}");
        assert!(!e.contains("novalue="));
    }
}
