package stemredis

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"

	"github.com/redis/go-redis/v9"
)

// Every atomic state transition is one Lua script, listed in this file with
// its KEYS, ARGV and return value. Scripts read the clock with TIME, so that
// leases, delays and presence are measured on the server's clock, the one
// clock every host shares. Times are microseconds since the Unix epoch
// (exact in a Lua number up to the year 2255) and are formatted with %.0f
// before they are handed back to Redis, since Lua's default number format
// would round them.

// script is a Lua script with its SHA-1 digest, run with EVALSHA and loaded
// with EVAL on a server that lacks it.
type script struct {
	src string
	sha string
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:])}
}

// run runs s on c in one round trip (two the first time a server sees it).
func (s *script) run(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
	cmd := c.EvalSha(ctx, s.sha, keys, args...)
	if isNoScript(cmd.Err()) {
		return c.Eval(ctx, s.src, keys, args...)
	}
	return cmd
}

// runRO runs s, a script that only reads, with EVALSHA_RO (EVAL_RO the
// first time a server sees it). EVAL and EVALSHA declare their KEYS as
// written, so a user whose ACL lets it read those keys but not write them
// (a worker reading the revoke store, docs/security.md) may run a script
// only this way. A server without these commands (before Redis 7.0) runs
// it with EVALSHA.
func (s *script) runRO(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
	cmd := c.EvalShaRO(ctx, s.sha, keys, args...)
	if isNoScript(cmd.Err()) {
		cmd = c.EvalRO(ctx, s.src, keys, args...)
	}
	if redis.HasErrorPrefix(cmd.Err(), "unknown command") {
		return s.run(ctx, c, keys, args...)
	}
	return cmd
}

// scriptCall is one script invocation of a pipeline.
type scriptCall struct {
	s    *script
	keys []string
	args []any
}

// runPipelined runs calls in one pipeline and returns their commands in
// order. A call the server answered with NOSCRIPT did not run; such calls
// are run again, with their source, in a second pipeline.
func runPipelined(ctx context.Context, rdb redis.Cmdable, calls []scriptCall) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	pipe := rdb.Pipeline()
	for i, c := range calls {
		cmds[i] = pipe.EvalSha(ctx, c.s.sha, c.keys, c.args...)
	}
	_, err := pipe.Exec(ctx)
	var again []int
	for i, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return cmds, ignoreRedisErr(err)
	}
	pipe = rdb.Pipeline()
	for _, i := range again {
		c := calls[i]
		cmds[i] = pipe.Eval(ctx, c.s.src, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return cmds, err
		}
	}
	return cmds, nil
}

// ignoreRedisErr drops the error a pipeline's Exec reports for one of its
// commands (each command carries its own); a transport error stays.
func ignoreRedisErr(err error) error {
	var rerr redis.Error
	if err == nil || errors.As(err, &rerr) {
		return nil
	}
	return err
}

func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

// luaPrelude is shared by the scripts that read the clock.
const luaPrelude = `
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function us(n)
  return string.format('%.0f', n)
end
-- entry_msg returns the envelope field of a stream entry's field list, or
-- the whole list as JSON when a foreign writer left no such field (the
-- broker then reports it undecodable instead of losing it).
local function entry_msg(f)
  for i = 1, #f, 2 do
    if f[i] == 'msg' then return f[i + 1] end
  end
  return cjson.encode(f)
end
`

