//! The ids of runs, agents, jobs and leases, each its own type so that one
//! cannot be passed where another is meant.
//!
//! Each serialises as the bare string or integer it wraps
//! (`#[serde(transparent)]`), so the API's JSON and the store's columns
//! are the same as if they were plain values. None of them checks its
//! contents: what the API accepted as an id before, it still accepts.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                $name(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        // As the bare string, so messages that quote an id with `{:?}`
        // read as they did when it was one.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_owned())
            }
        }

        impl From<&String> for $name {
            fn from(id: &String) -> Self {
                $name(id.clone())
            }
        }

        impl From<&$name> for $name {
            fn from(id: &$name) -> Self {
                id.clone()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> Self {
                id.0.clone()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub const fn new(id: i64) -> Self {
                $name(id)
            }
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                $name(id)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl PartialEq<i64> for $name {
            fn eq(&self, other: &i64) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for i64 {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id!(
    /// A run's id (`r-...`). Where a human names a run, a unique prefix of
    /// it is accepted too; the store resolves it.
    RunId
);
string_id!(
    /// A registered agent's id, kept across its restarts under one name.
    AgentId
);
int_id!(
    /// A job's id: one attempt at one step.
    JobId
);
int_id!(
    /// A lease's id: one agent's hold on one job.
    LeaseId
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_travel_as_their_bare_values() {
        let run = RunId::from("r-1a2b");
        assert_eq!(serde_json::to_string(&run).unwrap(), r#""r-1a2b""#);
        assert_eq!(serde_json::from_str::<RunId>(r#""r-1a2b""#).unwrap(), run);
        let agent = AgentId::from("a-9");
        assert_eq!(serde_json::to_string(&agent).unwrap(), r#""a-9""#);
        assert_eq!(serde_json::from_str::<AgentId>(r#""a-9""#).unwrap(), agent);
        let job = JobId::new(42);
        assert_eq!(serde_json::to_string(&job).unwrap(), "42");
        assert_eq!(serde_json::from_str::<JobId>("42").unwrap(), job);
        let lease = LeaseId::new(-7);
        assert_eq!(serde_json::to_string(&lease).unwrap(), "-7");
        assert_eq!(serde_json::from_str::<LeaseId>("-7").unwrap(), lease);
    }

    #[test]
    fn ids_accept_what_their_bare_values_accept() {
        assert_eq!(serde_json::from_str::<RunId>(r#""""#).unwrap(), "");
        assert!(serde_json::from_str::<RunId>("1").is_err());
        assert!(serde_json::from_str::<JobId>(r#""1""#).is_err());
        assert!(serde_json::from_str::<JobId>("1.5").is_err());
        assert_eq!("12".parse::<JobId>().unwrap(), 12);
        assert!("x".parse::<LeaseId>().is_err());
    }

    #[test]
    fn ids_read_in_structs_and_maps_as_plain_values_did() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            run_id: RunId,
            job_id: JobId,
            lease_id: Option<LeaseId>,
        }
        let json = r#"{"run_id":"r1","job_id":3,"lease_id":null}"#;
        let row: Row = serde_json::from_str(json).unwrap();
        assert_eq!(row.run_id, "r1");
        assert_eq!(row.job_id, 3);
        assert_eq!(serde_json::to_string(&row).unwrap(), json);

        let by_run: BTreeMap<RunId, u32> = serde_json::from_str(r#"{"r1":1,"r2":2}"#).unwrap();
        assert_eq!(by_run.get("r2"), Some(&2));
    }

    #[test]
    fn ids_show_as_their_bare_values() {
        assert_eq!(RunId::from("r1").to_string(), "r1");
        assert_eq!(format!("{:?}", AgentId::from("a1")), r#""a1""#);
        assert_eq!(JobId::new(5).to_string(), "5");
        assert_eq!(format!("job-{:03}", JobId::new(5)), "job-005");
        assert_eq!(format!("{:?}", LeaseId::new(9)), "9");
    }
}
