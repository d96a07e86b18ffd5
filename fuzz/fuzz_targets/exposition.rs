//! The Prometheus text exposition parser `ackgate stats` reads metrics
//! with (`telemetry::stats`): any text is refused with a message or parsed;
//! what parses, written out again in the exposition format, parses to the
//! same samples.
#![no_main]

use ackgate::telemetry::stats::{parse, Sample};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let samples = match parse(text) {
        Ok(s) => s,
        Err(message) => {
            assert!(message.starts_with("line "), "{message}");
            return;
        }
    };
    let again = parse(&write(&samples))
        .unwrap_or_else(|e| panic!("its own exposition refused: {e}"));
    assert_eq!(again.len(), samples.len());
    for (a, b) in samples.iter().zip(&again) {
        assert_eq!((&a.name, &a.labels), (&b.name, &b.labels));
        assert!(
            a.value == b.value || (a.value.is_nan() && b.value.is_nan()),
            "{} became {}",
            a.value,
            b.value
        );
    }
});

/// The exposition format: `name{key="value",...} value`, label values with
/// backslash, quote and newline escaped.
fn write(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        out.push_str(&s.name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            out.push('}');
        }
        let v = match s.value {
            f64::INFINITY => "+Inf".to_string(),
            f64::NEG_INFINITY => "-Inf".to_string(),
            v if v.is_nan() => "NaN".to_string(),
            v => format!("{v}"),
        };
        out.push(' ');
        out.push_str(&v);
        out.push('\n');
    }
    out
}
