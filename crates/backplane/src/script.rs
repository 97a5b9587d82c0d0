//! The Lua scripts the backplane runs: publish (dedupe, history, live channel in one call per
//! audience) and the task registry's write.
/// Appends a batch of (audience, event) entries in one call. Per entry, KEYS: stream, seen,
/// last; ARGV: channel, event id, data, after three shared ARGV: maxlen, ttl ms, last ttl ms.
/// An entry whose event id the audience has already published is skipped. Returns the
/// 0-based places of the entries skipped that way (usually none: an empty array costs nothing).
///
/// Each entry records the id of the one before it in its stream (`p`), so a reader can tell
/// whether entries between its cursor and the oldest entry still held were trimmed, expired or
/// wiped. Within a batch the previous id is carried in a Lua table, and each audience's `last`,
/// trim and expiry are written once at the end: an audience that gets many entries per batch
/// (admin, global) pays for them once.
///
/// Every `redis.call` costs about as much again in the script as the command itself, so:
/// - the dedupe window takes one call per entry: `ZADD NX` both checks and records the id,
///   scored by the server's clock (ms × 1024 + place in the batch, exact in a double) so that
///   trimming by rank drops the oldest; the trim keeps the newest `keep` by a negative rank,
///   without `ZCARD`;
/// - the idle expiry of the stream and the dedupe window is set on an audience's first entry
///   in each time slice of `ttl / 4` (the slice of its previous entry is that entry's id), to
///   `ttl + ttl / 4`: each key still lives at least `ttl` after the audience's last entry, and
///   an audience with one entry per batch (every key's) skips two calls per entry.
pub(crate) const PUBLISH_SCRIPT: &str = r#"
local maxlen, ttl, last_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local keep = tonumber(maxlen) * 2
local slice = math.max(1, math.floor(ttl / 4))
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local base = now_ms * 1024
local prev, touched, refresh = {}, {}, {}
local skipped = {}
for j = 0, #KEYS / 3 - 1 do
  local stream, seen, last = KEYS[3 * j + 1], KEYS[3 * j + 2], KEYS[3 * j + 3]
  local eid, data = ARGV[3 * j + 5], ARGV[3 * j + 6]
  if redis.call('ZADD', seen, 'NX', base + j % 1024, eid) == 1 then
    local p = prev[last]
    if p == nil then
      p = redis.call('GET', last) or ''
      touched[#touched + 1] = j
      local p_ms = tonumber(string.match(p, '^(%d+)'))
      refresh[last] = p_ms == nil or math.floor(p_ms / slice) ~= math.floor(now_ms / slice)
    end
    local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', data, 'p', p)
    prev[last] = id
    redis.call('PUBLISH', ARGV[3 * j + 4], id .. ' ' .. data)
  else
    skipped[#skipped + 1] = j
  end
end
for _, j in ipairs(touched) do
  local stream, seen, last = KEYS[3 * j + 1], KEYS[3 * j + 2], KEYS[3 * j + 3]
  redis.call('SET', last, prev[last], 'PX', last_ttl)
  redis.call('ZREMRANGEBYRANK', seen, 0, -keep - 1)
  if refresh[last] then
    redis.call('PEXPIRE', stream, ttl + slice)
    redis.call('PEXPIRE', seen, ttl + slice)
  end
end
return skipped
"#;

/// The publish script for Redis Cluster: the channel shares the audience's hash tag, so the
/// sharded publish stays on the script's slot. Each call carries one audience's entry.
pub(crate) fn cluster_publish_script() -> String {
    PUBLISH_SCRIPT.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
}

/// The publish script with one change: the channel message is the entry's data alone, without
/// the stream id in front. Herald does not use it; the load generator feeds the floor through
/// it, so that the floor's events cost Redis what Herald's do (dedupe set, stream, last id) and
/// the two nodes can be compared alone. Same KEYS and ARGV as Herald's script.
#[cfg(feature = "bench")]
pub fn history_script_for_plain_subscribers() -> String {
    PUBLISH_SCRIPT.replace("id .. ' ' .. data)", "data)")
}

/// KEYS: task. ARGV: state JSON, terminal (1/0), ttl ms. Keeps a terminal state against a
/// late non-terminal one.
pub(crate) const TASK_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[2] == '0' then
  local ok, old = pcall(cjson.decode, cur)
  if ok and (old.status == 'completed' or old.status == 'failed' or old.status == 'cancelled') then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

#[cfg(all(test, feature = "bench"))]
mod tests {
    use super::*;

    #[test]
    fn the_script_for_plain_subscribers_differs_only_in_the_message() {
        let plain = history_script_for_plain_subscribers();
        assert_ne!(
            plain, PUBLISH_SCRIPT,
            "the replaced text is no longer in the script"
        );
        assert_eq!(
            plain.replace("data)", ""),
            PUBLISH_SCRIPT.replace("id .. ' ' .. data)", "")
        );
    }
}
