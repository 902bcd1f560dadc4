-- atsms-milter driven by miltertest (OpenDKIM's libmilter test client), an MTA
-- implementation independent of indymilter. Variables from the command line:
--   port: the milter's TCP port on 127.0.0.1
--   sig:  the value of an AT-SMS-Signature field signed for the message below
--   authserv: our authserv-id

local function check(cond, what)
	if not cond then error(what) end
end

local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 40, 0.25)
check(conn ~= nil, "cannot connect to the milter")
mt.set_timeout(20)

-- The milter asks for exact header values (SMFIP_HDR_LEADSPC) and skips unused stages.
check(mt.negotiate(conn, nil, nil, nil) == nil, "negotiation failed")
check(mt.test_option(conn, SMFIP_HDR_LEADSPC), "SMFIP_HDR_LEADSPC not requested")
check(mt.test_action(conn, SMFIF_ADDHDRS), "SMFIF_ADDHDRS not requested")
check(mt.test_action(conn, SMFIF_CHGHDRS), "SMFIF_CHGHDRS not requested")
check(not mt.test_action(conn, SMFIF_CHGBODY), "the body is never changed")

check(mt.conninfo(conn, "client.example", "192.0.2.25") == nil, "conninfo failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "conninfo: unexpected reply")

mt.macro(conn, SMFIC_MAIL, "i", "MTQUEUE1")
check(mt.mailfrom(conn, "<alice@alice.example.com>") == nil, "mailfrom failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "mailfrom: unexpected reply")
check(mt.rcptto(conn, "<bob@mx.example.net>") == nil, "rcptto failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "rcptto: unexpected reply")

local headers = {
	{ "Authentication-Results", " " .. authserv .. "; atsms=pass header.d=\"did:plc:forged\"" },
	{ "Authentication-Results", " other.example; spf=pass smtp.mailfrom=example.com" },
	{ "AT-SMS-Signature", sig },
	{ "From", " Alice <alice@alice.example.com>" },
	{ "To", " <bob@mx.example.net>" },
	{ "Subject", " miltertest" },
}
for _, h in ipairs(headers) do
	check(mt.header(conn, h[1], h[2]) == nil, "header " .. h[1] .. " failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, "header " .. h[1] .. ": unexpected reply")
end

check(mt.bodystring(conn, "Hello from miltertest.\r\n") == nil, "body failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "body: unexpected reply")

check(mt.eom(conn) == nil, "eom failed")
local reply = mt.getreply(conn)
check(reply == SMFIR_CONTINUE or reply == SMFIR_ACCEPT, "eom: unexpected reply " .. tostring(reply))

check(mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results"), "no Authentication-Results inserted")
check(mt.eom_check(conn, MT_HDRDELETE, "Authentication-Results"), "the forged Authentication-Results was not deleted")
local value = mt.getheader(conn, "Authentication-Results", 0)
check(value ~= nil, "cannot read the inserted field")
check(string.find(value, authserv .. ";", 1, true) == 2, "wrong authserv-id: " .. value)
check(string.find(value, 'atsms=pass header.from=alice@alice.example.com', 1, true) ~= nil, "not a pass: " .. value)
check(string.find(value, 'header.d="did:plc:ofurdhfyhjhgomvfygxergep"', 1, true) ~= nil, "no header.d: " .. value)
print("inserted: Authentication-Results:" .. value)

mt.disconnect(conn)
