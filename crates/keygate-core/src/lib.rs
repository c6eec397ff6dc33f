//! The pure core of keygate: everything that decides, nothing that does I/O.
//!
//! Invariant: this crate never touches the network, the disk or the clock. Time comes in as
//! an argument (unix milliseconds), randomness only through [`key::KeyFormat::generate`],
//! which reads the OS CSPRNG. That keeps every rule here testable and fuzzable.

pub mod ip;
pub mod key;
pub mod least_privilege;
pub mod legacy;
pub mod name;
pub mod outcome;
pub mod permission;
pub mod policy;
pub mod request;

pub use key::{ApiKeySecret, Environment, KeyDigest, KeyFormat, MalformedKey, Pepper};
pub use outcome::{InvalidReason, Outcome};
pub use permission::{Permission, PermissionError, PermissionSet};
pub use request::{Required, Route, RouteTable};
