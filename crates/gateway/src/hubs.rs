//! Hubs as data (docs/protocol.md, "Hubs"): each route is who may connect, which audiences it listens to,
//! which outbound event names it forwards and which client methods it offers. Adding a hub is
//! adding a row to [`HUBS`] (plus, for a new kind of method, a [`HubMethod`] variant and its
//! handler in `session`).
use crate::auth::Principal;
use herald_domain::{Audience, Outbound};

/// Who may connect to a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any usable virtual key (admin keys included); the master key has no key of its own.
    VirtualKey,
    /// The master key or a key with `is_admin`.
    Admin,
}

/// Which audiences a connection listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listens {
    /// The caller's own key: `vkey:{id}`.
    OwnKey,
    /// The caller's own key and global events.
    OwnKeyAndGlobal,
    /// `admin`: every key's events and all global ones.
    Admin,
}

/// Which outbound events a hub forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receives {
    Only(&'static [Outbound]),
    /// Every task event family (image, video, generic `Task*`).
    Tasks,
    All,
}

/// Client-callable methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubMethod {
    /// `Resume(cursor)`: replay what the connection has not delivered yet.
    Resume,
    /// `SubscribeToTask(taskId)`: ownership checked; returns the task's latest state.
    SubscribeToTask,
    UnsubscribeFromTask,
    /// Admin: narrow the connection to the named keys (plus global events).
    SubscribeToVirtualKey,
    UnsubscribeFromVirtualKey,
    /// `GetSpendSummary()` (own key) or, on the admin hub, `GetSpendSummary(keyId)`.
    GetSpendSummary,
}

impl HubMethod {
    pub fn name(self) -> &'static str {
        match self {
            HubMethod::Resume => "Resume",
            HubMethod::SubscribeToTask => "SubscribeToTask",
            HubMethod::UnsubscribeFromTask => "UnsubscribeFromTask",
            HubMethod::SubscribeToVirtualKey => "SubscribeToVirtualKey",
            HubMethod::UnsubscribeFromVirtualKey => "UnsubscribeFromVirtualKey",
            HubMethod::GetSpendSummary => "GetSpendSummary",
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    /// Canonical name: the route is `/hubs/{name}`.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub access: Access,
    pub listens: Listens,
    pub receives: Receives,
    pub methods: &'static [HubMethod],
    /// Conduit's task hub: task events also (generic `Task*`: only) as positional
    /// `TaskProgress(taskId, progress, message)` etc., and `SubscribeToTask` narrows the
    /// connection to the named tasks.
    pub conduit_tasks: bool,
}

/// The hub table (docs/protocol.md, "Hubs").
pub static HUBS: &[Hub] = &[
    Hub {
        name: "spend",
        aliases: &["spend-notifications"],
        access: Access::VirtualKey,
        listens: Listens::OwnKey,
        receives: Receives::Only(&[Outbound::SpendUpdate, Outbound::BudgetAlert]),
        methods: &[HubMethod::GetSpendSummary, HubMethod::Resume],
        conduit_tasks: false,
    },
    Hub {
        name: "tasks",
        aliases: &["image-generation", "video-generation"],
        access: Access::VirtualKey,
        listens: Listens::OwnKey,
        receives: Receives::Tasks,
        methods: &[
            HubMethod::SubscribeToTask,
            HubMethod::UnsubscribeFromTask,
            HubMethod::Resume,
        ],
        conduit_tasks: true,
    },
    Hub {
        name: "notifications",
        aliases: &["navigation-state"],
        access: Access::VirtualKey,
        listens: Listens::OwnKeyAndGlobal,
        receives: Receives::Only(&[
            Outbound::ProviderHealthChanged,
            Outbound::ModelsDiscovered,
            Outbound::NavigationStateUpdated,
            Outbound::VirtualKeyUpdated,
        ]),
        methods: &[HubMethod::Resume],
        conduit_tasks: false,
    },
    Hub {
        name: "events",
        aliases: &[],
        access: Access::VirtualKey,
        listens: Listens::OwnKeyAndGlobal,
        receives: Receives::All,
        methods: &[
            HubMethod::GetSpendSummary,
            HubMethod::SubscribeToTask,
            HubMethod::UnsubscribeFromTask,
            HubMethod::Resume,
        ],
        conduit_tasks: false,
    },
    Hub {
        name: "admin",
        aliases: &["admin-notifications"],
        access: Access::Admin,
        listens: Listens::Admin,
        receives: Receives::All,
        methods: &[
            HubMethod::GetSpendSummary,
            HubMethod::SubscribeToVirtualKey,
            HubMethod::UnsubscribeFromVirtualKey,
            HubMethod::SubscribeToTask,
            HubMethod::UnsubscribeFromTask,
            HubMethod::Resume,
        ],
        conduit_tasks: false,
    },
];

/// Events no purpose-specific hub forwards: only the hubs that receive everything
/// (`/hubs/events`, `/hubs/admin`) carry them. Every other outbound event must be named by some
/// hub's `Receives` (or be a task event, for `/hubs/tasks`); `tests/vocabulary_docs.rs` checks
/// that a new event is placed one way or the other.
pub static ONLY_ON_HUBS_OF_EVERYTHING: &[Outbound] =
    &[Outbound::VirtualKeyCreated, Outbound::VirtualKeyDeleted];

/// The hub served at `/hubs/{route}` (case-insensitive, aliases included).
pub fn find(route: &str) -> Option<&'static Hub> {
    find_in(HUBS, route)
}

