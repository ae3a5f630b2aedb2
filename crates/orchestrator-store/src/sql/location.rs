//! Where a store lives: a SQLite file (the default) or a PostgreSQL
//! database, named by a URL. Connecting to PostgreSQL is `pg.rs`.

use std::path::{Path, PathBuf};

use crate::{Result, StoreError};

/// A store's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file; created with its directory when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user[:password]@host[:port]/db`),
    /// and the schema in it that holds the store's tables (the user's
    /// default search path when none: usually `public`). Several daemons
    /// may share one.
    Postgres { url: String, schema: Option<String> },
}

impl Location {
    /// `postgres://...` or `postgresql://...` is PostgreSQL (a `schema=NAME`
    /// query parameter names the schema, taken out of the URL the driver
    /// sees); `sqlite:PATH` or any other text is a SQLite file's path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (base, query) = text.split_once('?').unwrap_or((text, ""));
            let mut schema = None;
            let rest: Vec<&str> = query
                .split('&')
                .filter(|p| match p.strip_prefix("schema=") {
                    Some(name) => {
                        schema = Some(name.to_owned());
                        false
                    }
                    None => !p.is_empty(),
                })
                .collect();
            let url = if rest.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", rest.join("&"))
            };
            Location::Postgres { url, schema }
        } else {
            let path = text.strip_prefix("sqlite:").unwrap_or(text);
            Location::Sqlite(PathBuf::from(path))
        }
    }

    /// The location as a user may see it: a URL's password left out.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres { url, schema } => {
                let url = redact(url);
                match schema {
                    Some(s) => format!("{url} (schema {s})"),
                    None => url,
                }
            }
        }
    }
}

/// `url` without the password it may carry.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The parent directory a SQLite file needs, created when missing.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::open(format!("cannot create {}", dir.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_postgres_and_anything_else_is_a_file() {
        assert_eq!(
            Location::parse("postgres://u@h/db"),
            Location::Postgres {
                url: "postgres://u@h/db".into(),
                schema: None
            }
        );
        assert_eq!(
            Location::parse("postgres://u@h/db?schema=team_a&connect_timeout=5"),
            Location::Postgres {
                url: "postgres://u@h/db?connect_timeout=5".into(),
                schema: Some("team_a".into())
            }
        );
        assert!(matches!(
            Location::parse("postgresql://h/db"),
            Location::Postgres { .. }
        ));
        assert_eq!(
            Location::parse("sqlite:/var/orch.db"),
            Location::Sqlite("/var/orch.db".into())
        );
        assert_eq!(
            Location::parse("data/orch.db"),
            Location::Sqlite("data/orch.db".into())
        );
    }

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact("postgres://orch:s3cret@db:5432/orch"),
            "postgres://orch:***@db:5432/orch"
        );
        assert_eq!(redact("postgres://orch@db/orch"), "postgres://orch@db/orch");
        assert_eq!(redact("postgres://db/orch"), "postgres://db/orch");
    }
}
