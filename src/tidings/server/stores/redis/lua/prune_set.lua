-- Removes from a user's set of credential keys the members whose credential is gone.
-- KEYS: a user's set.  ARGV: the credential key prefix ("{p}cred:").
-- Reply: how many members were removed.
local gone = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. member) == 0 then
    redis.call('SREM', KEYS[1], member)
    gone = gone + 1
  end
end
return gone
