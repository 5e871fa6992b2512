//! W3C trace context as the backend would send it: a `traceparent` header
//! whose trace id a test then looks for in spans, logs and error records.

/// A fresh sampled `traceparent`; returns (header, trace id, parent span id).
pub fn fresh_traceparent() -> (String, String, String) {
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let span = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace}-{span}-01"), trace, span)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fresh_traceparent_is_sampled_and_well_formed() {
        let (header, trace, span) = super::fresh_traceparent();
        assert_eq!(header, format!("00-{trace}-{span}-01"));
        assert_eq!((trace.len(), span.len()), (32, 16));
        assert!(trace
            .chars()
            .chain(span.chars())
            .all(|c| c.is_ascii_hexdigit()));
    }
}
