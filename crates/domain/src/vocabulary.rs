//! The event vocabulary, in one place: every type Herald takes from the bus, the outbound events
//! each one produces and which audiences hear them. The consumer binds its exchanges from
//! [`INBOUND`], the pipeline routes by it, the gateway's hub table names [`Outbound`] values, and
//! `docs/events.md` is checked against it by `tests/event_catalog.rs`. Adding an event type is an
//! entry here plus its payload type (see docs/architecture.md).
use crate::audience::Audience;
use crate::ids::KeyId;
use crate::invalid::Invalid;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::LazyLock;

/// Which publisher family a task event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFamily {
    Image,
    Video,
    Generic,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPhase {
    Requested,
    Started,
    Progress,
    Completed,
    Failed,
    Cancelled,
}

/// A task's `status` as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl TaskPhase {
    /// The `status` reported to clients.
    pub fn status(self) -> TaskStatus {
        match self {
            Self::Requested => TaskStatus::Pending,
            Self::Started | Self::Progress => TaskStatus::Running,
            Self::Completed => TaskStatus::Completed,
            Self::Failed => TaskStatus::Failed,
            Self::Cancelled => TaskStatus::Cancelled,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.status().is_terminal()
    }

    /// Conduit's positional method for this phase on `/hubs/tasks`, if it has one (a requested
    /// task has none).
    pub fn conduit_method(self) -> Option<Outbound> {
        match self {
            Self::Requested => None,
            Self::Started | Self::Progress => Some(Outbound::TaskProgress),
            Self::Completed => Some(Outbound::TaskCompleted),
            Self::Failed => Some(Outbound::TaskFailed),
            Self::Cancelled => Some(Outbound::TaskCancelled),
        }
    }
}

/// created / updated / deleted: of a key, a model mapping or a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    Created,
    Updated,
    Deleted,
}

impl ChangeAction {
    /// Conduit's various spellings (`Created`, `add`, `Removed`, ...), case-insensitively.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.trim().to_ascii_lowercase().as_str() {
            "created" | "create" | "added" | "add" => Ok(Self::Created),
            "updated" | "update" | "modified" | "changed" => Ok(Self::Updated),
            "deleted" | "delete" | "removed" | "remove" => Ok(Self::Deleted),
            other => Err(Invalid::new(format!(
                "changeType must be created, updated or deleted, got {:?}",
                crate::invalid::prefix(other)
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

/// What a `NavigationStateUpdated` is about: its `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Navigation {
    ModelMapping,
    Provider,
    VirtualKey,
}

impl Navigation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModelMapping => "model_mapping",
            Self::Provider => "provider",
            Self::VirtualKey => "virtual_key",
        }
    }
}

/// Defines [`Outbound`] with its wire names in one list, so a name and its variant cannot drift.
macro_rules! outbound {
    ($($(#[$doc:meta])* $variant:ident,)*) => {
        /// Every event name a client can receive through the backplane. The wire name is the
        /// variant's name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Outbound {
            $($(#[$doc])* $variant,)*
        }

        impl Outbound {
            pub const ALL: &'static [Outbound] = &[$(Outbound::$variant,)*];

            /// The hub method name clients receive.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Outbound::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

outbound! {
    SpendUpdate,
    BudgetAlert,
    ImageGenerationProgress,
    ImageGenerationCompleted,
    ImageGenerationFailed,
    ImageGenerationCancelled,
    VideoGenerationRequested,
    VideoGenerationStarted,
    VideoGenerationProgress,
    VideoGenerationCompleted,
    VideoGenerationFailed,
    TaskProgress,
    TaskCompleted,
    TaskFailed,
    TaskCancelled,
    ProviderHealthChanged,
    ModelsDiscovered,
    NavigationStateUpdated,
    VirtualKeyCreated,
    VirtualKeyUpdated,
    VirtualKeyDeleted,
}

impl Outbound {
    /// The event named `name`, matched case-insensitively as SignalR clients match names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|o| o.name().eq_ignore_ascii_case(name))
    }

    /// The task family and phase of a task event.
    /// The gateway asks this for every task event on every connection of a task hub, so it is
    /// a lookup in a table derived once from [`INBOUND`], indexed by the variant.
    pub fn task(self) -> Option<(TaskFamily, TaskPhase)> {
        static TASKS: LazyLock<Vec<Option<(TaskFamily, TaskPhase)>>> = LazyLock::new(|| {
            Outbound::ALL
                .iter()
                .map(|o| {
                    INBOUND.iter().find_map(|t| match t.kind {
                        InboundType::Task(family, phase) if t.name == o.name() => {
                            Some((family, phase))
                        }
                        _ => None,
                    })
                })
                .collect()
        });
        TASKS.get(self as usize).copied().flatten()
    }

    /// Events on a key's own stream after which its connections re-check the key (it may have
    /// been disabled, deleted or re-hashed).
    pub fn is_key_change(self) -> bool {
        matches!(self, Self::VirtualKeyUpdated | Self::VirtualKeyDeleted)
    }
}

impl fmt::Display for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Outbound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Outbound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event name {name:?}")))
    }
}

/// Which audiences an outbound event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The key the event belongs to, and the admins.
    OwnerAndAdmin,
    /// Every key (the global stream) and the admins.
    GlobalAndAdmin,
    /// The admins only: other keys must not learn about this key.
    AdminOnly,
}

impl Reach {
    /// The audiences for an event of key `owner` (`None` for a global event).
    pub fn audiences(self, owner: Option<KeyId>) -> AudienceSet {
        match (self, owner) {
            (Self::OwnerAndAdmin, Some(k)) => AudienceSet::two(Audience::Key(k), Audience::Admin),
            // An owned event without an owner cannot exist past the pipeline; admins still hear.
            (Self::OwnerAndAdmin, None) | (Self::AdminOnly, _) => AudienceSet::one(Audience::Admin),
            (Self::GlobalAndAdmin, _) => AudienceSet::two(Audience::Global, Audience::Admin),
        }
    }
}

/// At most two audiences, without an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudienceSet {
    list: [Audience; 2],
    len: usize,
}

impl AudienceSet {
    fn one(a: Audience) -> Self {
        Self {
            list: [a, a],
            len: 1,
        }
    }

    fn two(a: Audience, b: Audience) -> Self {
        Self {
            list: [a, b],
            len: 2,
        }
    }

    pub fn as_slice(&self) -> &[Audience] {
        &self.list[..self.len]
    }
}

/// What kind of payload an inbound type carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundType {
    SpendUpdated,
    Task(TaskFamily, TaskPhase),
    ProviderHealthChanged,
    ModelsDiscovered,
    ModelMappingChanged,
    VirtualKey(ChangeAction),
}

