-- Messages of a channel after a cursor, with what a reader needs to detect a gap.
-- KEYS: stream, meta.  ARGV: after (normalized decimal), limit.
-- Reply: {0} when the channel does not exist, else
--        {1, last seq, oldest retained seq (0: none), reset (0/1), entries}.
local meta = redis.call('HMGET', KEYS[2], 'seq', 'created')
if not meta[2] then
  return {0}
end
local last = tonumber(meta[1] or '0')
local after = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = last + 1
if head[1] then
  first = tonumber(string.sub(head[1][1], 3))
end
local reset = 0
if after ~= 0 and (after < first - 1 or after > last) then
  reset = 1
end
local entries = {}
if limit > 0 then
  local start = '-'
  if after ~= 0 and reset == 0 then
    start = '(0-' .. ARGV[1]
  end
  entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', limit)
end
local oldest = 0
if head[1] then
  oldest = first
end
return {1, last, oldest, reset, entries}
