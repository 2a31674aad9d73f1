-- Deletes a credential only if it is still the one the caller read.
-- KEYS: credential key, owner's set.  ARGV: body expected, member.
-- Reply: 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
