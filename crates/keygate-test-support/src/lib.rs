//! What keygate's integration tests share. A test that needs a tool the machine may lack
//! (nginx, redis-server, chromium-driver, a PostgreSQL server) skips, saying so, on a
//! developer's machine; in CI (`KEYGATE_TEST_REQUIRE_ALL=1`, set by `.ci/run`) the same
//! absence fails the test, so a broken install cannot turn a suite green by skipping it.

mod ports;
mod postgres;

pub use ports::free_port;
pub use postgres::fresh_postgres_database;

/// The variable that turns every skip into a failure.
pub const REQUIRE_ALL_VAR: &str = "KEYGATE_TEST_REQUIRE_ALL";
/// Where PostgreSQL tests find their server.
pub const POSTGRES_VAR: &str = "KEYGATE_TEST_POSTGRES";

/// Does the environment ask for every test to run (`KEYGATE_TEST_REQUIRE_ALL=1`)?
pub fn all_required() -> bool {
    is_required(std::env::var(REQUIRE_ALL_VAR).ok().as_deref())
}

fn is_required(value: Option<&str>) -> bool {
    matches!(value.map(str::trim), Some("1" | "true" | "yes"))
}

/// Called where a test cannot run for want of `missing` (e.g. "nginx not installed"):
/// prints `skipped: <missing>` so the caller can return, or panics naming it when
/// [`all_required`].
#[track_caller]
pub fn skip(missing: &str) {
    skip_or_fail(missing, all_required());
}

#[track_caller]
fn skip_or_fail(missing: &str, required: bool) {
    if required {
        panic!("{missing}, and {REQUIRE_ALL_VAR}=1 requires every test to run");
    }
    println!("skipped: {missing}");
}

/// The PostgreSQL server URL from `KEYGATE_TEST_POSTGRES`, or `None` after [`skip`].
#[track_caller]
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            skip(&format!("PostgreSQL: {POSTGRES_VAR} unset"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_yes_requires_everything() {
        for yes in ["1", "true", "yes", " 1 "] {
            assert!(is_required(Some(yes)), "{yes:?}");
        }
        for no in [None, Some(""), Some("0"), Some("false")] {
            assert!(!is_required(no), "{no:?}");
        }
    }

    #[test]
    fn a_skip_passes_when_not_required() {
        skip_or_fail("nginx not installed", false);
    }

    #[test]
    #[should_panic(expected = "nginx not installed, and KEYGATE_TEST_REQUIRE_ALL=1")]
    fn a_skip_fails_naming_the_tool_when_required() {
        skip_or_fail("nginx not installed", true);
    }
}