// claimScript leases up to max messages of one queue.
//
// Messages whose lease expired come first: each one is leased to this
// claim, before any new entry, in order of lease deadline, at most 1000
// looked at per call. Its stream entry is replaced by a copy under a new
// id (appended, then the original deleted), so that the old holder's
// receipt stops matching; the copy is leased at once and carries r=1
// (redelivered). Such a copy sits beyond the group's read position, so
// XREADGROUP reaches it later: new entries that are leased already are
// skipped. Expired leases the claim has no room for stay in
// the leases set, ahead of the queue, for the next claim; the old holder
// keeps them until then (its Ack still succeeds: nobody else got them).
// An expired lease whose entry is gone (deleted by hand) is dropped.
//
// Then it does the queue's upkeep when asked to (ARGV[5]) or when the
// batch is not full: delayed messages that are due are appended to the
// stream (without their publish token, see delayedMember), in order of
// due time, at most 1000 per call. Then it reads new entries with
// XREADGROUP (creating the group when missing) and records a lease
// deadline for each. An entry released or re-leased before carries the
// field r=1 after msg: its message was delivered before. An entry of msg
// alone is a first delivery; one of any other shape, from a foreign
// writer, counts as redelivered (cannot tell).
//
// A claim is idempotent under its token: a claim that leases something
// stores the ids it leased in a claim record (KEYS[4], expiring with the
// lease), and a run whose record exists is a replay (go-redis sent the
// script again after a lost reply, or Broker.Claim retried a failed claim
// with its token, see claimTokens): it leases nothing new and returns the
// recorded messages that are still leased, with their leases renewed, and
// their redelivered flags as the first run saw them. Recorded messages
// beyond max (a retry asking for fewer) are released at once as
// releaseScript does. When none of the recorded messages is leased any
// more (their leases expired and another claim took them), the run
// claims afresh under the token. KEYS[5...] are the records of claims
// whose replies arrived, deleted in passing.
//
// KEYS[1] stream, KEYS[2] leases, KEYS[3] delayed, KEYS[4] this claim's
// record, KEYS[5...] records to delete
// ARGV[1] group, ARGV[2] consumer, ARGV[3] max, ARGV[4] lease in µs,
// ARGV[5] "1" to do the upkeep first, ARGV[6] "1" to delete consumers that
// hold nothing and were idle more than ARGV[7] ms, ARGV[8] how long the
// claim record is kept in ms (the lease, at least 1).
// Returns {last_id, next_due_us, id1, msg1, redelivered1, id2, msg2,
// redelivered2, ...}, redelivered being 1 or 0. When nothing
// was leased, last_id is the stream's last entry id ("0-0" when empty), to
// wait on with XREAD, and next_due_us is how long until the next delayed
// message or lease deadline is due (-1: nothing is scheduled); otherwise
// they are "" and -1.
var claimScript = newScript(luaPrelude + `
local stream, leases, delayed = KEYS[1], KEYS[2], KEYS[3]
local grp, consumer = ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])
local now = now_us()
local snow = us(now)
local sdeadline = us(now + tonumber(ARGV[4]))
local out = {'', -1}
local nout = 2

-- delayed_msg returns the envelope of a delayed-set member: the member
-- without the publish token in front of the JSON. A member written before
-- tokens existed starts with the JSON's '{' and is kept whole.
local function delayed_msg(m)
  local i = string.find(m, '{', 1, true)
  if i and i > 1 then return string.sub(m, i) end
  return m
end

-- take_expired leases to this claim up to n messages whose lease
-- expired, earliest deadline first, looking at 1000 at most, and returns
-- how many it leased.
local function take_expired(n)
  local got, seen = 0, 0
  while got < n and seen < 1000 do
    -- Read a few more than needed, so that entries deleted by hand cost
    -- no extra round of reads.
    local ids = redis.call('ZRANGEBYSCORE', leases, '-inf', snow, 'LIMIT', 0,
      math.min(math.max(n - got, 100), 1000 - seen))
    if #ids == 0 then break end
    seen = seen + #ids
    for _, id in ipairs(ids) do
      if got >= n then break end
      -- The copy is appended before the original is removed, so a
      -- failure part way (scripts are not rolled back) can duplicate a
      -- message but never lose one.
      local e = redis.call('XRANGE', stream, id, id)
      if #e > 0 then
        local m = entry_msg(e[1][2])
        local nid = redis.call('XADD', stream, '*', 'msg', m, 'r', '1')
        redis.call('XDEL', stream, id)
        redis.call('ZADD', leases, sdeadline, nid)
        out[nout + 1] = nid
        out[nout + 2] = m
        out[nout + 3] = 1
        nout = nout + 3
        got = got + 1
      end
      redis.call('XACK', stream, grp, id)
      redis.call('ZREM', leases, id)
    end
  end
  return got
end

local function upkeep()
  redis.pcall('XGROUP', 'CREATE', stream, grp, '0', 'MKSTREAM')
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', snow, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    redis.call('XADD', stream, '*', 'msg', delayed_msg(m))
  end
  if #due > 0 then redis.call('ZREM', delayed, unpack(due)) end
  return #due
end

local function sweep()
  local cs = redis.pcall('XINFO', 'CONSUMERS', stream, grp)
  if type(cs) ~= 'table' or cs.err then return end
  local limit = tonumber(ARGV[7])
  for _, c in ipairs(cs) do
    local name, pending, idle
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1]
      elseif c[i] == 'pending' then pending = c[i + 1]
      elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    if name and pending == 0 and idle and idle > limit then
      redis.call('XGROUP', 'DELCONSUMER', stream, grp, name)
    end
  end
end

-- readnew leases up to n new entries (beyond the group's read position),
-- skipping those leased already (copies made by take_expired), and
-- returns how many it leased.
local function readnew(n)
  local got = 0
  while got < n do
    local want = math.min(n - got, 1000)
    local r = redis.pcall('XREADGROUP', 'GROUP', grp, consumer, 'COUNT', want, 'STREAMS', stream, '>')
    if type(r) == 'table' and r.err then
      if string.sub(r.err, 1, 7) ~= 'NOGROUP' then error(r) end
      redis.call('XGROUP', 'CREATE', stream, grp, '0', 'MKSTREAM')
      r = redis.call('XREADGROUP', 'GROUP', grp, consumer, 'COUNT', want, 'STREAMS', stream, '>')
    end
    if not r then break end
    local entries = r[1][2]
    local ids = {}
    for i, e in ipairs(entries) do ids[i] = e[1] end
    local held = {}
    if #ids > 0 then held = redis.call('ZMSCORE', leases, unpack(ids)) end
    local z, nz = {}, 0
    for i, e in ipairs(entries) do
      if not held[i] then
        local id, f = e[1], e[2]
        z[nz + 1] = sdeadline
        z[nz + 2] = id
        nz = nz + 2
        out[nout + 1] = id
        if f[1] == 'msg' then out[nout + 2] = f[2] else out[nout + 2] = entry_msg(f) end
        if f[1] == 'msg' and #f == 2 then out[nout + 3] = 0 else out[nout + 3] = 1 end
        nout = nout + 3
        got = got + 1
      end
    end
    if nz > 0 then redis.call('ZADD', leases, unpack(z)) end
    if #entries < want then break end
  end
  return got
end

if #KEYS > 4 then redis.call('DEL', unpack(KEYS, 5)) end
local rec = redis.call('GET', KEYS[4])
if rec then
  local got = 0
  for id in string.gmatch(rec, '%S+') do
    if redis.call('ZSCORE', leases, id) then
      local e = redis.call('XRANGE', stream, id, id)
      if #e == 0 then
        redis.call('ZREM', leases, id)
      elseif got < max then
        local f = e[1][2]
        redis.call('ZADD', leases, 'XX', sdeadline, id)
        out[nout + 1] = id
        out[nout + 2] = entry_msg(f)
        if f[1] == 'msg' and #f == 2 then out[nout + 3] = 0 else out[nout + 3] = 1 end
        nout = nout + 3
        got = got + 1
      else
        redis.call('XADD', stream, '*', 'msg', entry_msg(e[1][2]), 'r', '1')
        redis.call('XDEL', stream, id)
        redis.call('XACK', stream, grp, id)
        redis.call('ZREM', leases, id)
      end
    end
  end
  if got > 0 then return out end
end

local got = take_expired(max)
local kept = false
if ARGV[5] == '1' then
  upkeep()
  kept = true
end
if ARGV[6] == '1' then sweep() end
if got < max then got = got + readnew(max - got) end
if got < max and not kept then
  if upkeep() > 0 then got = got + readnew(max - got) end
end
if got > 0 then
  local ids = {}
  for i = 3, nout, 3 do ids[#ids + 1] = out[i] end
  redis.call('SET', KEYS[4], table.concat(ids, ' '), 'PX', ARGV[8])
else
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 then out[1] = last[1][1] else out[1] = '0-0' end
  local due
  local l = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  if #l > 0 then due = tonumber(l[2]) - now end
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if #d > 0 then
    local x = tonumber(d[2]) - now
    if due == nil or x < due then due = x end
  end
  if due ~= nil then out[2] = math.max(0, due) end
end
return out
`)

