//! `keygate keys permission-usage ID [--days N]`: the least-privilege report as text.

use serde_json::Value;

use super::output::{fields, short_time, text};
use super::table::Table;

/// Field order of the report's summary.
const SUMMARY_FIELDS: &[&str] = &[
    "key_id",
    "days",
    "from",
    "granted",
    "unused_grants",
    "suggested",
];

/// The summary, then one line per permission used.
pub fn report(r: &Value) -> String {
    let mut out = fields(r, SUMMARY_FIELDS, &["used"]);
    out.push('\n');
    let used = r["used"].as_array().map(Vec::as_slice).unwrap_or_default();
    if used.is_empty() {
        out.push_str("no allowed request needed a permission in this window\n");
        return out;
    }
    let mut table = Table::new(&["PERMISSION", "REQUESTS", "LAST USED"]);
    for u in used {
        table.push(vec![
            text(&u["permission"]),
            text(&u["requests"]),
            short_time(&u["last_used_at"], "-"),
        ]);
    }
    out.push_str(&table.render());
    out
}