/// One inbound type: its bus name (and aliases), what it carries and what it produces.
#[derive(Debug)]
pub struct InboundSpec {
    /// The short type name: CloudEvents `type`, the last part of MassTransit's `messageType`.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub kind: InboundType,
    /// The outbound events it produces and where each goes.
    pub produces: &'static [(Outbound, Reach)],
}

impl InboundSpec {
    /// Every name this type is published under: the canonical one and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + use<> {
        std::iter::once(self.name).chain(self.aliases.iter().copied())
    }

    /// The first event it produces: the one that carries its own payload (task events and key
    /// changes keep their inbound name). Every entry produces one; a test checks it.
    pub fn own_event(&self) -> Outbound {
        self.produces
            .first()
            .map_or(Outbound::NavigationStateUpdated, |p| p.0)
    }

    /// Where `event` goes when this type produces it.
    pub fn reach(&self, event: Outbound) -> Option<Reach> {
        self.produces
            .iter()
            .find(|(o, _)| *o == event)
            .map(|(_, r)| *r)
    }
}

/// The inbound type named `name` (or one of its aliases), case-insensitively.
pub fn inbound(name: &str) -> Option<&'static InboundSpec> {
    INBOUND
        .iter()
        .find(|t| t.names().any(|n| n.eq_ignore_ascii_case(name)))
}

/// Every type name Herald takes from the bus, aliases included: one MassTransit exchange each.
pub fn bus_names() -> impl Iterator<Item = &'static str> {
    INBOUND.iter().flat_map(InboundSpec::names)
}

/// The spec of an inbound type (every [`InboundType`] has exactly one entry; a test checks it).
pub fn spec(kind: InboundType) -> &'static InboundSpec {
    INBOUND
        .iter()
        .find(|t| t.kind == kind)
        .unwrap_or(&INBOUND[0])
}

use Outbound as O;
use Reach::{AdminOnly, GlobalAndAdmin, OwnerAndAdmin};
use TaskFamily::{Generic, Image, Video};
use TaskPhase::{Cancelled, Completed, Failed, Progress, Requested, Started};

/// A task type: the outbound event keeps the inbound name and goes to the task's owner.
macro_rules! task {
    ($name:ident, $family:expr, $phase:expr) => {
        InboundSpec {
            name: stringify!($name),
            aliases: &[],
            kind: InboundType::Task($family, $phase),
            produces: &[(O::$name, OwnerAndAdmin)],
        }
    };
}

/// A virtual key change: the key's own stream and admins get the event; navigation goes to
/// admins only.
macro_rules! key_change {
    ($name:ident, $action:expr) => {
        InboundSpec {
            name: stringify!($name),
            aliases: &[],
            kind: InboundType::VirtualKey($action),
            produces: &[
                (O::$name, OwnerAndAdmin),
                (O::NavigationStateUpdated, AdminOnly),
            ],
        }
    };
}