// ackScript finishes messages: each one still leased loses its lease and
// leaves the stream (XACK and XDEL).
//
// KEYS[1] stream, KEYS[2] leases
// ARGV[1] group, ARGV[2...] stream ids
// Returns the ids that were not leased (lease lost or already finished).
var ackScript = newScript(`
local ids = {}
for i = 2, #ARGV do ids[i - 1] = ARGV[i] end
local scores = redis.call('ZMSCORE', KEYS[2], unpack(ids))
local held, lost, nh, nl = {}, {}, 0, 0
for i, id in ipairs(ids) do
  if scores[i] then
    nh = nh + 1
    held[nh] = id
  else
    nl = nl + 1
    lost[nl] = id
  end
end
if nh > 0 then
  redis.call('ZREM', KEYS[2], unpack(held))
  redis.call('XACK', KEYS[1], ARGV[1], unpack(held))
  redis.call('XDEL', KEYS[1], unpack(held))
end
return lost
`)

// releaseScript makes leased messages ready again at once: each one still
// leased is appended to the stream again, unchanged, under a new id, with
// the field r=1 that marks it redelivered for the claim script.
//
// KEYS[1] stream, KEYS[2] leases
// ARGV[1] group, ARGV[2...] stream ids
// Returns the ids that were not leased.
var releaseScript = newScript(luaPrelude + `
local lost = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[2], id) then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if #e > 0 then
      redis.call('XADD', KEYS[1], '*', 'msg', entry_msg(e[1][2]), 'r', '1')
      redis.call('XDEL', KEYS[1], id)
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('ZREM', KEYS[2], id)
  else
    lost[#lost + 1] = id
  end
end
return lost
`)

