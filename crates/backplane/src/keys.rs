//! The Redis key and channel names of each audience, hash-tagged so one script touches one slot.
use herald_domain::Audience;

pub(crate) struct RedisKeys {
    pub(crate) prefix: String,
}

impl RedisKeys {
    pub(crate) fn stream(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:stream", self.prefix)
    }
    pub(crate) fn seen(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:seen", self.prefix)
    }
    pub(crate) fn task(&self, task_id: &str) -> String {
        format!("{}:task:{task_id}", self.prefix)
    }
    /// The last id written to the stream; outlives the stream so expiry is detectable.
    pub(crate) fn last(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:last", self.prefix)
    }
    pub(crate) fn channel(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:live", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hash_tagged_per_audience() {
        let n = RedisKeys {
            prefix: "herald".into(),
        };
        let a = Audience::Key(herald_domain::KeyId::new(42).unwrap());
        assert_eq!(n.stream(a), "herald:{vkey:42}:stream");
        assert_eq!(n.channel(a), "herald:{vkey:42}:live");
        assert_eq!(n.seen(a), "herald:{vkey:42}:seen");
    }
}