/// Every inbound type Herald handles (docs/events.md, "Inbound").
pub static INBOUND: &[InboundSpec] = &[
    InboundSpec {
        name: "SpendUpdated",
        aliases: &[],
        kind: InboundType::SpendUpdated,
        produces: &[
            (O::SpendUpdate, OwnerAndAdmin),
            (O::BudgetAlert, OwnerAndAdmin),
        ],
    },
    task!(ImageGenerationProgress, Image, Progress),
    task!(ImageGenerationCompleted, Image, Completed),
    task!(ImageGenerationFailed, Image, Failed),
    task!(ImageGenerationCancelled, Image, Cancelled),
    task!(VideoGenerationRequested, Video, Requested),
    task!(VideoGenerationStarted, Video, Started),
    task!(VideoGenerationProgress, Video, Progress),
    task!(VideoGenerationCompleted, Video, Completed),
    task!(VideoGenerationFailed, Video, Failed),
    task!(TaskProgress, Generic, Progress),
    task!(TaskCompleted, Generic, Completed),
    task!(TaskFailed, Generic, Failed),
    task!(TaskCancelled, Generic, Cancelled),
    InboundSpec {
        name: "ProviderHealthChanged",
        aliases: &[],
        kind: InboundType::ProviderHealthChanged,
        produces: &[
            (O::ProviderHealthChanged, GlobalAndAdmin),
            (O::NavigationStateUpdated, GlobalAndAdmin),
        ],
    },
    InboundSpec {
        name: "ModelsDiscovered",
        aliases: &["ModelCapabilitiesDiscovered"],
        kind: InboundType::ModelsDiscovered,
        produces: &[(O::ModelsDiscovered, GlobalAndAdmin)],
    },
    InboundSpec {
        name: "ModelMappingChanged",
        aliases: &[],
        kind: InboundType::ModelMappingChanged,
        produces: &[(O::NavigationStateUpdated, GlobalAndAdmin)],
    },
    key_change!(VirtualKeyCreated, ChangeAction::Created),
    key_change!(VirtualKeyUpdated, ChangeAction::Updated),
    key_change!(VirtualKeyDeleted, ChangeAction::Deleted),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outbound_event_is_produced_by_some_inbound_type() {
        for o in Outbound::ALL {
            assert!(
                INBOUND.iter().any(|t| t.reach(*o).is_some()),
                "{o} is produced by nothing"
            );
        }
    }

    #[test]
    fn names_round_trip_and_match_case_insensitively() {
        for o in Outbound::ALL {
            assert_eq!(Outbound::parse(o.name()), Some(*o));
            assert_eq!(Outbound::parse(&o.name().to_lowercase()), Some(*o));
            let json = serde_json::to_string(o).expect("serializes");
            assert_eq!(json, format!("\"{}\"", o.name()));
            assert_eq!(serde_json::from_str::<Outbound>(&json).ok(), Some(*o));
        }
        assert!(serde_json::from_str::<Outbound>("\"NoSuchEvent\"").is_err());
    }

    #[test]
    fn each_inbound_type_has_one_entry_and_distinct_names() {
        for t in INBOUND {
            assert!(std::ptr::eq(spec(t.kind), t), "{} is not unique", t.name);
            for n in t.names() {
                assert!(
                    std::ptr::eq(inbound(n).expect("found"), t),
                    "{n} is ambiguous"
                );
            }
        }
        assert_eq!(
            inbound("modelcapabilitiesdiscovered").map(|t| t.name),
            Some("ModelsDiscovered")
        );
    }

    #[test]
    fn every_inbound_type_produces_its_own_event_first() {
        for t in INBOUND {
            assert!(!t.produces.is_empty(), "{} produces nothing", t.name);
            if matches!(t.kind, InboundType::Task(..) | InboundType::VirtualKey(_)) {
                assert_eq!(t.own_event().name(), t.name);
            }
        }
    }

    #[test]
    fn all_lists_the_variants_in_declaration_order() {
        for (i, o) in Outbound::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o}");
        }
    }

    #[test]
    fn task_events_know_their_phase_and_conduit_method() {
        assert_eq!(
            Outbound::VideoGenerationStarted.task(),
            Some((Video, Started))
        );
        assert_eq!(Outbound::SpendUpdate.task(), None);
        assert_eq!(Started.conduit_method(), Some(Outbound::TaskProgress));
        assert_eq!(Requested.conduit_method(), None);
    }

    #[test]
    fn reach_names_the_audiences() {
        let k = KeyId::new(7).expect("valid");
        assert_eq!(
            OwnerAndAdmin.audiences(Some(k)).as_slice(),
            &[Audience::Key(k), Audience::Admin]
        );
        assert_eq!(AdminOnly.audiences(Some(k)).as_slice(), &[Audience::Admin]);
        assert_eq!(
            GlobalAndAdmin.audiences(None).as_slice(),
            &[Audience::Global, Audience::Admin]
        );
    }
}
