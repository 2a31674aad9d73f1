-- Retention by age of one channel: drops the entries older than now - max_age (the
-- channel's own, else the default) from the front.
-- KEYS: stream, meta.  ARGV: now, default max_age.
-- Reply: how many entries were dropped.
local age = redis.call('HGET', KEYS[2], 'max_age') or ARGV[2]
local cutoff = tonumber(ARGV[1]) - tonumber(age)
local start = '-'
local cut = false
while true do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 512)
  if #batch == 0 then
    break
  end
  for _, entry in ipairs(batch) do
    local fields = entry[2]
    local published = false
    for i = 1, #fields, 2 do
      if fields[i] == 't' then
        published = tonumber(fields[i + 1])
      end
    end
    if (not published) or published >= cutoff then
      cut = entry[1]
      break
    end
  end
  if cut then
    break
  end
  start = '(' .. batch[#batch][1]
end
if cut then
  return redis.call('XTRIM', KEYS[1], 'MINID', cut)
end
if start == '-' then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
