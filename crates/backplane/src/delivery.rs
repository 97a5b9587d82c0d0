//! One event as a node hands it to its local listeners.
use crate::position::Position;
use herald_domain::{Audience, OutboundEvent};
use std::sync::Arc;

/// One event of one audience, at its position in that audience's history stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub audience: Audience,
    pub position: Position,
    pub event: Arc<OutboundEvent>,
}