// extendScript pushes one leased message's deadline to now plus the lease.
//
// KEYS[1] leases
// ARGV[1] stream id, ARGV[2] lease in µs
// Returns 1, or 0 when the message is not leased.
var extendScript = newScript(luaPrelude + `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], us(now_us() + tonumber(ARGV[2])), ARGV[1])
return 1
`)

// retryScript replaces a leased message with its next attempt, which goes
// to the delayed set of next's queue when its NotBefore is in the future
// and to that queue's stream otherwise. Checking the lease and replacing
// the message are one step, so of several runs for one delivery (a replay
// after a lost reply, a writer retrying after an error) only the first
// stores next. next's queue may be another one than the delivery's; its
// keys are then in another hash slot (see the package documentation).
//
// KEYS[1] stream, KEYS[2] leases, KEYS[3] next's stream, KEYS[4] next's
// delayed set
// ARGV[1] group, ARGV[2] stream id, ARGV[3] next envelope JSON,
// ARGV[4] next NotBefore in µs (0: now), ARGV[5] the delayed-set token
// Returns 1, or 0 when the message is not leased (nothing is stored then).
var retryScript = newScript(luaPrelude + `
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if tonumber(ARGV[4]) > now_us() then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5] .. ARGV[3])
else
  redis.call('XADD', KEYS[3], '*', 'msg', ARGV[3])
end
return 1
`)

// deadLetterScript moves a leased message to the queue's dead-letter
// stream, with the reason, the queue, its stream id and the time.
//
// KEYS[1] stream, KEYS[2] leases, KEYS[3] dead
// ARGV[1] group, ARGV[2] stream id, ARGV[3] reason, ARGV[4] queue
// Returns 1, or 0 when the message is not leased.
var deadLetterScript = newScript(luaPrelude + `
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local msg = ''
if #e > 0 then msg = entry_msg(e[1][2]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'msg', msg, 'reason', ARGV[3], 'queue', ARGV[4],
  'stream_id', ARGV[2], 'dead_at_ms', us(math.floor(now_us() / 1000)))
return 1
`)

// depthScript counts a queue's ready and delayed messages: stream entries
// not leased, plus leased ones whose lease expired, plus delayed ones.
//
// KEYS[1] stream, KEYS[2] leases, KEYS[3] delayed
// Returns the count.
var depthScript = newScript(luaPrelude + `
local leased = redis.call('ZCARD', KEYS[2])
local ready = redis.call('XLEN', KEYS[1]) - leased
if ready < 0 then ready = 0 end
local expired = redis.call('ZCOUNT', KEYS[2], '-inf', us(now_us()))
return ready + expired + redis.call('ZCARD', KEYS[3])
`)

