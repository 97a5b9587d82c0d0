//! The event vocabulary (`herald_domain::vocabulary`) against the hub table and docs/events.md:
//! adding an event type without documenting it, or without deciding which hubs forward it,
//! fails here.
use herald_domain::Outbound;
use herald_domain::vocabulary::INBOUND;
use herald_gateway::hubs::{HUBS, ONLY_ON_HUBS_OF_EVERYTHING, Receives};

fn events_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md");
    std::fs::read_to_string(path).expect("docs/events.md is readable")
}

/// Whether `name` stands in `text` as a whole word (not as part of a longer name).
fn names(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric()) && !after.is_some_and(|c| c.is_alphanumeric())
    })
}

/// The names of `all` that docs/events.md does not mention.
fn undocumented<'a>(all: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let doc = events_md();
    all.filter(|n| !names(&doc, n)).collect()
}

#[test]
fn every_inbound_type_and_alias_is_documented() {
    let missing = undocumented(INBOUND.iter().flat_map(|t| t.names()));
    assert!(
        missing.is_empty(),
        "inbound types not in docs/events.md: {missing:?}"
    );
}

#[test]
fn every_outbound_event_is_documented() {
    let missing = undocumented(Outbound::ALL.iter().map(|o| o.name()));
    assert!(
        missing.is_empty(),
        "outbound events not in docs/events.md: {missing:?}"
    );
}

#[test]
fn every_outbound_event_has_a_place_in_the_hub_table() {
    let unplaced: Vec<&str> = Outbound::ALL
        .iter()
        .filter(|o| {
            let named = HUBS.iter().any(|h| match h.receives {
                Receives::Only(list) => list.contains(o),
                Receives::Tasks => o.task().is_some(),
                Receives::All => false,
            });
            !named && !ONLY_ON_HUBS_OF_EVERYTHING.contains(o)
        })
        .map(|o| o.name())
        .collect();
    assert!(
        unplaced.is_empty(),
        "events no hub names (add them to a hub's `receives` or to ONLY_ON_HUBS_OF_EVERYTHING): {unplaced:?}"
    );
    for o in ONLY_ON_HUBS_OF_EVERYTHING {
        assert!(
            !HUBS
                .iter()
                .any(|h| matches!(h.receives, Receives::Only(l) if l.contains(o))),
            "{o} is in ONLY_ON_HUBS_OF_EVERYTHING but a purpose-specific hub names it"
        );
    }
}

#[test]
fn the_word_check_does_not_take_a_prefix_for_the_name() {
    assert!(names("see `TaskProgress` here", "TaskProgress"));
    assert!(!names("see TaskProgressed here", "TaskProgress"));
    assert!(!names("see ImageTaskProgress here", "TaskProgress"));
}
