//! Integration tests: each starts the real HTTP server on a random port over a temporary
//! SQLite file and talks to it with a real HTTP client.

mod helpers;

mod isolation;
mod leaks;
mod legacy_import;
mod lifecycle;
mod limits;
mod malformed;
mod openapi;
mod outcomes;
mod pages;
mod permission_usage;
mod scopes;
mod self_service;
mod tokens;
mod uniform;
