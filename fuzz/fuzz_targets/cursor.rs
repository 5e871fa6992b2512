//! The cursor parser: `Cursor::parse` on whatever a client sends to resume.
//!
//! Invariants: never panics; a cursor that parses prints as exactly the
//! text it came from (the grammar has one spelling per cursor), which is at
//! most 64 characters of `A-Za-z0-9._~-` and parses back to the same cursor;
//! every cursor the history hands out (epoch from a creation time) parses.

#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use otako_common::history::{epoch_of, Cursor, MAX_CURSOR_LEN};

fn check_printed(cursor: &Cursor) -> String {
    let text = cursor.to_string();
    assert!(text.len() <= MAX_CURSOR_LEN, "{text:?} is too long");
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
        "{text:?} has a character the contract does not allow"
    );
    assert_eq!(Cursor::parse(&text).as_ref(), Ok(cursor), "{text:?}");
    text
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cursor) = Cursor::parse(text) {
            assert_eq!(check_printed(&cursor), text);
        }
    }

    // Stream creation times fit an i64 of nanoseconds (until 2262).
    let mut u = Unstructured::new(data);
    if let (Ok(nanos), Ok(seq)) = (u.arbitrary::<i64>(), u.arbitrary::<u64>()) {
        check_printed(&Cursor::new(&epoch_of(i128::from(nanos)), seq));
    }
});
