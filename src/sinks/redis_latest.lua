-- evalsink's redis sink: the latest state of one hash by event time, and (for queue metrics)
-- the history stream. Atomic, so that concurrent writers and replays cannot interleave.
--
-- KEYS[1]  the state hash; KEYS[2] (optional) the history stream.
-- ARGV[1]  TTL of the hash in seconds; ARGV[2] approximate MAXLEN of the stream;
-- ARGV[3]  n, the number of data fields; ARGV[4 .. 3+n] their names;
-- then per event, oldest first: ts_us (epoch microseconds), event_id, ts_ms, and n values.
--
-- The hash is written only when the newest event given is later than the one it holds
-- (greater ts_us, ties broken by event_id), and then its TTL is set again. A stream entry's ID
-- is the event time (ms-seq); an event already in the stream (same ms, same event_id) is not
-- added twice, and an event older than the stream's newest entry cannot be inserted.
-- Returns {hash written (0 or 1), entries appended, duplicates, late}.

local function later(us, id, old_us, old_id)
  if us ~= old_us then
    return us > old_us
  end
  -- Byte-wise: Lua's < on strings follows the server's locale.
  local n = math.min(#id, #old_id)
  for i = 1, n do
    local a, b = string.byte(id, i), string.byte(old_id, i)
    if a ~= b then
      return a > b
    end
  end
  return #id > #old_id
end

local hash, stream = KEYS[1], KEYS[2]
local ttl, maxlen, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local first, stride = 4 + n, 3 + n
local appended, duplicates, late = 0, 0, 0

local top_ms, top_seq = -1, -1
if stream then
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if last[1] then
    local id = last[1][1]
    local dash = string.find(id, '-', 1, true)
    top_ms = tonumber(string.sub(id, 1, dash - 1))
    top_seq = tonumber(string.sub(id, dash + 1))
  end
end

-- Only entries up to the stream's newest before this call need a look at the stream; later
-- ones can only repeat an event appended by this call.
local stored_ms = top_ms
local appended_ids = {}

local best
for i = first, #ARGV, stride do
  local us, id, ms_text = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  if not best or later(us, id, tonumber(ARGV[best]), ARGV[best + 1]) then
    best = i
  end
  if stream then
    local ms = tonumber(ms_text)
    local duplicate = appended_ids[id] == ms
    if not duplicate and ms <= stored_ms then
      for _, entry in ipairs(redis.call('XRANGE', stream, ms_text, ms_text)) do
        local fields = entry[2]
        for j = 1, #fields, 2 do
          if fields[j] == 'event_id' and fields[j + 1] == id then
            duplicate = true
          end
        end
      end
    end
    if duplicate then
      duplicates = duplicates + 1
    elseif ms < top_ms or ms < 1 then
      late = late + 1
    else
      local seq = 0
      if ms == top_ms then
        seq = top_seq + 1
      end
      local args = {'XADD', stream, 'MAXLEN', '~', maxlen, ms_text .. '-' .. seq, 'event_id', id}
      for k = 1, n do
        args[#args + 1] = ARGV[3 + k]
        args[#args + 1] = ARGV[i + 2 + k]
      end
      redis.call(unpack(args))
      appended_ids[id] = ms
      top_ms, top_seq = ms, seq
      appended = appended + 1
    end
  end
end

local written = 0
if best then
  local current = redis.call('HMGET', hash, 'ts_us', 'event_id')
  if not current[1] or later(tonumber(ARGV[best]), ARGV[best + 1], tonumber(current[1]), current[2] or '') then
    local args = {'HSET', hash, 'ts_us', ARGV[best], 'event_id', ARGV[best + 1]}
    for k = 1, n do
      args[#args + 1] = ARGV[3 + k]
      args[#args + 1] = ARGV[best + 2 + k]
    end
    redis.call(unpack(args))
    redis.call('EXPIRE', hash, ttl)
    written = 1
  end
end
return {written, appended, duplicates, late}
