-- purge: ARGV[3] the cutoff: only a completed record last changed at or before it is removed.
-- Mirrors ExecutionCommand::Purge: the record goes, its last token and event sequence stay (the
-- tombstone), its earlier history is dropped and a 'purged' event starts the new one.
local now = clock(ARGV[1])
local cutoff = arg_num(3, 'cutoff')
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
if r.state ~= 'completed' or lt(cutoff, field(r, 'updated')) then
  return rejected(r, 'wrong_state')
end
local last = str(last_token(f))
if f.seq ~= nil then
  field(f, 'seq')
end
redis.call('DEL', KEYS[2])
local seq = append(f, now, 'purged', r.token, nil, nil, nil)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'last', last, 'seq', seq)
changed(seq)
return {'purged'}
