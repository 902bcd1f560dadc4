--[[
atsms-milter for rspamd: scores AT-SMS results and exposes the verified sender DID.

Reads only the Authentication-Results field carrying THIS host's authserv-id (atsms-milter's
policy.authserv_id): the MTA (atsms-milter as a milter, or contrib/exim/acl_data.conf) removes
incoming fields claiming that id, so a relay's field saying `atsms=fail` scores nothing. Of the
results in our field, a pass wins (a message with one failing and one passing signature
passes), as in the milter's own decision.

Symbols (group "atsms"):
  ATSMS_PASS   a signature passed; option: the DID        (default score -1.0)
  ATSMS_FAIL   none passed, one failed; option: the DID   (default score  4.0)
  ATSMS_LABEL  a label atsms-milter applied to the passing sender; option: the value (0.0)
  ATSMS_YOUNG  the passing sender's identity is young (policy.atsms-age)              (1.0)
Selector `atsms_did`: the DID of the passing signature, for per-DID reputation (multimap,
reputation, ratelimit): see contrib/rspamd/multimap.conf.

Install (rspamd 3.x):
  cp atsms.lua /etc/rspamd/lua/atsms.lua
  echo 'dofile("/etc/rspamd/lua/atsms.lua")' >> /etc/rspamd/rspamd.local.lua
  and in /etc/rspamd/rspamd.conf.local:
    atsms { authserv_id = "mx.example.net"; }   # policy.authserv_id; scores may be set here too
  then `rspamadm configtest` and reload rspamd.
]]

local rspamd_logger = require "rspamd_logger"
local lua_selectors = require "lua_selectors"

local settings = {
  authserv_id = nil,
  pass_score = -1.0,
  fail_score = 4.0,
  label_score = 0.0,
  young_score = 1.0,
}
local opts = rspamd_config:get_all_opt('atsms')
if opts then
  for k, v in pairs(opts) do
    settings[k] = v
  end
end
if not settings.authserv_id then
  rspamd_logger.errx(rspamd_config,
    'atsms: no authserv_id (atsms { authserv_id = "..."; } in rspamd.conf.local): AT-SMS results are not scored')
  return
end
local our_id = string.lower(settings.authserv_id)

-- An Authentication-Results value split at its top-level ';' (RFC 8601 section 2.2): not
-- inside quoted strings, comments removed.
local function split_resinfo(value)
  local parts, current = {}, {}
  local depth, quoted, escaped = 0, false, false
  for i = 1, #value do
    local c = value:sub(i, i)
    local keep = c
    if escaped then
      escaped = false
      if depth > 0 then keep = nil end
    elseif c == '\\' and (quoted or depth > 0) then
      escaped = true
      if depth > 0 then keep = nil end
    elseif quoted then
      if c == '"' then quoted = false end
    elseif depth > 0 then
      if c == '(' then depth = depth + 1 elseif c == ')' then depth = depth - 1 end
      keep = nil
    elseif c == '"' then
      quoted = true
    elseif c == '(' then
      depth = 1
      keep = ' '
    elseif c == ';' then
      table.insert(parts, table.concat(current))
      current = {}
      keep = nil
    end
    if keep then table.insert(current, keep) end
  end
  table.insert(parts, table.concat(current))
  return parts
end

-- The atsms results of our own field(s): { result = 'pass', did = ..., labels = {...}, young = bool }.
local function our_results(task)
  local results = {}
  local fields = task:get_header_full('Authentication-Results') or {}
  for _, field in ipairs(fields) do
    local parts = split_resinfo(field.decoded or field.value or '')
    local id = parts[1]:match('^%s*([^%s]+)')
    if id and string.lower(id) == our_id then
      for i = 2, #parts do
        local method, result = parts[i]:match('^%s*([%w%-%.]+)%s*=%s*([%w%-]+)')
        if method and string.lower(method) == 'atsms' then
          local r = { result = string.lower(result), labels = {} }
          r.did = parts[i]:match('header%.d%s*=%s*"([^"]+)"') or parts[i]:match('header%.d%s*=%s*([^%s]+)')
          for label in parts[i]:gmatch('policy%.atsms%-label%s*=%s*"?([^"%s]+)"?') do
            table.insert(r.labels, label)
          end
          r.young = parts[i]:match('policy%.atsms%-age%s*=%s*young') ~= nil
          table.insert(results, r)
        end
      end
    end
  end
  return results
end

local function passing(task)
  for _, r in ipairs(our_results(task)) do
    if r.result == 'pass' then return r end
  end
  return nil
end

local function atsms_check(task)
  local pass = passing(task)
  if pass then
    task:insert_result('ATSMS_PASS', 1.0, pass.did or 'unknown')
    for _, label in ipairs(pass.labels) do
      task:insert_result('ATSMS_LABEL', 1.0, label)
    end
    if pass.young then
      task:insert_result('ATSMS_YOUNG', 1.0, pass.did or 'unknown')
    end
    return
  end
  for _, r in ipairs(our_results(task)) do
    if r.result == 'fail' then
      task:insert_result('ATSMS_FAIL', 1.0, r.did or 'unknown')
      return
    end
  end
end

local id = rspamd_config:register_symbol({
  name = 'ATSMS_CHECK',
  type = 'callback',
  callback = atsms_check,
  group = 'atsms',
})
for name, spec in pairs({
  ATSMS_PASS = { settings.pass_score, 'AT-SMS signature passed (this host verified it)' },
  ATSMS_FAIL = { settings.fail_score, 'AT-SMS signature failed (this host verified it)' },
  ATSMS_LABEL = { settings.label_score, 'A labeler labels the AT-SMS sender' },
  ATSMS_YOUNG = { settings.young_score, 'The AT-SMS sender identity is young' },
}) do
  rspamd_config:register_symbol({
    name = name,
    type = 'virtual',
    parent = id,
    score = spec[1],
    description = spec[2],
    group = 'atsms',
  })
end

lua_selectors.register_extractor(rspamd_config, 'atsms_did', {
  get_value = function(task, _)
    local pass = passing(task)
    if pass and pass.did then
      return pass.did, 'string'
    end
    return nil
  end,
  description = 'The DID of a passing AT-SMS signature in this host\'s Authentication-Results field',
})
