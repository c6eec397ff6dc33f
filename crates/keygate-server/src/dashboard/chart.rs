//! The per-key usage chart: valid vs refused verifications per day, as inline SVG (no
//! script, no external image; presentation attributes only, so the CSP needs no
//! `unsafe-inline`). A table with the same numbers follows it for screen readers.

use chrono::{DateTime, Utc};
use keygate_engine::manage::UsageBucket;
use maud::{html, Markup};

const WIDTH: i64 = 480;
const HEIGHT: i64 = 220;
const LEFT: i64 = 40;
const RIGHT: i64 = 12;
const TOP: i64 = 16;
const BOTTOM: i64 = 44;
pub const VALID_COLOUR: &str = "#2f7d4f";
pub const REFUSED_COLOUR: &str = "#c2410c";

fn day_label(ms: i64) -> (String, String) {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| (t.format("%a").to_string(), t.format("%b %-d").to_string()))
        .unwrap_or_default()
}

/// 1, 2, 5, 10, 20, 50, … at or above `x`.
fn nice_step(x: i64) -> i64 {
    let mut magnitude = 1i64;
    loop {
        for m in [1, 2, 5] {
            if m * magnitude >= x {
                return m * magnitude;
            }
        }
        magnitude = magnitude.saturating_mul(10);
        if magnitude >= i64::MAX / 10 {
            return magnitude;
        }
    }
}

/// The y-axis step: four gridlines cover the largest bar.
fn axis_step(max: i64) -> i64 {
    nice_step(((max + 3) / 4).max(1))
}

pub fn usage_chart(buckets: &[UsageBucket]) -> Markup {
    let max = buckets
        .iter()
        .map(|b| b.valid().max(b.refused()))
        .max()
        .unwrap_or(0);
    let step = axis_step(max);
    let top_value = step * 4;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = buckets.len().max(1) as i64;
    let group = plot_w / n;
    let bar = (group / 3).max(2);
    let y = |v: i64| TOP + plot_h - v * plot_h / top_value;
    let total_valid: i64 = buckets.iter().map(UsageBucket::valid).sum();
    let total_refused: i64 = buckets.iter().map(UsageBucket::refused).sum();
    html! {
        figure.chart {
            svg viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-labelledby="chart-title chart-desc"
                xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet" {
                title #chart-title { "Verifications per day, last " (buckets.len()) " days" }
                desc #chart-desc { (total_valid) " valid and " (total_refused) " refused in all." }
                @for i in 0..=4 {
                    @let v = step * i;
                    line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(v)) y2=(y(v)) stroke="#e2e8f0" stroke-width="1" {}
                    text x=(LEFT - 6) y=(y(v) + 4) text-anchor="end" font-size="13" fill="#64748b" { (v) }
                }
                @for (i, b) in buckets.iter().enumerate() {
                    @let x0 = LEFT + i as i64 * group + (group - 2 * bar) / 2;
                    @let (weekday, date) = day_label(b.start);
                    rect x=(x0) y=(y(b.valid())) width=(bar) height=(TOP + plot_h - y(b.valid())) fill=(VALID_COLOUR) rx="2" {
                        title { (date) ": " (b.valid()) " valid" }
                    }
                    rect x=(x0 + bar) y=(y(b.refused())) width=(bar) height=(TOP + plot_h - y(b.refused())) fill=(REFUSED_COLOUR) rx="2" {
                        title { (date) ": " (b.refused()) " refused" }
                    }
                    text x=(x0 + bar) y=(HEIGHT - BOTTOM + 18) text-anchor="middle" font-size="13" fill="#334155" { (weekday) }
                    text x=(x0 + bar) y=(HEIGHT - BOTTOM + 35) text-anchor="middle" font-size="12" fill="#64748b" { (date) }
                }
                line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(TOP + plot_h) y2=(TOP + plot_h) stroke="#94a3b8" stroke-width="1" {}
            }
            figcaption.legend {
                span.swatch.swatch-valid aria-hidden="true" {} " Valid (" (total_valid) ") "
                span.swatch.swatch-refused aria-hidden="true" {} " Refused (" (total_refused) ")"
            }
        }
        details.chart-data {
            summary { "Numbers per day" }
            div.table-wrap {
                table #usage-table {
                    thead { tr { th scope="col" { "Day (UTC)" } th scope="col" { "Valid" } th scope="col" { "Refused" } } }
                    tbody {
                        @for b in buckets {
                            @let (weekday, date) = day_label(b.start);
                            tr { th scope="row" { (weekday) " " (date) } td { (b.valid()) } td { (b.refused()) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(axis_step(0), 1);
        assert_eq!(axis_step(3), 1);
        assert_eq!(axis_step(5), 2);
        assert_eq!(axis_step(17), 5);
        assert_eq!(axis_step(1234), 500);
    }

    #[test]
    fn bars_follow_the_counts() {
        let mut b = UsageBucket {
            start: 1_700_000_000_000,
            ..UsageBucket::default()
        };
        b.counts.insert("valid".into(), 3);
        b.counts.insert("rate_limited".into(), 1);
        let svg = usage_chart(&[b, UsageBucket::default()]).into_string();
        assert!(svg.contains(": 3 valid"), "{svg}");
        assert!(svg.contains(": 1 refused"));
        assert!(svg.contains("3 valid and 1 refused in all"));
        assert!(!svg.contains("style="));
    }
}