// revokeUpsertScript stores revoke records of one namespace, each with
// version max(stored + 1, proposed), so that a revoke issued after another
// one of the same task returned always wins (DESIGN.md §2.3). Versions are
// compared and incremented as decimal strings (longer is larger, then byte
// order), so every int64 is exact, beyond 2^53 too. It assigns every
// version before it writes any, so a run that fails (a task already at the
// highest int64 version) changes nothing.
//
// The stored version is found with string.match instead of cjson: the
// first "version": of a stored record is its version field, since only the
// string values of namespace and taskId precede it in the JSON that
// encoding/json writes, and a string value cannot hold "x": (inside a JSON
// string every quote is escaped, and a string's closing quote is followed
// by a colon only when it is a key). The same holds for the JSON given in
// ARGV, whose version is replaced the same way when the store assigns
// another. A stored version that is not a canonical int64 (a hand edit)
// counts as no stored record, as it does for List.
//
// Each record also gets the next number of the namespace's change
// sequence (KEYS[4] "seq", started with an "epoch" of the server's time
// when absent), filed under its task id in KEYS[3], for ListChanges.
//
// A record of a task with no stored record whose tombstone (KEYS[5], see
// revokePruneScript) holds its proposed version or a higher one is not
// stored: its version comes back as "0". A record stored over a tombstone
// deletes it.
//
// KEYS[1] records, KEYS[2] expiry, KEYS[3] changes, KEYS[4] seq, KEYS[5]
// tombs, KEYS[6] tombs expiry
// ARGV: four per record: task id, proposed version (decimal, no leading
// zeros), record JSON, ExpiresAt in µs ("" when it never expires).
// Returns per record, in order, the version it was stored with (decimal),
// "0" for one not stored.
var revokeUpsertScript = newScript("local off = 0\n" + revokeUpsertBody + "return vers\n")

// revokeUpsertBody is the body of the revoke upsert scripts: it stores the
// records given in ARGV from ARGV[off+1] on and leaves the versions it
// assigned in vers.
const revokeUpsertBody = `
local function higher(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local function incr(a)
  local i = #a
  while i > 0 and string.byte(a, i) == 57 do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #a) end
  return string.sub(a, 1, i - 1) .. string.char(string.byte(a, i) + 1) .. string.rep('0', #a - i)
end
local top = '9223372036854775807'
local vers, last, dead, stored = {}, {}, {}, 0
for i = off + 1, #ARGV, 4 do
  local id, ver = ARGV[i], ARGV[i + 1]
  local curv = last[id]
  if not curv then
    local cur = redis.call('HGET', KEYS[1], id)
    curv = cur and string.match(cur, '"version":(%d+)')
    -- A stored version that is no int64 in canonical form (a hand edit
    -- or a foreign writer: leading zeros, too many digits) makes a record
    -- List skips as undecodable: it counts as absent, so that its digits
    -- are never carried into the record written now.
    if curv and (string.byte(curv, 1) == 48 or higher(curv, top)) then curv = nil end
  end
  local tomb = nil
  if not curv and not last[id] then
    tomb = redis.call('HGET', KEYS[5], id)
  end
  if curv then
    if curv == top then
      return redis.error_reply('task ' .. id .. ' is stored at the highest version, ' .. top)
    end
    local nxt = incr(curv)
    if higher(nxt, ver) then ver = nxt end
  end
  if tomb and not higher(ver, tomb) then
    -- A late write of a pruned record: ignored, returned as version 0.
    vers[#vers + 1] = '0'
  else
    if tomb then dead[id] = true end
    last[id] = ver
    vers[#vers + 1] = ver
    stored = stored + 1
  end
end
if redis.call('HEXISTS', KEYS[4], 'epoch') == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[4], 'epoch', t[1] .. string.format('%06d', tonumber(t[2])))
end
local seq = redis.call('HINCRBY', KEYS[4], 'seq', stored) - stored
for j = 1, #vers do
  local i = off + 4 * j - 3
  local id, js, exp = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  if vers[j] ~= '0' then
    seq = seq + 1
    redis.call('ZADD', KEYS[3], seq, id)
    if vers[j] ~= ARGV[i + 1] then
      js = string.gsub(js, '"version":%d+', '"version":' .. vers[j], 1)
    end
    redis.call('HSET', KEYS[1], id, js)
    if exp == '' then
      redis.call('ZREM', KEYS[2], id)
    else
      redis.call('ZADD', KEYS[2], exp, id)
    end
    if dead[id] then
      redis.call('HDEL', KEYS[5], id)
      redis.call('ZREM', KEYS[6], id)
      dead[id] = nil
    end
  end
end
`

