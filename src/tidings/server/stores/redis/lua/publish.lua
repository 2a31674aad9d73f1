-- A publish: one call of `append` (append.lua, which this script starts with).
-- KEYS: stream, meta, channels set.
-- ARGV: name, data JSON, event ("" for none), now, default max_messages,
--       idempotency key prefix ("{p}idem:{name}:"), key digest ("" for none), TTL ms.
-- Reply: that of `append`.
return append(KEYS[1], KEYS[2], KEYS[3],
              ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
