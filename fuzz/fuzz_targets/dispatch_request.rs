//! The dispatch request parser: whatever arrives on `otako.dispatch`.
//!
//! Invariants: parsing never panics, nor does anything the gateway derives
//! from a parsed request (its fingerprint, metric label, failure identity);
//! the plain shape's fast path gives what the general path gives; a valid
//! request's event, sent again the way the backend builds requests, parses
//! back to the same event, and its `d` renders as the `Value` does.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use otako_common::event::{DispatchRequest, Event, MemberRef, MessageRef, Received, Request};

/// Parses what the backend sends for `event` under outbox row `id`, and
/// checks it names the same event with that id.
fn round_trip(id: i64, event: &Event) {
    let body = serde_json::to_vec(&DispatchRequest::new(id, event)).expect("requests serialize");
    let back = Received::parse(&body)
        .request
        .unwrap_or_else(|e| panic!("{event:?} under id {id} did not parse back: {e}"));
    assert_eq!(&back.event, event);
    assert_eq!(back.event_id, id.to_string());
    let direct = Request {
        event_id: id.to_string(),
        event: *event,
    };
    assert_eq!(back.fingerprint(), direct.fingerprint());
    assert_eq!(event.data_json(), event.to_data().to_string());
}

/// Database ids are positive.
fn db_id(u: &mut Unstructured) -> Result<i64> {
    u.int_in_range(1..=i64::MAX)
}

/// An event as the backend commits one, from the fuzzer's bytes.
fn event(u: &mut Unstructured) -> Result<Event> {
    let message = |u: &mut Unstructured| -> Result<MessageRef> {
        Ok(MessageRef {
            id: db_id(u)?,
            channel_id: db_id(u)?,
        })
    };
    let member = |u: &mut Unstructured| -> Result<MemberRef> {
        Ok(MemberRef {
            channel_id: db_id(u)?,
            user_id: db_id(u)?,
        })
    };
    Ok(match u.int_in_range(0..=4u8)? {
        0 => Event::MessageCreate(message(u)?),
        1 => Event::MessageUpdate(message(u)?),
        2 => Event::MessageDelete(message(u)?),
        3 => Event::MemberAdd(member(u)?),
        _ => Event::MemberRemove(member(u)?),
    })
}

fuzz_target!(|data: &[u8]| {
    let received = Received::parse(data);
    let general = Received::parse_general(data);
    assert_eq!(received.echo, general.echo);
    assert_eq!(received.request, general.request);
    assert_eq!(received.body(), general.body());
    assert_eq!(received.t_label(), general.t_label());
    assert_eq!(received.failure_identity(), general.failure_identity());
    if let Ok(request) = &received.request {
        let fingerprint = request.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert_eq!(fingerprint, request.fingerprint());
        round_trip(1, &request.event);
        if let Ok(id) = request.event_id.parse::<i64>() {
            round_trip(id, &request.event);
        }
    }

    // The same bytes read as an event the backend could commit, so every
    // event type and id range is sent round, not only those the fuzzer
    // spells out as valid JSON.
    let mut u = Unstructured::new(data);
    if let (Ok(id), Ok(ev)) = (u.arbitrary::<i64>(), event(&mut u)) {
        round_trip(id, &ev);
    }
});