// revokeUpsertPublishScript is revokeUpsertScript followed by PUBLISH of a
// message when every record was stored with the version it proposed, in
// the same atomic run (Control.UpsertPublish).
//
// KEYS as revokeUpsertScript. ARGV: the number of channels n, the n
// channels, the message, then the records as for revokeUpsertScript.
// Returns the versions as revokeUpsertScript, then "1" when the message
// was published, "0" when not.
var revokeUpsertPublishScript = newScript(`local nch = tonumber(ARGV[1])
local off = nch + 2
` + revokeUpsertBody + `
local same = '1'
for j = 1, #vers do
  if vers[j] ~= ARGV[off + 4 * j - 2] then same = '0' end
end
if same == '1' then
  for c = 2, nch + 1 do redis.call('PUBLISH', ARGV[c], ARGV[nch + 2]) end
end
vers[#vers + 1] = same
return vers
`)

// revokePruneScript deletes up to ARGV[1] records that expired at or
// before the server's clock (TIME), so that every worker prunes alike
// whatever its own clock says, leaving a tombstone of each: its version in
// KEYS[4] (the higher, when the task has one already), kept until ARGV[2]
// µs from now (KEYS[5]). It first deletes up to ARGV[1] tombstones whose
// time has passed.
//
// KEYS[1] records, KEYS[2] expiry, KEYS[3] changes, KEYS[4] tombs,
// KEYS[5] tombs expiry
// ARGV[1] limit (at most 1000), ARGV[2] tombstone retention in µs
// Returns how many records it deleted, and how many tombstones.
var revokePruneScript = newScript(`
local function higher(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local t = redis.call('TIME')
local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = string.format('%.0f', nowus)
local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #old > 0 then
  redis.call('HDEL', KEYS[4], unpack(old))
  redis.call('ZREM', KEYS[5], unpack(old))
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then
  local until_ = string.format('%.0f', nowus + tonumber(ARGV[2]))
  local vals = redis.call('HMGET', KEYS[1], unpack(ids))
  for i = 1, #ids do
    local v = vals[i] and string.match(vals[i], '"version":(%d+)')
    if v then
      local cur = redis.call('HGET', KEYS[4], ids[i])
      if not cur or higher(v, cur) then redis.call('HSET', KEYS[4], ids[i], v) end
      redis.call('ZADD', KEYS[5], until_, ids[i])
    end
  end
  redis.call('HDEL', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[3], unpack(ids))
end
return {#ids, #old}
`)

// revokeChangesScript reads one page of the records upserted after a
// sequence number, with the sequence's epoch, so that a cursor of a lost
// sequence is told apart. A cursor past the sequence counts as one of
// another epoch: the sequence lost its last numbers (a replica promoted
// after a failover) and will give them again. It stops at ARGV[3]
// changes.
//
// KEYS[1] records, KEYS[2] changes, KEYS[3] seq
// ARGV[1] epoch of the cursor, ARGV[2] its sequence number, ARGV[3] limit
// Returns {epoch, or the empty string when there is none} when the epoch differs from
// ARGV[1] or ARGV[2] is past the sequence; otherwise {epoch, changes read, sequence number of the last
// read (ARGV[2] when none), then task id and record JSON of each change
// whose record is stored}.
var revokeChangesScript = newScript(`
local epoch = redis.call('HGET', KEYS[3], 'epoch') or ''
if epoch ~= ARGV[1] then return {epoch} end
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[3], 'seq') or '0') then return {epoch} end
local got = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {epoch, tostring(#got / 2), ARGV[2]}
if #got == 0 then return out end
out[3] = got[#got]
local ids = {}
for i = 1, #got, 2 do ids[#ids + 1] = got[i] end
local vals = redis.call('HMGET', KEYS[1], unpack(ids))
for i = 1, #ids do
  if vals[i] then
    out[#out + 1] = ids[i]
    out[#out + 1] = vals[i]
  end
end
return out
`)