pub(crate) fn find_in(table: &'static [Hub], route: &str) -> Option<&'static Hub> {
    table.iter().find(|h| {
        h.name.eq_ignore_ascii_case(route)
            || h.aliases.iter().any(|a| a.eq_ignore_ascii_case(route))
    })
}

impl Hub {
    /// Whether `p` may connect.
    pub fn admits(&self, p: &Principal) -> bool {
        match self.access {
            Access::VirtualKey => matches!(p, Principal::Key(_)),
            Access::Admin => p.is_admin(),
        }
    }

    /// The audiences a connection of `p` listens to; empty if `p` has none here.
    pub fn audiences_for(&self, p: &Principal) -> Vec<Audience> {
        let own = match p {
            Principal::Key(k) => Some(Audience::Key(k.id)),
            Principal::Master => None,
        };
        match self.listens {
            Listens::OwnKey => own.into_iter().collect(),
            Listens::OwnKeyAndGlobal => own.into_iter().chain([Audience::Global]).collect(),
            Listens::Admin => vec![Audience::Admin],
        }
    }

    pub fn forwards(&self, event: Outbound) -> bool {
        match self.receives {
            Receives::All => true,
            Receives::Tasks => event.task().is_some(),
            Receives::Only(events) => events.contains(&event),
        }
    }

    /// The method a client invocation target names (case-insensitive).
    pub fn method(&self, target: &str) -> Option<HubMethod> {
        self.methods
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::{KeyHash, KeyId, VirtualKey};

    #[test]
    fn routes_and_methods_match_case_insensitively() {
        let hub = find("SPEND-Notifications").unwrap();
        assert_eq!(hub.name, "spend");
        assert!(find("Spend").is_some());
        assert!(find("tasks-nope").is_none());
        assert_eq!(hub.method("resume"), Some(HubMethod::Resume));
        assert_eq!(hub.method("SubscribeToTask"), None);
        assert!(hub.forwards(Outbound::SpendUpdate));
        assert!(!hub.forwards(Outbound::TaskProgress));
    }

    #[test]
    fn spend_hub_is_for_virtual_keys_on_their_own_audience() {
        let hub = find("spend").unwrap();
        let key = VirtualKey::new(KeyId::new(7).unwrap(), KeyHash::of_raw("k"), "k");
        let p = Principal::Key(Box::new(key));
        assert!(hub.admits(&p));
        assert!(!hub.admits(&Principal::Master));
        assert_eq!(
            hub.audiences_for(&p),
            vec![Audience::Key(KeyId::new(7).unwrap())]
        );
    }
}