// revokeSeqScript returns the epoch and last sequence number of a
// namespace's change sequence (an empty epoch and 0 when it has none).
//
// KEYS[1] seq
var revokeSeqScript = newScript(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {v[1] or '', v[2] or '0'}
`)

// presencePrelude is shared by the presence scripts.
const presencePrelude = `
-- instance_of returns the instance of a stored WorkerInfo JSON ('' when it
-- has none), or nil when the JSON does not decode: such an entry is
-- nobody's, and anyone may replace or remove it.
local function instance_of(raw)
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' then return nil end
  local inst = doc['instance']
  if type(inst) ~= 'string' then return '' end
  return inst
end
`

// announceScript records a worker as live for ttl from now, unless another
// instance's announcement of the same id is live. The worker's key expires
// with its liveness (rounded up to a millisecond); the index's expiry is
// only ever extended.
//
// KEYS[1] live (index), KEYS[2] the worker's key
// ARGV[1] worker id, ARGV[2] ttl in µs, ARGV[3] ttl in ms (at least 1),
// ARGV[4] WorkerInfo JSON, ARGV[5] instance
// Returns nil when it recorded the worker; otherwise, having changed
// nothing, the JSON of the live announcement of another instance.
var announceScript = newScript(luaPrelude + presencePrelude + `
local now = now_us()
local cur = redis.call('GET', KEYS[2])
if cur then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) > now then
    local inst = instance_of(cur)
    if inst ~= nil and inst ~= ARGV[5] then return cur end
  end
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], us(now + tonumber(ARGV[2])), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return false
`)

// withdrawScript forgets a worker, only when its stored announcement is
// the given instance's.
//
// KEYS[1] live (index), KEYS[2] the worker's key
// ARGV[1] worker id, ARGV[2] instance
// Returns 1 when it removed the worker, 0 otherwise.
var withdrawScript = newScript(presencePrelude + `
local cur = redis.call('GET', KEYS[2])
if not cur then return 0 end
local inst = instance_of(cur)
if inst ~= nil and inst ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
`)

// workersScript forgets the index entries whose liveness ended (up to 1000
// per call) and returns the ids of the live workers.
//
// KEYS[1] live (index)
// Returns a list of worker ids.
var workersScript = newScript(luaPrelude + `
local snow = us(now_us())
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', snow, 'LIMIT', 0, 1000)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. snow, '+inf')
`)

// luaResults is shared by the result scripts. state_of returns the state
// of a stored result's JSON, nil for a value that does not decode (not
// written by stem); is_final reports whether a state is final; store
// writes a value with the retention TTL in ms (0: none).
const luaResults = `
local function state_of(v)
  if not v then return nil end
  local ok, doc = pcall(cjson.decode, v)
  if not ok or type(doc) ~= 'table' then return nil end
  return doc['state']
end
local function is_final(st)
  return st == 'succeeded' or st == 'failed' or st == 'cancelled'
end
local function store(key, v, ttl)
  if tonumber(ttl) > 0 then
    redis.call('SET', key, v, 'PX', ttl)
  else
    redis.call('SET', key, v)
  end
end
`

// finalOverLegacyScript stores a final result at its result key unless
// the key holds a final state. Results.Put runs it only for a final write
// that SET NX skipped, in case the key holds a record that is not final:
// versions of this package before the two-key layout wrote every state
// there. It decodes the stored value with cjson, as it runs rarely.
//
// KEYS[1] result key, KEYS[2] state key
// ARGV[1] the final result's JSON, ARGV[2] TTL in ms (0: none)
// Returns 1 when it stored the result, 0 otherwise.
var finalOverLegacyScript = newScript(luaResults + `
if is_final(state_of(redis.call('GET', KEYS[1]))) then return 0 end
store(KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
`)

// putIfStateScript stores a result only while the task's current state is
// one of the given states, and never when a final state is stored (even
// when asked). The current state is the state key's; a record that is not
// final at the result key (written before the two-key layout) counts when
// there is no state key. A final result goes to the result key and deletes
// the state key, any other to the state key.
//
// KEYS[1] result key, KEYS[2] state key
// ARGV[1] the new result JSON, ARGV[2] TTL in ms (0: none), ARGV[3] 1 when
// the new result is final, 0 otherwise, ARGV[4...] the states that may be
// replaced.
// Returns 1 when it stored the result, 0 otherwise.
var putIfStateScript = newScript(luaResults + `
local state = state_of(redis.call('GET', KEYS[2]))
local legacy = redis.call('GET', KEYS[1])
if legacy then
  local st = state_of(legacy)
  if is_final(st) then return 0 end
  if state == nil then state = st end
end
if state == nil or is_final(state) then return 0 end
for i = 4, #ARGV do
  if state == ARGV[i] then
    if ARGV[3] == '1' then
      store(KEYS[1], ARGV[1], ARGV[2])
      redis.call('DEL', KEYS[2])
    else
      store(KEYS[2], ARGV[1], ARGV[2])
    end
    return 1
  end
end
return 0
`)
